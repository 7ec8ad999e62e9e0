"""The `dispatcher` command in a real terminal (a pseudo-terminal): the progress line while it
waits, Ctrl-C, and the exit codes a script relies on."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import pytest
from harness.stack import Broker, run_cli, stack_env

from tests.e2e.test_dispatch import Dispatcher

pytestmark = pytest.mark.cluster
PROGRESS = "e2e.cli.progress"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Session:
    """A `dispatcher` process whose terminal is a pty we read and type into."""

    pid: int
    fd: int
    screen: str = ""

    def read_until(self, pattern: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.screen):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the terminal: {self.screen!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.screen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the process ended and closed the terminal
                    break
        return self.screen

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_output = select.select([self.fd], [], [], 0.2)[0]
            if with_output:
                with contextlib.suppress(OSError):
                    self.screen += os.read(self.fd, 4096).decode(errors="replace")
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the command did not end: {self.screen!r}")


def in_terminal(broker: Broker, *args: str) -> Session:
    env = broker.instance.env()
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        os.execve(sys.executable, [sys.executable, "-m", "dispatcher.cli", *args], env)
    return Session(pid, fd)


def unique(name: str) -> str:
    """A task id of its own: ids are Job names in a namespace other test runs share."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def flags(script: str) -> list[str]:
    """The image and, after `--`, the command: `sh -c SCRIPT` (goes last on the line)."""
    return ["--image", stack_env()["TEST_IMAGE"], "--", "/bin/sh", "-c", script]


def last_json(screen: str) -> dict[str, object]:
    text = ANSI.sub("", screen).replace("\r\n", "\n")
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME=PROGRESS)
def test_submit_wait_shows_progress_then_the_response_and_its_exit_code(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    task_id = unique("cli-progress")
    session = in_terminal(
        broker,
        "submit",
        "--id",
        task_id,
        "--wait",
        "--env",
        "WHO=terminal",
        *flags('sleep 3; echo "hello $WHO"; exit 7'),
    )

    session.read_until(rf"{task_id}: running on \S+ \(\d+ s\)")
    code = session.wait()

    assert code == 7
    assert f"{task_id}: queued" in session.screen or f"{task_id}: sent" in session.screen
    assert last_json(session.screen) == {
        "id": task_id,
        "output": "hello terminal\n",
        "exit": 7,
    }
    # The progress line was erased before the response was printed.
    tail = session.screen[session.screen.rindex("\x1b[K") :]
    assert "running" not in tail


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME=PROGRESS)
def test_ctrl_c_stops_waiting_and_leaves_the_task_running(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    task_id = unique("cli-interrupted")
    session = in_terminal(broker, "submit", "--id", task_id, "--wait", *flags("sleep 15; echo on"))
    # Typed while the task runs, 15 s before it can end. (Typed after `sent`, as this test once
    # did, a machine slow enough between the publish and the keystroke let the answer arrive
    # first, and the command rightly exited with the task's 0.)
    session.read_until(rf"{task_id}: running on \S+")
    assert os.waitpid(session.pid, os.WNOHANG) == (0, 0), session.screen

    session.type("\x03")  # Ctrl-C, as a person types it
    code = session.wait()

    assert code == 130
    # The progress line is erased first: the hint stands on a line of its own.
    assert (
        f"\r\x1b[Kdispatcher: stopped waiting; task {task_id} goes on "
        f"(stop it with: dispatcher cancel {task_id})" in session.screen
    )
    # The task went on and was answered on the response queue (its waiter's queue is gone).
    assert broker.response(timeout=90) == {"id": task_id, "output": "on\n", "exit": 0}


def test_exit_codes_for_success_error_timeout_and_bad_flags(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    stopped = unique("cli-deadline")

    ok = run_cli(broker, "submit", "--wait", *flags("echo fine"))
    answered_error = run_cli(
        broker, "submit", "--id", stopped, "--wait", "--timeout", "2", *flags("echo on; sleep 60")
    )
    error = run_cli(broker, "submit", "--wait", "--image", "localhost/none:1", "--timeout", "0")
    slow = run_cli(broker, "submit", "--wait", "--wait-timeout", "1", *flags("sleep 5"))
    bad_env = run_cli(broker, "submit", "--wait", "--env", "NOEQUALS", *flags("true"))
    too_big = run_cli(broker, "submit", "--wait", "--memory", "64Gi", *flags("true"))

    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output"] == "fine\n"
    assert answered_error.returncode == 1, answered_error.stderr
    assert json.loads(answered_error.stdout) == {
        "id": stopped,
        "output": "on\n",
        "error": "deadline exceeded: the task ran longer than 2 s",
    }
    assert error.returncode == 2
    assert error.stderr == (
        "dispatcher submit: argument --timeout: must be a whole number of seconds (1 or more), "
        "got '0' (see dispatcher submit --help)\n"
    )
    assert slow.returncode == 124
    assert "no response within 1 s" in slow.stderr
    assert bad_env.returncode == 2
    assert (
        bad_env.stderr.strip()
        == "dispatcher: invalid task: --env: must be NAME=VALUE, got 'NOEQUALS'"
    )
    assert too_big.returncode == 2
    assert too_big.stderr.strip() == (
        "dispatcher: invalid task: resources.memory: must be at most 4Gi (TASK_MAX_MEMORY), "
        "got '64Gi'"
    )


def test_dispatcher_cancel_of_a_running_task_and_of_an_unknown_id(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    task_id = unique("cli-cancel")
    started = run_cli(broker, "submit", "--id", task_id, *flags("echo up; sleep 300"))
    assert started.returncode == 0, started.stderr
    time.sleep(6)

    cancelled = run_cli(broker, "cancel", task_id)
    unknown = run_cli(broker, "cancel", "cli-nothing")

    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["error"] == "cancelled"
    assert unknown.returncode == 0  # it had no Job: it never will
    assert json.loads(unknown.stdout)["error"].startswith(
        "cancelled: task 'cli-nothing' had no Job yet"
    )
    # The task's own answer went to the response queue (it was published without reply_to).
    assert broker.response(timeout=60)["error"] == "cancelled"


def test_answers_prints_the_answers_of_tasks_sent_without_wait(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    first, second = unique("cli-answers"), unique("cli-answers")

    sent = [run_cli(broker, "submit", "--id", i, *flags(f"echo {i}")) for i in (first, second)]
    taken = run_cli(broker, "answers", "--count", "2", "--wait-timeout", "90", timeout=200)
    none_left = run_cli(broker, "answers", "--wait-timeout", "1")

    assert [s.returncode for s in sent] == [0, 0], [s.stderr for s in sent]
    assert taken.returncode == 0, taken.stderr
    answers = [json.loads(line) for line in taken.stdout.splitlines()]
    assert sorted(answers, key=lambda a: str(a["id"])) == sorted(
        [{"id": i, "output": f"{i}\n", "exit": 0} for i in (first, second)],
        key=lambda a: str(a["id"]),
    )
    assert none_left.returncode == 124  # taken off the queue: nothing is printed twice
    assert none_left.stdout == ""
    assert none_left.stderr == (
        f"dispatcher: no answer in {broker.instance.env()['RESPONSE_QUEUE_NAME']} within 1 s\n"
    )
