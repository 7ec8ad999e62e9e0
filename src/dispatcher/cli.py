"""The `dispatcher` command: run the worker, or submit a task and wait for its response.

    dispatcher worker [--concurrency N]
    dispatcher submit FILE|- [--wait] [--timeout SECONDS] [--correlation-id ID]
    dispatcher config

Settings come from the environment (see the README). A bad setting stops the command with one
line naming the variable and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence

from dispatcher.config import SETTINGS_TABLE, Settings
from dispatcher.errors import ConfigError, KubeError

EXIT_USAGE = 2
EXIT_ERROR_RESPONSE = 1
EXIT_TIMEOUT = 124


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"dispatcher: invalid setting {exc}", file=sys.stderr)
        return EXIT_USAGE
    from dispatcher import logs

    logs.configure(settings.log_level, settings.log_format)
    handler = {"worker": _worker, "submit": _submit, "config": _config}[args.command]
    return handler(args, settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run the Celery worker with the task consumer and watch")
    worker.add_argument(
        "--concurrency", type=int, default=None, help="worker threads (WORKER_CONCURRENCY)"
    )
    submit = sub.add_parser("submit", help="publish a task (JSON file or - for stdin)")
    submit.add_argument("file", help="task JSON file, or - to read standard input")
    submit.add_argument("--wait", action="store_true", help="wait for the response and print it")
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (300)")
    submit.add_argument("--correlation-id", default=None, help="AMQP correlation_id to send")
    sub.add_parser("config", help="check the settings and print them (password hidden)")
    return parser


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.core.preflight import preflight
    from dispatcher.worker.app import create_app

    app = create_app(settings)
    try:
        kube = app.dispatcher.connect_kube()  # fail now, with one line, not inside the worker
    except KubeError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    preflight(kube, settings)  # warns about the claim the Jobs mount
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


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.amqp.client import TaskClient

    body = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
    correlation_id = args.correlation_id or str(uuid.uuid4())
    with TaskClient(settings) as client:
        if not args.wait:
            client.publish(body, correlation_id=correlation_id)
            print(f"published task (correlation_id {correlation_id})")
            return 0
        response = client.call(body, correlation_id=correlation_id, timeout=args.timeout)
    if response is None:
        print(f"dispatcher: no response within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(response, ensure_ascii=False, indent=2))
    if "error" in response:
        return EXIT_ERROR_RESPONSE
    return int(response.get("exit", 0)) & 0xFF


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _config(args: argparse.Namespace, settings: Settings) -> int:
    for doc in SETTINGS_TABLE:
        value = os.environ.get(doc.env, doc.default)
        if doc.env == "AMQP_PASSWORD":
            value = "********"
        print(f"{doc.env}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
