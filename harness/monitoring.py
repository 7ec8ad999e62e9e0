"""What the alert, dashboard and monitoring tests share: the chart's rules file and dashboard, the
sample names a worker serves, and Debian's Prometheus tools.

promtool and prometheus come with Debian's `prometheus` package, which stack/install-deps.sh
installs (CI runs it): a test that needs them fails, naming the package, rather than being
skipped and passing unchecked."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dispatcher.worker.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "k8s-job-dispatcher"
RULES = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
RULES_JOB = "dispatcher-metrics"
"""The scrape job the rules file reads (the chart writes its own in its place)."""


def prometheus_tool(name: str) -> str:
    """The path of `promtool` or `prometheus`; the test fails, saying how to get it, without."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: it comes with Debian's prometheus package; run "
            "stack/install-deps.sh as root (make up runs it) or apt-get install prometheus"
        )
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def served() -> set[str]:
    """The names of the samples a worker serves (a counter's end in _total, a histogram's in
    _bucket, _count and _sum)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    return {
        metric.name + suffix
        for metric in Metrics().registry.collect()
        for suffix in suffixes.get(metric.type, ("",))
    }


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels (not its rows)."""
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def as_prometheus_runs_it(expr: str, job: str, rate_interval: str = "1m") -> str:
    """A panel's query with Grafana's variables replaced as Grafana would."""
    return expr.replace("$job", job).replace("$__rate_interval", rate_interval)
