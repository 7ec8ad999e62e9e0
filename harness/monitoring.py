"""What the alert and monitoring tests share: the chart's rules file, the sample names a worker
serves, and Debian's Prometheus tools.

promtool and prometheus come with Debian's `prometheus` package, which stack/install-deps.sh
installs (CI runs it): a test that needs them fails, naming the package, rather than being
skipped and passing unchecked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dispatcher.worker.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "k8s-job-dispatcher"
RULES = CHART / "files" / "alerts.yaml"
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
