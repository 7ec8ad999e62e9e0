"""`make up` is idempotent, and the stack survives `down` then `up` again.

These tests restart the whole stack, so the suite runs them last (see tests/conftest.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness.stack import REPO, kubectl

pytestmark = [pytest.mark.cluster, pytest.mark.restarts_stack]


def stack(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", f"stack/{script}.sh"], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_second_up_while_running_is_a_no_op() -> None:
    result = stack("up")
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout


def sysctl(key: str) -> str:
    return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True).stdout.strip()


def stack_processes() -> list[str]:
    """Command lines of processes that belong to the stack (its binaries, socket or broker)."""
    marks = (
        "/var/cache/dispatcher-stack/",
        "/run/dispatcher-stack/",
        "dispatcher@localhost",
        "epmd",
    )
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append(cmdline)
    return found


def test_down_then_up_gives_a_working_cluster_and_down_leaves_nothing() -> None:
    saved = dict(
        line.split("=", 1)
        for line in Path("/run/dispatcher-stack/sysctl.saved").read_text().split()
    )
    assert sysctl("kernel.panic_on_oops") == "1"  # the kubelet's value while it runs

    down = stack("down")
    assert down.returncode == 0, down.stderr  # non-zero when mounts, cgroups or the bridge are left
    assert "WARNING" not in down.stderr
    assert kubectl("get", "--raw", "/readyz", check=False).returncode != 0
    assert {key: sysctl(key) for key in saved} == saved
    assert stack_processes() == []
    assert not Path("/run/dispatcher-stack").exists()
    assert "/var/lib/dispatcher-stack" not in Path("/proc/self/mountinfo").read_text()
    again = stack("down")
    assert again.returncode == 0, again.stderr

    up = stack("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert kubectl("get", "--raw", "/readyz").stdout == "ok"
    phase = kubectl(
        "-n", "dispatcher", "get", "pvc", "worker-pv-claim", "-o", "jsonpath={.status.phase}"
    )
    assert phase.stdout == "Bound"
