"""The `dispatcher` command's answers to bad settings and bad usage: one line, exit status 2."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.cli import _parser, _ProgressLine, _task_document
from dispatcher.messages.progress import ProgressEvent


def dispatcher(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMQP_", "PRODUCER_", "K8S_", "KUBE"))
    }
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


def test_retry_flags_become_the_tasks_retry_fields() -> None:
    argv = ["submit", "--id", "t-1", "--image", "busybox", "--retries", "2", "--retry-on", "75"]
    args = _parser().parse_args([*argv, "--retry-on", "3"])
    args.container_command = None

    document = _task_document(args)

    assert (document["retries"], document["retry_on_exit_codes"]) == (2, [75, 3])


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        pytest.param(
            ["submit", "--timeout", "0"],
            "dispatcher submit: argument --timeout: must be a whole number of seconds "
            "(1 or more), got '0' (see dispatcher submit --help)",
            id="timeout",
        ),
        pytest.param(
            ["submit", "--wait-timeout", "soon"],
            "dispatcher submit: argument --wait-timeout: must be a number of seconds above 0, "
            "got 'soon' (see dispatcher submit --help)",
            id="wait-timeout",
        ),
        pytest.param(
            ["cancel", "x", "--wait-timeout", "-1"],
            "dispatcher cancel: argument --wait-timeout: must be a number of seconds above 0, "
            "got '-1' (see dispatcher cancel --help)",
            id="cancel-wait-timeout",
        ),
        pytest.param(
            ["submit", "--memroy"],
            "dispatcher: unrecognized arguments: --memroy (see dispatcher --help)",
            id="unknown-flag",
        ),
        pytest.param(
            ["cancel", "x", "--", "sh"],
            "dispatcher: only submit takes a command after -- (see dispatcher --help)",
            id="dd",
        ),
        pytest.param(
            ["submit", "/nonexistent/task.json", "--wait"],
            "dispatcher: invalid task: FILE: cannot be read: No such file or directory "
            "(/nonexistent/task.json)",
            id="missing-file",
        ),
        pytest.param(
            ["cancel", "Not An Id"],
            "dispatcher: invalid request: cancel: must be an RFC 1035 label: 1 to 63 lower-case "
            "letters, digits or '-', starting with a letter and ending with a letter or digit",
            id="cancel-id",
        ),
    ],
)
def test_bad_flags_are_refused_with_one_line_and_exit_status_2(argv: list[str], line: str) -> None:
    result = dispatcher(*argv)

    assert result.returncode == 2
    assert result.stderr == line + "\n"
    assert result.stdout == ""


NO_BROKER = {"AMQP_HOST": "127.0.0.1", "AMQP_PORT": "1"}  # nothing listens there


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        pytest.param(
            ["--image", "busybox:1.36", "--memory", "64Gi", "--wait"],
            "resources.memory: must be at most 4Gi (TASK_MAX_MEMORY), got '64Gi'",
            id="memory",
        ),
        pytest.param(
            ["--id", "Not An Id", "--image", "busybox:1.36"],
            "id: must be an RFC 1035 label: 1 to 63 lower-case letters, digits or '-', "
            "starting with a letter and ending with a letter or digit",
            id="id",
        ),
        pytest.param(
            ["--image", "busybox:1.36", "--env", "TASK_ID=x"],
            "env.TASK_ID: is set by the dispatcher and cannot be overridden",
            id="env",
        ),
    ],
)
def test_a_bad_task_is_refused_before_connecting_with_exit_status_2(
    argv: list[str], line: str
) -> None:
    result = dispatcher("submit", *argv, **NO_BROKER)

    assert result.returncode == 2
    assert result.stderr == f"dispatcher: invalid task: {line}\n"
    assert result.stdout == ""


def test_the_permissions_printed_are_those_docs_security_shows() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    block = doc.split("```console\n", 1)[1].split("```", 1)[0]
    command, *expected = block.splitlines()

    result = dispatcher(*shlex.split(command.removeprefix("$ dispatcher ")))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


PASSWORDS = {"AMQP_PASSWORD": "d-secret", "PRODUCER_AMQP_PASSWORD": "p-secret"}


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        pytest.param(
            [],
            {},
            "AMQP_PASSWORD: the dispatcher's password is needed for --definitions (set it; the "
            "default 'guest' is never written)",
            id="no-passwords",
        ),
        pytest.param(
            [],
            {"AMQP_PASSWORD": "d-secret"},
            "PRODUCER_AMQP_PASSWORD: the producer's password is needed for --definitions (set "
            "it; the default 'guest' is never written)",
            id="no-producer-password",
        ),
        pytest.param(
            [],
            {**PASSWORDS, "AMQP_PASSWORD": "guest"},
            "AMQP_PASSWORD: the dispatcher's password is needed for --definitions (set it; the "
            "default 'guest' is never written)",
            id="default-password",
        ),
        pytest.param(
            [],
            {**PASSWORDS, "AMQP_USER": "guest"},
            "AMQP_USER: 'guest' is RabbitMQ's default user; name a user of its own",
            id="guest-from-the-environment",
        ),
        pytest.param(
            ["--dispatcher-user", "guest"],
            PASSWORDS,
            "--dispatcher-user: 'guest' is RabbitMQ's default user; name a user of its own",
            id="guest-by-flag",
        ),
    ],
)
def test_definitions_never_hold_the_default_user_or_password(
    argv: list[str], env: dict[str, str], line: str
) -> None:
    result = dispatcher("permissions", "--definitions", *argv, **env)

    assert result.returncode == 2
    assert result.stderr == f"dispatcher: {line}\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("argv", "env", "user"),
    [
        pytest.param(["--dispatcher-user", "ops"], {"AMQP_USER": "other"}, "ops", id="flag"),
        pytest.param([], {"AMQP_USER": "other"}, "other", id="amqp-user"),
        pytest.param([], {}, "dispatcher", id="default"),
    ],
)
def test_definitions_create_the_dispatcher_user_named_by_the_flag_else_amqp_user(
    argv: list[str], env: dict[str, str], user: str
) -> None:
    result = dispatcher(
        "permissions", "--definitions", "--producer-user", "billing", *argv, **PASSWORDS, **env
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [u["name"] for u in document["users"]] == [user, "billing"]
    assert [p["user"] for p in document["permissions"]] == [user, "billing"]
    assert "guest" not in result.stdout
    assert "secret" not in result.stdout


def test_the_rabbitmqctl_commands_name_the_dispatcher_user_given() -> None:
    result = dispatcher("permissions", "--dispatcher-user", "ops", AMQP_USER="other")

    assert result.returncode == 0, result.stderr
    assert [line.split()[4] for line in result.stdout.splitlines()] == ["ops", "producer"]


def test_flags_extend_the_files_env_and_resources_and_override_its_fields(
    tmp_path: Path,
) -> None:
    path = tmp_path / "task.json"
    path.write_text(
        '{"id": "from-file", "image": "old:1", "cmd": ["a"], "volume_mount_path": "/data",'
        ' "env": {"A": "1", "B": "old"}, "resources": {"cpu": "1", "memory": "1Gi"}}'
    )
    argv = [str(path), "--image", "new:2", "--cmd", "b", "--cmd", "c", "--arg=-v"]
    argv += ["--env", "B=new", "--memory", "2Gi", "--workdir", "/data/in", "--id", "flagged"]
    args = _parser().parse_args(["submit", *argv])
    args.container_command = None

    assert _task_document(args) == {
        "id": "flagged",
        "image": "new:2",
        "volume_mount_path": "/data",
        "working_dir": "/data/in",
        "cmd": ["b", "c"],
        "args": ["-v"],
        "env": {"A": "1", "B": "new"},
        "resources": {"cpu": "1", "memory": "2Gi"},
    }


def test_without_a_file_or_an_id_a_task_gets_a_fresh_id_and_the_default_mount() -> None:
    args = _parser().parse_args(["submit", "--image", "busybox:1.36"])
    args.container_command = None

    document = _task_document(args)

    assert document["id"].startswith("task-")
    assert document["volume_mount_path"] == "/work"


def test_the_progress_line_is_rewritten_in_place_and_erased(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = _ProgressLine("t-1")

    line.show(None)
    line.show(ProgressEvent("t-1", "queued", "2026-12-05T04:00:00Z"))
    line.show(None)  # nothing new: the same state, the time waited goes on
    line.show(ProgressEvent("t-1", "running", "2026-12-05T04:00:01Z", node="node-1"))
    line.clear()

    assert capsys.readouterr().err == (
        "\r\x1b[Kt-1: sent (0 s)"
        "\r\x1b[Kt-1: queued (0 s)"
        "\r\x1b[Kt-1: queued (0 s)"
        "\r\x1b[Kt-1: running on node-1 (0 s)"
        "\r\x1b[K"
    )


@pytest.mark.parametrize(
    ("command", "blocked", "line"),
    [
        pytest.param(
            "worker",
            ("celery", "lightkube"),
            "the worker needs celery, lightkube",
            id="worker",
        ),
        pytest.param("status", ("lightkube",), "status needs lightkube", id="status"),
    ],
)
def test_a_command_without_the_worker_extra_names_it_in_one_line(
    command: str, blocked: tuple[str, ...], line: str
) -> None:
    missing = ", ".join(f"{name}=None" for name in blocked)
    script = f"import sys; sys.modules.update({missing}); from dispatcher.cli import main; "
    result = subprocess.run(
        [sys.executable, "-c", script + f"sys.exit(main([{command!r}]))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr == (
        f"dispatcher: {line}, which the base install leaves out: "
        "pip install 'k8s-job-dispatcher[worker]'\n"
    )


def test_status_without_a_kubeconfig_says_so_in_one_line(tmp_path: Path) -> None:
    result = dispatcher(
        "status", K8S_IN_CLUSTER="false", KUBECONFIG=str(tmp_path / "missing"), **NO_BROKER
    )

    assert result.returncode == 2
    assert result.stderr.startswith("dispatcher: cannot load the Kubernetes kubeconfig: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["config"], id="config"),
        pytest.param(["submit", "--image", "busybox:1.36"], id="submit"),
        pytest.param(["cancel", "some-task"], id="cancel"),
        pytest.param(["worker"], id="worker"),
    ],
)
def test_config_checks_the_tls_files_as_every_broker_command_does(argv: list[str]) -> None:
    result = dispatcher(*argv, AMQP_TLS="true", AMQP_CA_FILE="/nonexistent/ca.pem", **NO_BROKER)

    assert result.returncode == 2
    assert result.stderr == (
        "dispatcher: invalid setting AMQP_CA_FILE: cannot be read as PEM CA certificates: "
        "No such file or directory\n"
    )
    assert result.stdout == ""
