"""What the status page costs a worker: CPU and resident memory with many tasks in flight, the
page closed, then open (polled as its script does), then closed again.

    set -a; . .local/env; set +a; .venv/bin/python bench/status_page.py [--tasks 100]

One worker of a fresh installation on the local stack gets `--tasks` tasks of `sleep 600` at
once: the node runs about 20 of them, the rest wait for room. Once every task has its Job, three
windows of `--window` seconds each are measured from /proc of the worker process: CPU seconds
used and RSS (mean and most). "open" fetches /status.json every 2 s as one open page does, and a
task's JSON every 2 s as one open task page does. Then the Jobs are deleted (each is answered
"deleted"), the worker is stopped by its PID and the installation's queues are removed. Bounded:
every wait has a deadline; traffic goes only to the local stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Producer

from dispatcher.config import Settings
from dispatcher.kube.client import KubeClient
from dispatcher.kube.conventions import label_selector

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def instance_env(name: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASK_", "RESPONSE_"))}
    env.update(
        JOB_NAMESPACE="dispatcher",
        DISPATCHER_NAME=name,
        TASK_QUEUE_NAME=f"{name}.tasks",
        TASK_EXCHANGE_NAME=f"{name}.tasks",
        CONTROL_QUEUE_NAME=f"{name}.tasks.control",
        RESPONSE_QUEUE_NAME=f"{name}.responses",
        RESPONSE_EXCHANGE_NAME=f"{name}.responses",
        CELERY_QUEUE_NAME=f"{name}.internal",
        HEALTH_PORT="0",
        STATUS_PORT=str(port),
        MAX_ACTIVE_JOBS="0",
        LOG_LEVEL="WARNING",
    )
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get(url: str) -> float:
    """Seconds until the whole answer of a GET."""
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    return time.monotonic() - started


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} not reached within {timeout:g} s")
        time.sleep(1)


def measure(pid: int, seconds: float, poll: Callable[[], float] | None) -> dict[str, float]:
    """CPU and RSS of `pid` over `seconds`, while `poll` runs every 2 s (when given)."""
    stop = threading.Event()
    latencies: list[float] = []

    def poller() -> None:
        while poll is not None and not stop.is_set():
            latencies.append(poll())
            stop.wait(2.0)

    thread = threading.Thread(target=poller, daemon=True)
    rss: list[float] = []
    cpu0, start = cpu_seconds(pid), time.monotonic()
    thread.start()
    while time.monotonic() - start < seconds:
        rss.append(rss_mib(pid))
        time.sleep(1)
    stop.set()
    thread.join(timeout=35)
    used = cpu_seconds(pid) - cpu0
    elapsed = time.monotonic() - start
    return {
        "cpu_percent": 100 * used / elapsed,
        "rss_mean": statistics.fmean(rss),
        "rss_max": max(rss),
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "max_ms": 1000 * max(latencies) if latencies else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    if "KUBECONFIG" not in os.environ:
        print("bench: source .local/env first (the local stack's settings)", file=sys.stderr)
        return 2
    name, port = "sp" + uuid.uuid4().hex[:8], free_port()
    env = instance_env(name, port)
    settings = Settings.from_env(env)
    kube = KubeClient.from_settings(settings)
    selector = label_selector(name)
    log_path = REPO / ".local" / "logs" / f"bench-status-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "worker", "--concurrency", "4"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    origin = f"http://127.0.0.1:{port}"
    try:
        return run(args, worker.pid, origin, settings, kube, selector)
    finally:
        cleanup(worker, kube, selector, settings)


def run(
    args: argparse.Namespace,
    pid: int,
    origin: str,
    settings: Settings,
    kube: KubeClient,
    selector: str,
) -> int:
    def page_up() -> bool:
        try:
            get(origin + "/static/status.css")
        except OSError:
            return False
        return True

    wait_until(page_up, 120, "the worker's status page")
    time.sleep(5)  # the consumer and the watches start
    publish(settings, args.tasks)

    def all_jobs() -> bool:
        return len(kube.list_objects("jobs", selector)[0]) >= args.tasks

    wait_until(all_jobs, 300, f"{args.tasks} Jobs")
    time.sleep(5)
    first = kube.list_objects("jobs", selector)[0][0]["metadata"]["name"]
    overview = json.loads(urllib.request.urlopen(origin + "/status.json", timeout=30).read())
    print(f"tasks in flight: {overview['in_flight']}, by state: ", end="")
    print({state: value["count"] for state, value in overview["states"].items()})

    def page_open() -> float:
        return get(origin + "/status.json")

    def task_page_open() -> float:
        return get(f"{origin}/tasks/{first}.json")

    windows = [
        ("closed", None),
        ("overview open", page_open),
        ("task page open", task_page_open),
        ("closed again", None),
    ]
    print(
        f"\n{'page':<16} {'CPU %':>6} {'RSS MiB mean':>13} {'RSS MiB max':>12} "
        f"{'GETs':>5} {'p50 ms':>7} {'max ms':>7}"
    )
    for label, poll in windows:
        row = measure(pid, args.window, poll)
        print(
            f"{label:<16} {row['cpu_percent']:>6.1f} {row['rss_mean']:>13.1f} "
            f"{row['rss_max']:>12.1f} {row['requests']:>5} {row['p50_ms']:>7.0f} "
            f"{row['max_ms']:>7.0f}"
        )
    return 0


def publish(settings: Settings, count: int) -> None:
    image = os.environ["TEST_IMAGE"]
    exchange = Exchange(settings.task_exchange_name, type=settings.task_exchange_type)
    with Connection(settings.broker_url) as connection:
        producer = Producer(connection.default_channel)
        for index in range(count):
            task = {
                "id": f"{settings.dispatcher_name}-{index}",
                "image": image,
                "volume_mount_path": "/work",
                "cmd": ["/bin/sh", "-c"],
                "args": ["sleep 600"],
            }
            producer.publish(
                json.dumps(task),
                exchange=exchange,
                routing_key=settings.task_routing_key,
                content_type="application/json",
                delivery_mode=2,
            )


def cleanup(
    worker: subprocess.Popen[bytes], kube: KubeClient, selector: str, settings: Settings
) -> None:
    """Delete the Jobs (the worker answers each), stop the worker, remove the queues."""
    for job in kube.list_objects("jobs", selector)[0]:
        kube.delete_job(job["metadata"]["name"])
    deadline = time.monotonic() + 180
    while kube.list_objects("jobs", selector)[0] and time.monotonic() < deadline:
        time.sleep(2)
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=30)
    names = (
        settings.task_queue_name,
        settings.control_queue_name,
        settings.response_queue_name,
        settings.celery_queue_name,
    )
    with Connection(settings.broker_url) as connection:
        for queue in names:
            delete(connection, lambda channel, queue=queue: channel.queue_delete(queue))
        for exchange in (settings.task_exchange_name, settings.response_exchange_name):
            delete(connection, lambda channel, name=exchange: channel.exchange_delete(name))
    kube.close()


def delete(connection: Connection, action: Callable[[Any], object]) -> None:
    """Best effort, each on a channel of its own (a refused delete closes its channel)."""
    channel = connection.channel()
    with contextlib.suppress(Exception):
        action(channel)
    with contextlib.suppress(Exception):
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
