"""The Grafana dashboard (charts/k8s-job-dispatcher/files/dashboard.json): every panel's query is
PromQL that Prometheus's promtool parses, reads only metrics a worker serves (or `up`), and is
limited to the chosen scrape job; panels do not overlap. That each query returns data from a real
Prometheus scraping a real worker is tests/e2e/test_monitoring.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from harness.monitoring import (
    DASHBOARD,
    RULES_JOB,
    as_prometheus_runs_it,
    dashboard_panels,
    promtool,
    served,
)


def queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_prometheus_runs_it(expr, RULES_JOB)}
        for i, expr in enumerate(queries())
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = promtool("check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_reads_the_chosen_job_and_metrics_a_worker_serves() -> None:
    known = served() | {"up"}
    for expr in queries():
        selectors = re.findall(r"\b(up|dispatcher_\w+)(\{[^}]*\})", expr)
        assert selectors, expr
        for name, labels in selectors:
            assert name in known, (name, expr)
            assert 'job=~"$job"' in labels, expr


def test_every_panel_reads_the_chosen_data_source_and_says_what_it_shows() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["definition"] == "label_values(dispatcher_ready, job)"
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["title"], panel
        assert panel["description"], panel["title"]
        assert [t["refId"] for t in panel["targets"]] == list("ABCDEFGH"[: len(panel["targets"])])


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells
