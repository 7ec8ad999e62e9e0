"""A component that fails to start is named, its log tail shown, and `up` exits non-zero."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.stack import REPO


def test_a_component_that_exits_is_named_with_the_tail_of_its_log(tmp_path: Path) -> None:
    script = f"""
    . stack/lib.sh
    STACK_RUN={tmp_path}/run LOGS={tmp_path}/logs
    mkdir -p "$STACK_RUN/pids" "$LOGS"
    start_component broken sh -c 'echo "flag provided but not defined: -bogus" >&2; exit 3'
    waitfor broken 20 false
    echo unreachable
    """
    result = subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "up: broken failed: the process exited" in result.stderr
    assert "flag provided but not defined: -bogus" in result.stderr
    assert "unreachable" not in result.stdout


def test_a_component_that_never_gets_ready_times_out_with_its_name(tmp_path: Path) -> None:
    script = f"""
    . stack/lib.sh
    STACK_RUN={tmp_path}/run LOGS={tmp_path}/logs
    mkdir -p "$STACK_RUN/pids" "$LOGS"
    start_component sleepy sh -c 'echo starting; exec sleep 30'
    waitfor sleepy 2 false
    """
    result = subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "up: sleepy failed: not ready after 2 s" in result.stderr
    assert "starting" in result.stderr
    pid = int((tmp_path / "run/pids/sleepy.pid").read_text())
    subprocess.run(["kill", "--", f"-{pid}"], check=False)  # the test's own process group
