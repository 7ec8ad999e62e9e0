"""The docs are the code's: the README's task example and error texts are real, the settings and
metrics tables are generated from the code, and the figures and layers they state are the code's."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from dispatcher.config import SETTINGS_TABLE, Settings
from dispatcher.errors import InvalidTaskError
from dispatcher.messages.task import parse_task
from dispatcher.worker.metrics import Metrics
from dispatcher.worker.retry import MAX_ATTEMPTS, backoff, retry_window, waited

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{d.env}` | `{d.default}` | {d.description} |" for d in SETTINGS_TABLE]
    return "\n".join(rows)


def generated(path: Path, marker: str) -> str:
    block = path.read_text().split(f"<!-- {marker}:", 1)[1].split(f"<!-- end {marker} -->")[0]
    return block.split("\n", 1)[1].strip()


def test_the_settings_table_is_generated_from_the_code() -> None:
    documented = generated(DOCS / "settings.md", "settings-table")
    assert documented == settings_table(), "run `make docs` to regenerate docs/settings.md"


def test_every_metric_a_worker_serves_is_in_the_metrics_table() -> None:
    documented = generated(DOCS / "operations.md", "metrics-table")
    served = [
        f"{m.name}_total" if m.type == "counter" else m.name for m in Metrics().registry.collect()
    ]

    listed = re.findall(r"^\| `([a-z_]+)` \|", documented, flags=re.M)
    assert listed == served, "run `make docs` to regenerate the metrics in docs/operations.md"
    assert "dispatcher_cancel_requests_total" in listed


def test_the_layers_architecture_md_names_are_the_import_linters() -> None:
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in contract["contracts"] if c["type"] == "layers"]
    text = " ".join((DOCS / "architecture.md").read_text().split())
    chain = re.search(r"keeps the layers from rotting: (`[a-z]+`(?: > `[a-z]+`)+)", text)

    assert chain is not None
    assert chain[1].replace("`", "").split(" > ") == [name.split(".")[1] for name in layers]


def test_every_setting_has_its_default_when_the_environment_is_empty() -> None:
    defaults = Settings.from_env({})
    assert defaults.amqp_host == "rabbitmq.dispatcher.svc.cluster.local"
    assert {d.env for d in SETTINGS_TABLE} >= {"AMQP_USER", "TASK_ACK_MODE", "JOB_NAMESPACE"}


def json_lines(text: str) -> list[dict[str, object]]:
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    documents = []
    for block in blocks:
        try:
            documents.append(json.loads(block))
        except json.JSONDecodeError:
            documents.extend(json.loads(line) for line in block.splitlines() if line.strip())
    return documents


def test_readme_task_example_is_a_valid_task() -> None:
    task_example = next(d for d in json_lines(README) if "image" in d)
    assert parse_task(json.dumps(task_example)).id == "report-42"


@pytest.mark.parametrize(
    ("body", "documented_id"),
    [
        pytest.param(b"not json", None, id="not-json"),
        pytest.param(
            b'{"id": "Report 44", "image": "busybox:1", "volume_mount_path": "/d"}',
            "Report 44",
            id="bad-id",
        ),
    ],
)
def test_readme_validation_errors_are_the_real_texts(
    body: bytes, documented_id: str | None
) -> None:
    with pytest.raises(InvalidTaskError) as caught:
        parse_task(body)
    documented = [d for d in json_lines(README) if "error" in d and d.get("id") == documented_id]
    assert {"error": str(caught.value)} | (
        {"id": documented_id} if documented_id else {}
    ) in documented


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.json")), ids=lambda p: p.name)
def test_examples_are_valid_tasks(path: Path) -> None:
    parse_task(path.read_bytes())


def test_the_retry_window_the_guarantees_state_is_the_codes() -> None:
    attempts = ", ".join(f"{backoff(n):g}" for n in range(3))
    stated = (
        f"backoff ({attempts} … {backoff(MAX_ATTEMPTS):g} s: {MAX_ATTEMPTS} retries, "
        f"{waited(MAX_ATTEMPTS):g} s) for {retry_window()}"
    )
    assert stated in " ".join((DOCS / "guarantees.md").read_text().split())


def compat_rows() -> dict[str, str]:
    """The rows of docs/compatibility.md's table (make compat writes them), by version."""
    table = generated(DOCS / "compatibility.md", "compat-table")
    rows = [line for line in table.splitlines() if line.startswith("| v")]
    return {line.split()[1]: line for line in rows}


def test_the_compat_table_has_a_passing_row_for_each_version_the_readme_names() -> None:
    pinned = dict(
        line.split("=", 1)
        for line in (REPO / "stack/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    rows = compat_rows()
    named = set(re.findall(r"Kubernetes (v1\.\d+\.\d+)", README)) | set(
        re.findall(r"and (v1\.\d+\.\d+) \(`make compat`", README)
    )
    assert pinned["K8S_VERSION"] in named, "the README must name the stack's Kubernetes"
    assert named <= set(rows), f"no `make compat` row for {sorted(named - set(rows))}"
    for version in named:
        assert "all passed" in rows[version], rows[version]
