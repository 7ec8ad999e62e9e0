"""The `dispatcher` command's answers to bad settings and bad usage: one line, exit status 2."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.cli import _parser, _task_document


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


def test_secrets_are_never_printed() -> None:
    result = dispatcher(
        "config", AMQP_PASSWORD="s3cret-value", INTERNAL_SIGNING_KEY="s3cret-signing-key"
    )

    assert result.returncode == 0
    assert "s3cret" not in result.stdout
    assert "AMQP_PASSWORD=********" in result.stdout
    assert "INTERNAL_SIGNING_KEY=********" in result.stdout


def test_a_missing_kubeconfig_stops_the_worker_with_one_line() -> None:
    result = dispatcher("worker", K8S_IN_CLUSTER="false", KUBECONFIG="/nonexistent/kubeconfig")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dispatcher: cannot load the Kubernetes kubeconfig: "
        "Configuration file /nonexistent/kubeconfig not found"
    )


def test_flags_build_the_task_and_a_command_after_the_double_dash_keeps_its_dashes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "task.json"
    path.write_text('{"id": "from-file", "image": "busybox", "env": {"A": "1"}}')
    argv = ["submit", str(path), "--env", "B=2=3", "--timeout", "30", "--cpu", "250m"]
    args = _parser().parse_args(argv)
    args.container_command = ["sh", "-c", "echo hi"]

    assert _task_document(args) == {
        "id": "from-file",
        "image": "busybox",
        "volume_mount_path": "/work",
        "cmd": ["sh", "-c", "echo hi"],
        "timeout_seconds": 30,
        "env": {"A": "1", "B": "2=3"},
        "resources": {"cpu": "250m"},
    }


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        pytest.param(
            ["submit", "--timeout", "0"], "argument --timeout: must be a whole number", id="timeout"
        ),
        pytest.param(["cancel", "x", "--", "sh"], "only submit takes a command after --", id="dd"),
    ],
)
def test_bad_flags_are_refused_with_exit_status_2(argv: list[str], line: str) -> None:
    result = dispatcher(*argv)

    assert result.returncode == 2
    assert line in result.stderr


def test_the_permissions_printed_are_those_docs_security_shows() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    block = doc.split("```console\n", 1)[1].split("```", 1)[0]
    command, *expected = block.splitlines()

    result = dispatcher(*shlex.split(command.removeprefix("$ dispatcher ")))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_definitions_need_the_producers_password() -> None:
    result = dispatcher("permissions", "--definitions", PRODUCER_AMQP_PASSWORD="")

    assert result.returncode == 2
    assert result.stderr.startswith("dispatcher: PRODUCER_AMQP_PASSWORD: ")
