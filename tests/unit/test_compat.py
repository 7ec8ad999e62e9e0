"""make compat's table: a run replaces the row of its version and keeps the others, newest first."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_compat() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat", REPO / "scripts" / "compat.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compat"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


compat = load_compat()

PAGE = """# Compatibility

<!-- compat-table: written by scripts/compat.py (make compat) -->
| Kubernetes | etcd | modules (passed/run) | result | time | date |
|---|---|---|---|---|---|
| v1.37.2 (default) | v3.7.4 | dispatch 23/23 | all passed | 4 min | 2026-12-01 |
| v1.35.4 | v3.7.4 | dispatch 22/23 | **1 failed** | 4 min | 2026-12-01 |
<!-- end compat-table -->

After the table.
"""


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "compatibility.md"
    path.write_text(PAGE)
    monkeypatch.setattr(compat, "DOC", path)
    return path


def rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("| v")]


def test_a_run_replaces_the_row_of_its_version_only(page: Path) -> None:
    modules = [compat.Module("tests/e2e/test_dispatch.py", 23, 0, 0, 250.0)]
    line = compat.row("v1.35.4", False, modules, "v3.7.4", "2026-12-06")
    compat.write_row("v1.35.4", line)
    assert rows(page) == [
        "| v1.37.2 (default) | v3.7.4 | dispatch 23/23 | all passed | 4 min | 2026-12-01 |",
        "| v1.35.4 | v3.7.4 | dispatch 23/23 | all passed | 4 min | 2026-12-06 |",
    ]
    assert page.read_text().endswith("<!-- end compat-table -->\n\nAfter the table.\n")


def test_a_new_version_takes_its_place_newest_first_and_failures_are_shown(page: Path) -> None:
    modules = [
        compat.Module("tests/e2e/test_dispatch.py", 23, 0, 0, 200.0),
        compat.Module("tests/e2e/test_kueue.py", 9, 2, 1, 100.0),
    ]
    compat.write_row("v1.36.3", compat.row("v1.36.3", False, modules, "v3.7.4", "2026-12-06"))
    assert [r.split()[1] for r in rows(page)] == ["v1.37.2", "v1.36.3", "v1.35.4"]
    assert rows(page)[1] == (
        "| v1.36.3 | v3.7.4 | dispatch 23/23 · kueue 6/9 (1 skipped) | **2 failed** | 5 min "
        "| 2026-12-06 |"
    )


def test_a_version_that_is_not_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_VERSION", "1.35")
    assert compat.main([]) == 2
