"""Rewrite the tables that are generated from the code (make docs): the settings in
docs/settings.md, from dispatcher.config.SETTINGS_TABLE, and the metrics in docs/operations.md,
from dispatcher.worker.metrics.Metrics. tests/unit/test_docs.py keeps both in step."""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.config import SETTINGS_TABLE
from dispatcher.worker.metrics import Metrics

DOCS = Path(__file__).resolve().parents[1] / "docs"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{d.env}` | `{d.default}` | {d.description} |" for d in SETTINGS_TABLE]
    return "\n".join(rows)


def metrics_table() -> str:
    """One row per metric a worker serves on /metrics, as Prometheus names it (a counter's
    samples end in _total), in the order they are registered."""
    metrics = Metrics()
    # prometheus_client shows label names only on samples, which a fresh registry has none of.
    labels = {
        collector._name: collector._labelnames
        for collector in vars(metrics).values()
        if hasattr(collector, "_labelnames")
    }
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in metrics.registry.collect():
        name = f"{metric.name}_total" if metric.type == "counter" else metric.name
        shown = ", ".join(f"`{label}`" for label in labels.get(metric.name, ())) or "—"
        rows.append(f"| `{name}` | {metric.type} | {shown} | {metric.documentation} |")
    return "\n".join(rows)


def rewrite(path: Path, marker: str, table: str) -> None:
    pattern = re.compile(rf"(<!-- {marker}:[^\n]*\n).*?(<!-- end {marker} -->)", re.S)
    text = path.read_text()
    new, found = pattern.subn(lambda m: m[1] + table + "\n" + m[2], text, count=1)
    if not found:
        raise SystemExit(f"docs: no <!-- {marker}: ... --> block in {path}")
    path.write_text(new)


def main() -> None:
    rewrite(DOCS / "settings.md", "settings-table", settings_table())
    rewrite(DOCS / "operations.md", "metrics-table", metrics_table())


if __name__ == "__main__":
    main()
