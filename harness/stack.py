"""The local stack as tests see it: settings from `.local/env`, a broker client, a worker process.

Integration and end-to-end tests need `make up` to have run (`make test` does it); when its
environment is missing they fail with that instruction instead of being skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection, Consumer, Exchange, Producer, Queue

from dispatcher.config import Settings

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / ".local"


def stack_env() -> dict[str, str]:
    """The variables `make up` wrote to .local/env."""
    path = LOCAL / "env"
    if not path.exists():
        raise RuntimeError("the local stack is not up: run `make up` (or `make test`) first")
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key:
            env[key] = value
    return env


def kubectl_path() -> str:
    """The kubectl of the Kubernetes the stack runs (`make up` records it; compat runs others)."""
    env_file = LOCAL / "env"
    version = stack_env().get("STACK_K8S_VERSION") if env_file.exists() else None
    if not version:
        version = pinned_versions()["K8S_VERSION"]
    cache = os.environ.get("STACK_CACHE", "/var/cache/dispatcher-stack")
    return f"{cache}/k8s-{version}/bin/kubectl"


def pinned_versions() -> dict[str, str]:
    """The pinned versions of the local stack (stack/versions.env)."""
    return dict(
        line.split("=", 1)
        for line in (REPO / "stack/versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def kubectl(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [kubectl_path(), f"--kubeconfig={LOCAL / 'kubeconfig'}", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=check, input=input, timeout=120
    )


def rabbitmqctl(*args: str, node: int = 1) -> subprocess.CompletedProcess[str]:
    """`rabbitmqctl ARGS...` against the stack's broker (node 1, or `node` of a BROKER_NODES=3
    stack), as its operator runs it: stack/rabbitmqctl.sh, the CLI of the broker's own root. A
    file it is given must lie under /tmp (pytest's tmp_path does)."""
    return subprocess.run(
        ["bash", "stack/rabbitmqctl.sh", str(node), "-q", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def memory_watermark() -> tuple[str, ...]:
    """RabbitMQ's memory high watermark, as `rabbitmqctl set_vm_memory_high_watermark` takes it
    (a fraction, or `absolute` and bytes): what to put back after raising a memory alarm."""
    raw = rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").stdout.strip()
    return ("absolute", raw[len("{absolute,") : -1]) if raw.startswith("{") else (raw,)


@dataclass
class Instance:
    """One isolated dispatcher installation: its own queues, exchanges and Job label."""

    name: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        base = stack_env()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "TASK_", "RESPONSE_"))
        }
        env.update(base)
        env.update(
            {
                "JOB_NAMESPACE": "dispatcher",
                "DISPATCHER_NAME": self.name,
                "TASK_QUEUE_NAME": f"{self.name}.tasks",
                "TASK_EXCHANGE_NAME": f"{self.name}.tasks",
                "CONTROL_QUEUE_NAME": f"{self.name}.tasks.control",
                "RESPONSE_QUEUE_NAME": f"{self.name}.responses",
                "RESPONSE_EXCHANGE_NAME": f"{self.name}.responses",
                "CELERY_QUEUE_NAME": f"{self.name}.internal",
                "HEALTH_PORT": "0",
                "STATUS_PORT": "0",
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(self.extra)
        return env

    @property
    def broker_url(self) -> str:
        """The stack's broker as the dispatcher reaches it: each node of AMQP_HOST in turn."""
        env = stack_env()
        return Settings.from_env({k: env[k] for k in env if k.startswith("AMQP_")}).broker_url


class Broker:
    """Publishes raw task messages and collects responses of one Instance."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        env = instance.env()
        self.conn = Connection(instance.broker_url, transport_options={"confirm_publish": True})
        self.task_exchange = Exchange(env["TASK_EXCHANGE_NAME"], type="direct", durable=True)
        # Declared as the worker declares them (QUEUE_TYPE), so either may come first.
        kind = {"x-queue-type": env.get("QUEUE_TYPE", "quorum")}
        self.task_queue = Queue(
            env["TASK_QUEUE_NAME"],
            self.task_exchange,
            routing_key="task",
            durable=True,
            queue_arguments=kind,
        )
        self.response_exchange = Exchange(
            env["RESPONSE_EXCHANGE_NAME"], type="direct", durable=True
        )
        self.response_queue = Queue(
            env["RESPONSE_QUEUE_NAME"],
            self.response_exchange,
            routing_key="response",
            durable=True,
            queue_arguments=kind,
        )
        channel = self.conn.default_channel
        self.task_queue(channel).declare()
        self.response_queue(channel).declare()
        self._seen: list[Any] = []

    def publish(self, body: bytes | str | Mapping[str, Any], **properties: Any) -> None:
        if isinstance(body, Mapping):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        Producer(self.conn.default_channel).publish(
            body,
            exchange=self.task_exchange,
            routing_key="task",
            content_type=properties.pop("content_type", "application/json"),
            content_encoding="binary",
            delivery_mode=2,
            **properties,
        )

    def responses(self, count: int, timeout: float = 120.0) -> list[Any]:
        """Wait for `count` responses on the response queue (kombu messages, acked)."""
        deadline = time.monotonic() + timeout
        queue = self.response_queue(self.conn.default_channel)
        while len(self._seen) < count and time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is None:
                time.sleep(0.2)
                continue
            self._seen.append(message)
        got, self._seen = self._seen[:count], self._seen[count:]
        if len(got) < count:
            raise AssertionError(
                f"expected {count} responses within {timeout:g} s, got {len(got)}: "
                f"{[m.body for m in got]}"
            )
        return got

    def response(self, timeout: float = 120.0) -> dict[str, Any]:
        return json.loads(self.responses(1, timeout)[0].body)

    def no_more_responses(self, wait: float) -> list[bytes]:
        time.sleep(wait)
        queue = self.response_queue(self.conn.default_channel)
        extra = []
        while (message := queue.get(no_ack=True)) is not None:
            extra.append(message.body)
        return extra

    def consumers(self, queue_name: str) -> int:
        """How many consumers the queue has (0 while it does not exist yet)."""
        channel = self.conn.channel()
        try:
            _, _, consumers = channel.queue_declare(queue_name, passive=True)
        except NotFound:
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()
        return int(consumers)

    def close(self) -> None:
        channel = self.conn.default_channel
        for name in (
            self.task_queue.name,
            self.response_queue.name,
            f"{self.instance.name}.internal",
            f"{self.instance.name}.tasks.control",
        ):
            try:
                channel.queue_delete(name)
            except Exception:
                channel = self.conn.channel()
        self.conn.release()


def run_cli(broker: Broker, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`dispatcher ARGS...` as a user runs it, with the settings of the broker's instance."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        env=broker.instance.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Worker:
    """A `dispatcher worker` process for one Instance, stopped by its PID."""

    def __init__(self, instance: Instance, log_dir: Path, *, concurrency: int = 4) -> None:
        self.instance = instance
        self.concurrency = concurrency
        self.log_path = log_dir / f"worker-{instance.name}-{uuid.uuid4().hex[:4]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, broker: Broker, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "worker",
                "--concurrency",
                str(self.concurrency),
            ],
            env=self.instance.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Ready when it consumes both its queues: the task queue (our consumer) and the
        # internal queue (Celery's), which may be declared a moment later.
        queues = (broker.task_queue.name, self.instance.env()["CELERY_QUEUE_NAME"])
        deadline = time.monotonic() + timeout
        while min(broker.consumers(name) for name in queues) < 1:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker not consuming after {timeout:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log()[-6000:]


@contextmanager
def running(instance: Instance, log_dir: Path) -> Iterator[tuple[Broker, Worker]]:
    broker = Broker(instance)
    worker = Worker(instance, log_dir)
    try:
        worker.start(broker)
        yield broker, worker
    finally:
        worker.stop()
        broker.close()


class ResponseCollector:
    """Consumes an instance's response queue in a thread of its own (basic.consume, prefetch
    500: fast enough for thousands of answers a second), keeping each answer with its arrival
    time in seconds since `start` (time.monotonic)."""

    def __init__(self, instance: Instance, start: float) -> None:
        env = instance.env()
        self.start = start
        self.bodies: list[tuple[float, dict[str, Any]]] = []
        self._conn = Connection(instance.broker_url)
        self._queue = Queue(env["RESPONSE_QUEUE_NAME"], no_declare=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="responses", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def on_message(message: Any) -> None:
            self.bodies.append((time.monotonic() - self.start, json.loads(message.body)))
            message.ack()

        channel = self._conn.channel()
        with Consumer(channel, [self._queue], on_message=on_message, prefetch_count=500):
            while not self._stop.is_set():
                try:
                    self._conn.drain_events(timeout=0.5)
                except TimeoutError:
                    continue

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} answers in {timeout:g} s: {len(self.bodies)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.release()
