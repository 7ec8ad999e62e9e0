"""The `dispatcher` command: run the worker, submit or cancel a task, see what the dispatcher
does, check the settings, print the broker permissions.

    dispatcher worker [--concurrency N]
    dispatcher submit [FILE|-] [--id ID] [--image IMAGE] [--cmd ITEM]... [--arg ITEM]...
                      [--env NAME=VALUE]... [--timeout SECONDS] [--cpu Q] [--memory Q]
                      [--mount PATH] [--workdir PATH] [--wait] [--wait-timeout SECONDS]
                      [--correlation-id ID] [-- COMMAND ITEM...]
    dispatcher cancel ID [--no-wait] [--wait-timeout SECONDS]
    dispatcher answers [--count N] [--wait-timeout SECONDS]
    dispatcher status [ID] [--watch] [--interval SECONDS] [--json]
    dispatcher config
    dispatcher permissions [--dispatcher-user USER] [--producer-user USER] [--definitions]

Settings come from the environment (docs/settings.md). A bad setting, flag or task stops the
command with one line naming it and exit status 2. `submit --wait` exits with the task's exit
code (1 for an error answer, 124 when the wait times out, 130 when interrupted: the task goes
on); on a terminal it shows the task's progress on one line of standard error meanwhile.
`cancel` exits 0 when the task was cancelled, 1 when the answer is an error (not in progress),
124 when no answer came in time, 130 when interrupted. `answers` takes the answers of tasks sent
without a reply route off the responses queue and prints one JSON line each: 0 when it printed
one or more, 124 when none came in time. `status` prints the overview (queues, tasks in flight,
recent error answers), or with ID one task's timeline, events and log tail: 0 when found, 1 when
the installation has no Job for it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import shlex
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from dispatcher.amqp import permissions as amqp_permissions
from dispatcher.config import SETTINGS_TABLE, Settings
from dispatcher.errors import (
    ClientError,
    ConfigError,
    InvalidTaskError,
    KubeError,
    ResponseTimeout,
)

if TYPE_CHECKING:
    from dispatcher.client import TaskHandle
    from dispatcher.messages.response import Response

log = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_ERROR_RESPONSE = 1
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
DEFAULT_MOUNT = "/work"
WORKER_EXTRA = "k8s-job-dispatcher[worker]"
WORKER_LIBRARIES = ("celery", "lightkube", "prometheus_client")
"""What `dispatcher worker` needs beyond the base install (the client and this command)."""


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    # `submit ... -- sh -c 'echo hi'`: everything after `--` is the container command, dashes
    # and all (argparse would read `-c` as one of our flags).
    command = given[given.index("--") + 1 :] if "--" in given else None
    parser = _parser()
    args = parser.parse_args(given[: given.index("--")] if command is not None else given)
    if command is not None and args.command != "submit":
        parser.error("only submit takes a command after --")
    args.container_command = command
    try:
        settings = checked_settings(os.environ, files=args.command in CHECKS_FILES)
    except ConfigError as exc:
        print(f"dispatcher: invalid setting {exc}", file=sys.stderr)
        return EXIT_USAGE
    from dispatcher import logs

    logs.configure(settings.log_level, settings.log_format)
    handler = {
        "worker": _worker,
        "submit": _submit,
        "cancel": _cancel,
        "answers": _answers,
        "status": _status,
        "config": _config,
        "permissions": _permissions,
    }
    try:
        return handler[args.command](args, settings)
    except ResponseTimeout as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except ClientError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_ERROR_RESPONSE
    except KeyboardInterrupt:
        print("dispatcher: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


CHECKS_FILES = frozenset({"worker", "submit", "cancel", "answers", "status", "config"})
"""The commands that connect to the broker, and `config`, which checks what they check."""


def checked_settings(env: Mapping[str, str], *, files: bool) -> Settings:
    """The settings, checked as a start-up checks them: every value and, with `files`, the TLS
    files a broker connection reads (AMQP_CA_FILE, AMQP_CERT_FILE, AMQP_KEY_FILE), before any
    connection is tried. ConfigError names the variable."""
    settings = Settings.from_env(env)
    if files:
        from dispatcher.amqp.tls import tls_context

        tls_context(settings)
    return settings


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line naming the flag (not the whole usage text), and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dispatcher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run the Celery worker with the task consumer and watch")
    worker.add_argument(
        "--concurrency", type=int, default=None, help="worker threads (WORKER_CONCURRENCY)"
    )
    submit = sub.add_parser("submit", help="publish a task from a JSON file and/or flags")
    submit.add_argument("file", nargs="?", help="task JSON file, or - to read standard input")
    submit.add_argument("--id", help="task id (default: from the file, else task-<random>)")
    submit.add_argument("--image", help="container image")
    submit.add_argument(
        "--cmd", action="append", metavar="ITEM", help="command item (repeat; --cmd=-x for a dash)"
    )
    submit.add_argument(
        "--arg", action="append", metavar="ITEM", help="argument item (repeat; --arg=-x for a dash)"
    )
    submit.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="environment variable (repeat)"
    )
    submit.add_argument("--timeout", type=_seconds, help="the task's own time limit, seconds")
    submit.add_argument(
        "--retries", type=int, help="run the task again this often when its container fails"
    )
    submit.add_argument(
        "--retry-on",
        type=int,
        action="append",
        metavar="CODE",
        help="retry only for this exit code (repeat; default: any non-zero)",
    )
    submit.add_argument("--cpu", help="CPU request, e.g. 500m")
    submit.add_argument("--memory", help="memory request, e.g. 256Mi")
    submit.add_argument("--mount", help=f"volume_mount_path (default {DEFAULT_MOUNT})")
    submit.add_argument("--workdir", help="working_dir")
    submit.add_argument("--wait", action="store_true", help="wait for the response and print it")
    submit.add_argument(
        "--wait-timeout", type=_wait_seconds, default=300.0, help="seconds to wait (300)"
    )
    submit.add_argument("--correlation-id", default=None, help="AMQP correlation_id to send")
    cancel = sub.add_parser("cancel", help="stop a task in progress")
    cancel.add_argument("id", help="the task id")
    cancel.add_argument("--no-wait", action="store_true", help="send the request and return")
    cancel.add_argument(
        "--wait-timeout", type=_wait_seconds, default=60.0, help="seconds to wait (60)"
    )
    answers = sub.add_parser(
        "answers",
        help="take answers off the responses queue (RESPONSE_QUEUE_NAME) and print them, one JSON "
        "line each",
    )
    answers.add_argument(
        "--count", type=_seconds, default=None, metavar="N", help="stop after N answers"
    )
    answers.add_argument(
        "--wait-timeout",
        type=_wait_seconds,
        default=5.0,
        help="stop when no answer came for this many seconds (5)",
    )
    status = sub.add_parser(
        "status",
        help="what the dispatcher does: queue depths, tasks in flight by state, recent error "
        "answers; with ID, one task's timeline, events and log tail",
    )
    status.add_argument("id", nargs="?", help="a task id: show that task")
    status.add_argument("--watch", action="store_true", help="show it again every --interval")
    status.add_argument(
        "--interval", type=_wait_seconds, default=2.0, help="seconds between views (2)"
    )
    status.add_argument("--json", action="store_true", help="print JSON (one document per view)")
    sub.add_parser("config", help="check the settings and print them (secrets hidden)")
    permissions = sub.add_parser(
        "permissions",
        help="print the rabbitmqctl commands giving the dispatcher's and the producers' broker "
        "users what they need and no more",
    )
    permissions.add_argument(
        "--dispatcher-user",
        default=None,
        metavar="USER",
        help="the dispatcher's broker user (default: AMQP_USER when set, else dispatcher)",
    )
    permissions.add_argument(
        "--producer-user", default="producer", metavar="USER", help="a producer's (producer)"
    )
    permissions.add_argument(
        "--definitions",
        action="store_true",
        help="print a RabbitMQ definitions document instead: both users with their passwords "
        "(AMQP_PASSWORD, PRODUCER_AMQP_PASSWORD; both required, hashed) and their permissions; "
        "never the default user guest",
    )
    return parser


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    missing = missing_worker_libraries()
    if missing:
        print(
            f"dispatcher: the worker needs {', '.join(missing)}, which the base install leaves "
            f"out: pip install '{WORKER_EXTRA}'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from dispatcher.core.preflight import check_kueue, check_tombstones, preflight
    from dispatcher.worker.app import create_app

    app = create_app(settings)
    try:
        kube = app.dispatcher.connect_kube()  # fail now, with one line, not inside the worker
    except KubeError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    preflight(kube, settings)  # warns about the claim the Jobs mount
    try:
        check_kueue(kube, settings)  # no Kueue at all: nothing would ever admit a Job
        check_tombstones(kube, settings)  # a Role without ConfigMaps would fail every task
        declare_topology(app, settings)  # a queue of another type: one line, not a loop
    except ConfigError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={args.concurrency or settings.worker_concurrency}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.log_level}",
            f"--hostname=dispatcher@{os.uname().nodename}",
        ]
    )
    return 0


def missing_worker_libraries(names: Sequence[str] = WORKER_LIBRARIES) -> list[str]:
    """The worker's own libraries (the extra `worker`) that cannot be imported here."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def declare_topology(app: Any, settings: Settings) -> None:
    """Declare our queues before Celery starts (ConfigError when one exists with other
    arguments); a broker that cannot be reached yet is left to the worker's reconnects."""
    from dispatcher.amqp.declare import declare_all

    with app.connection_for_write() as connection:
        try:
            connection.ensure_connection(max_retries=1, interval_start=1)
        except Exception as exc:  # noqa: BLE001 - Celery keeps trying, and says so
            log.warning("could not check the queues at start-up (%s); the worker retries", exc)
            return
        declare_all(connection, settings)


def _seconds(raw: str) -> int:
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    raise argparse.ArgumentTypeError(f"must be a whole number of seconds (1 or more), got {raw!r}")


def _wait_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value > 0 and math.isfinite(value):
        return value
    raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {raw!r}")


def _task_document(args: argparse.Namespace) -> dict[str, Any]:
    """The task from the file (if any) with the flags applied on top."""
    document: dict[str, Any] = {}
    if args.file is not None:
        raw = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise InvalidTaskError("message", f"is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise InvalidTaskError("message", "must be a JSON object")
        document = loaded
    simple = {
        "id": args.id,
        "image": args.image,
        "volume_mount_path": args.mount,
        "working_dir": args.workdir,
        "cmd": args.container_command or args.cmd,
        "args": args.arg,
        "timeout_seconds": args.timeout,
        "retries": args.retries,
        "retry_on_exit_codes": args.retry_on,
    }
    document.update({key: value for key, value in simple.items() if value is not None})
    document.setdefault("id", f"task-{uuid.uuid4().hex[:10]}")
    document.setdefault("volume_mount_path", DEFAULT_MOUNT)
    if args.env:
        document["env"] = {**(document.get("env") or {}), **dict(_pair(item) for item in args.env)}
    resources = {"cpu": args.cpu, "memory": args.memory}
    if any(resources.values()):
        given = {k: v for k, v in resources.items() if v is not None}
        document["resources"] = {**(document.get("resources") or {}), **given}
    return document


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise InvalidTaskError("--env", f"must be NAME=VALUE, got {item!r}")
    return name, value


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.client import Client
    from dispatcher.client.inbox import checked_task
    from dispatcher.messages.task import TaskPolicy

    try:  # the worker's rules and this environment's limits, before any connection is made
        task = checked_task(_task_document(args), TaskPolicy.from_settings(settings))
    except InvalidTaskError as exc:
        print(f"dispatcher: invalid task: {exc}", file=sys.stderr)
        return EXIT_USAGE
    correlation_id = args.correlation_id or str(uuid.uuid4())
    with Client(settings) as client:
        if not args.wait:
            client.publish(task.to_json(), correlation_id=correlation_id, reply_to=None)
            print(f"published task {task.id} (correlation_id {correlation_id})")
            return 0
        with client.submit(task, correlation_id=correlation_id) as handle:
            response = _wait(handle, args.wait_timeout)
    if response is None:
        print(f"dispatcher: no response within {args.wait_timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    if isinstance(response, int):
        return response
    return _print_response(response)


def _wait(handle: TaskHandle, timeout: float) -> Response | int | None:
    """The response, None on timeout, or EXIT_INTERRUPTED; a progress line on a terminal."""
    line = _ProgressLine(handle.id) if sys.stderr.isatty() else None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            event = handle.next_event(min(0.25, max(deadline - time.monotonic(), 0.01)))
            if line is not None:
                line.show(event)
            response = handle.poll(0.0)
            if response is not None:
                return response
        return None
    except KeyboardInterrupt:
        if line is not None:  # the hint goes on a line of its own
            line.clear()
            line = None
        print(
            f"dispatcher: stopped waiting; task {handle.id} goes on "
            f"(stop it with: dispatcher cancel {handle.id})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if line is not None:
            line.clear()


class _ProgressLine:
    """One line of standard error, rewritten in place: the task's state and the time waited."""

    def __init__(self, task_id: str) -> None:
        self._task_id = task_id
        self._state = "sent"
        self._started = time.monotonic()

    def show(self, event: Any) -> None:
        if event is not None:
            node = f" on {event.node}" if event.node else ""
            self._state = f"{event.state}{node}{_failed_attempt(event)}"
        elapsed = time.monotonic() - self._started
        sys.stderr.write(f"\r\x1b[K{self._task_id}: {self._state} ({elapsed:.0f} s)")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _failed_attempt(event: Any) -> str:
    """For a retrying event: which attempt failed, and how."""
    if event.attempt is None:
        return ""
    how = f" with exit {event.exit}" if event.exit is not None else ""
    return f" (attempt {event.attempt} failed{how})"


def _print_response(response: Response) -> int:
    print(json.dumps(response.to_json(), ensure_ascii=False, indent=2))
    if response.error is not None:
        return EXIT_ERROR_RESPONSE
    return (response.exit or 0) & 0xFF


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.client import Client
    from dispatcher.client.inbox import checked_cancel

    try:
        request = checked_cancel(args.id).to_json()  # the same check the worker makes
    except InvalidTaskError as exc:
        print(f"dispatcher: invalid request: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with Client(settings) as client:
        if args.no_wait:
            client.publish(request, correlation_id=str(uuid.uuid4()), reply_to=None)
            print(f"cancel of task {args.id} sent")
            return 0
        response = client.cancel(args.id, timeout=args.wait_timeout)
    print(json.dumps(response.to_json(), ensure_ascii=False, indent=2))
    cancelled = response.error is not None and (
        response.error == "cancelled" or response.error.startswith("cancelled: ")
    )
    return 0 if cancelled else EXIT_ERROR_RESPONSE


def _answers(args: argparse.Namespace, settings: Settings) -> int:
    """Answers of tasks published without `reply_to` go to RESPONSE_QUEUE_NAME: take them off it
    (each acknowledged once printed) until --count or --wait-timeout seconds without one."""
    from dispatcher.client import Client

    printed = 0
    with Client(settings) as client:
        for body in client.take_answers(idle_timeout=args.wait_timeout, count=args.count):
            print(body, flush=True)
            printed += 1
    if not printed:
        print(
            f"dispatcher: no answer in {settings.response_queue_name} within "
            f"{args.wait_timeout:g} s",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    """Read with the operator's own Kubernetes configuration (K8S_IN_CLUSTER, KUBECONFIG) and
    broker user; needs the Kubernetes client of the extra `worker`."""
    if missing_worker_libraries(("lightkube",)):
        print(
            f"dispatcher: status needs lightkube, which the base install leaves out: "
            f"pip install '{WORKER_EXTRA}'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from dispatcher.kube.client import KubeClient

    try:
        kube = KubeClient.from_settings(settings)
    except KubeError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    show = _task_view if args.id else _overview_view
    try:
        while True:
            try:
                code = show(args, settings, kube)
            except KubeError as exc:  # watching, the next view may do better
                print(f"dispatcher: {exc}", file=sys.stderr)
                code = EXIT_ERROR_RESPONSE
            if not args.watch:
                return code
            time.sleep(args.interval)
    finally:
        kube.close()


def _overview_view(args: argparse.Namespace, settings: Settings, kube: Any) -> int:
    from kombu import Connection

    from dispatcher.amqp.depth import AmqpQueueProbe
    from dispatcher.core.overview import collect_overview
    from dispatcher.core.status_text import overview_text

    def connect() -> Any:
        connection = Connection(
            settings.broker_url, ssl=settings.broker_ssl or False, connect_timeout=10
        )
        connection.ensure_connection(max_retries=1)
        return connection

    overview = collect_overview(
        kube, AmqpQueueProbe(connect, settings), settings, datetime.now(UTC)
    )
    _show(args, overview.to_json(), overview_text(overview))
    return 0


def _task_view(args: argparse.Namespace, settings: Settings, kube: Any) -> int:
    from dispatcher.core.status_text import task_text
    from dispatcher.core.taskview import read_task

    view = read_task(
        kube,
        args.id,
        dispatcher_name=settings.dispatcher_name,
        max_run_seconds=settings.job_max_run_seconds,
    )
    if view is None:
        print(
            f"dispatcher: no Job for task {args.id} in namespace {settings.job_namespace} "
            f"(not sent, not made yet, or answered and deleted)",
            file=sys.stderr,
        )
        return EXIT_ERROR_RESPONSE
    _show(args, view.to_json(), task_text(view))
    return 0


def _show(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(document, ensure_ascii=False), flush=True)
    elif args.watch and sys.stdout.isatty():
        print("\x1b[H\x1b[2J" + text, flush=True)
    else:
        print(text + ("\n" if args.watch else ""), flush=True)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InvalidTaskError("FILE", f"cannot be read: {exc.strerror} ({path})") from None


def _config(args: argparse.Namespace, settings: Settings) -> int:
    for doc in SETTINGS_TABLE:
        value = os.environ.get(doc.env, doc.default)
        if doc.secret and value:
            value = "********"
        print(f"{doc.env}={value}")
    return 0


def _permissions(args: argparse.Namespace, settings: Settings) -> int:
    """One line per user, ready for a shell (the regexes single-quoted); or the definitions."""
    try:
        users = _broker_users(args)
        if args.definitions:
            document = amqp_permissions.definitions(settings, **users)
            print(json.dumps(document, indent=2))
            return 0
    except ConfigError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    grants = (
        (users["dispatcher_user"], amqp_permissions.dispatcher(settings)),
        (users["producer_user"], amqp_permissions.producer(settings)),
    )
    for user, granted in grants:
        print(shlex.join(["rabbitmqctl", *granted.rabbitmqctl(user, settings.amqp_vhost)]))
    return 0


def _broker_users(args: argparse.Namespace) -> dict[str, str]:
    """The two users (and, for --definitions, their passwords from the environment): the
    dispatcher's is --dispatcher-user, else AMQP_USER when set, else `dispatcher`."""
    own = amqp_permissions.own_user
    if args.dispatcher_user is not None:
        dispatcher_user = own("--dispatcher-user", args.dispatcher_user)
    else:
        dispatcher_user = own("AMQP_USER", os.environ.get("AMQP_USER") or "dispatcher")
    users = {
        "dispatcher_user": dispatcher_user,
        "producer_user": own("--producer-user", args.producer_user),
    }
    if args.definitions:
        password = amqp_permissions.own_password
        env = os.environ.get
        users["dispatcher_password"] = password(
            "AMQP_PASSWORD", env("AMQP_PASSWORD"), "the dispatcher's"
        )
        users["producer_password"] = password(
            "PRODUCER_AMQP_PASSWORD", env("PRODUCER_AMQP_PASSWORD"), "the producer's"
        )
    return users


if __name__ == "__main__":
    sys.exit(main())
