"""The `dispatcher` command's answers to bad settings and bad usage: one line, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def dispatcher(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "K8S_", "KUBE"))}
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        pytest.param(
            {"AMQP_PORT": "abc"},
            "dispatcher: invalid setting AMQP_PORT: "
            "must be a whole number from 1 to 65535, got 'abc'",
            id="port",
        ),
        pytest.param(
            {"TASK_ACK_MODE": "later"}, "dispatcher: invalid setting TASK_ACK_MODE:", id="ack"
        ),
        pytest.param(
            {"K8S_IN_CLUSTER": "maybe"}, "dispatcher: invalid setting K8S_IN_CLUSTER:", id="bool"
        ),
    ],
)
def test_a_bad_setting_stops_the_worker_with_one_line_naming_it(
    env: dict[str, str], line: str
) -> None:
    result = dispatcher("worker", **env)

    assert result.returncode == 2
    assert result.stderr.startswith(line)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_the_password_is_never_printed() -> None:
    result = dispatcher("config", AMQP_PASSWORD="s3cret-value")

    assert result.returncode == 0
    assert "s3cret-value" not in result.stdout
    assert "AMQP_PASSWORD=********" in result.stdout


def test_a_missing_kubeconfig_stops_the_worker_with_one_line() -> None:
    result = dispatcher("worker", K8S_IN_CLUSTER="false", KUBECONFIG="/nonexistent/kubeconfig")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dispatcher: cannot load the Kubernetes kubeconfig: "
        "Configuration file /nonexistent/kubeconfig not found"
    )
