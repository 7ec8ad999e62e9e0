"""Fixtures shared by the integration and end-to-end suites (the unit suite needs none)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.stack import LOCAL, Broker, Instance, Worker, running, stack_env


@pytest.fixture(scope="session")
def local_stack() -> dict[str, str]:
    return stack_env()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = LOCAL / "logs" / "tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def instance(local_stack: dict[str, str]) -> Instance:
    return Instance()


@pytest.fixture
def dispatcher(request: pytest.FixtureRequest, log_dir: Path) -> Iterator[tuple[Broker, Worker]]:
    """A running worker of a fresh installation, and a broker client for it.

    Settings for the worker come from `@pytest.mark.settings(NAME="value", ...)`.
    """
    marker = request.node.get_closest_marker("settings")
    instance = Instance(extra=dict(marker.kwargs) if marker else {})
    stack_env()
    with running(instance, log_dir) as pair:
        yield pair


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart the whole stack run after everything else."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_stack") is not None)
