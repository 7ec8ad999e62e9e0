"""Benchmarks of the dispatcher on the local stack, printed as tables.

    make bench            # all of them (about 9 minutes)
    python bench/run.py parse intake e2e memory burst

- parse:  task parsing in-process (no I/O), tasks per second.
- intake: invalid messages answered per second through RabbitMQ (consumer + response path).
- client: the asyncio client following 1 / 100 / 1000 tasks at once, answered at once by a
          responder (no cluster): tasks per second and run() latency.
- e2e:    tasks from publish to response through real Jobs: latency percentiles and throughput.
- memory: worker resident memory while many Jobs run (no slot or thread is held per Job).
- burst:  500 x `sleep 5` at once with default settings, 25 times what the node runs at once:
          answered / wrong / duplicates, makespan against the ideal, submit and create rates,
          the worker's CPU per task and the broker's count of deliveries.
          `burst --count 200 --fail-once-fraction 0.5`: 200 tasks with `retries: 1`, every
          other one failing its first run (exit 3): each must be answered once, exit 0, and
          list both attempts when it failed once; the table adds the attempts counted.
- delivery-limit: 60 x `sleep 2` with MAX_ACTIVE_JOBS=2 and a policy setting the task queue's
          delivery-limit to 3: every task answered once, deliveries counted by the broker.
- kueue:  300 x `sleep 5` with and without Kueue deciding (a ClusterQueue whose quota is the
          node; run `make kueue-up` first): what Kueue's admission costs per wave.

Every load is bounded in count and time and goes only to the local stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.report import markdown_table, rss_kib
from harness.burst import (
    JobMonitor,
    ideal_makespan,
    node_slots,
    run_burst,
    running_pods,
    submit_seconds,
    task_queue_depth,
    wait_until,
)
from harness.stack import (
    LOCAL,
    Broker,
    Instance,
    ResponseCollector,
    Worker,
    kubectl,
    rabbitmqctl,
    running,
    stack_env,
)
from kombu import Connection, Consumer, Producer, Queue

from dispatcher.client import AsyncClient
from dispatcher.config import Settings
from dispatcher.messages.task import parse_task

LOG_DIR = LOCAL / "logs" / "bench"


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n{title}\n{markdown_table(header, rows)}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_parse() -> None:
    bodies = {
        "minimal": {"id": "t-1", "image": "localhost/x:1", "volume_mount_path": "/w"},
        "full": {
            "id": "t-1",
            "image": "registry.example.com/team/app:1.0",
            "volume_mount_path": "/w",
            "working_dir": "/w/run",
            "cmd": ["/bin/sh", "-c"],
            "args": ["echo " + "x" * 200] * 20,
        },
    }
    rows = []
    for name, document in bodies.items():
        raw = json.dumps(document).encode()
        n = 20000
        start = time.perf_counter()
        for _ in range(n):
            parse_task(raw)
        elapsed = time.perf_counter() - start
        rows.append([name, len(raw), n, f"{n / elapsed:,.0f}", f"{elapsed / n * 1e6:.1f}"])
    table("parse_task (in-process)", ["task", "bytes", "n", "tasks/s", "µs/task"], rows)


def bench_intake(n: int = 10000) -> None:
    """Messages wait in the queue first; then a worker starts. `answers/s` runs from the first
    answer to the last (the steady rate); `with start` includes the worker's start."""
    rows = []
    for prefetch, mode in (("16", "confirmed"), ("128", "confirmed"), ("16", "immediate")):
        instance = Instance(extra={"TASK_PREFETCH": prefetch, "TASK_ACK_MODE": mode})
        broker = Broker(instance)
        worker = Worker(instance, LOG_DIR)
        collector = None
        try:
            for i in range(n):
                broker.publish(json.dumps({"id": f"Bad-{i}"}).encode())
            start = time.monotonic()
            collector = ResponseCollector(instance, start)
            worker.start(broker)
            collector.wait(n, 300)
            times = sorted(t for t, _ in collector.bodies)
            ids = {body.get("id") for _, body in collector.bodies}
        finally:
            if collector is not None:
                collector.stop()
            worker.stop()
            broker.close()
        steady = (n - 1) / (times[-1] - times[0])
        rows.append(
            [
                n,
                prefetch,
                mode,
                len(ids),
                f"{times[-1]:.2f}",
                f"{n / times[-1]:,.0f}",
                f"{steady:,.0f}",
            ]
        )
    table(
        "intake: queued invalid messages answered through RabbitMQ",
        [
            "messages",
            "TASK_PREFETCH",
            "TASK_ACK_MODE",
            "distinct ids",
            "seconds",
            "with start",
            "answers/s",
        ],
        rows,
    )


def bench_e2e() -> None:
    rows = []
    image = stack_env()["TEST_IMAGE"]
    for n in (1, 10, 30):
        instance = Instance()
        with running(instance, LOG_DIR) as (broker, _):
            sent: dict[str, float] = {}
            start = time.perf_counter()
            for i in range(n):
                task_id = f"b-{uuid.uuid4().hex[:8]}-{i}"
                sent[task_id] = time.perf_counter()
                broker.publish(
                    {
                        "id": task_id,
                        "image": image,
                        "volume_mount_path": "/w",
                        "cmd": ["/bin/sh", "-c", "echo done"],
                    }
                )
            latencies = []
            for message in broker.responses(n, timeout=600):
                response = json.loads(message.body)
                assert response.get("exit") == 0, response
                latencies.append(time.perf_counter() - sent[response["id"]])
            elapsed = time.perf_counter() - start
        rows.append(
            [
                n,
                f"{statistics.median(latencies):.2f}",
                f"{pct(latencies, 0.95):.2f}",
                f"{max(latencies):.2f}",
                f"{elapsed:.1f}",
                f"{n / elapsed * 60:.0f}",
            ]
        )
    table(
        "end to end: publish -> Job -> response (single node, 2 cores)",
        ["tasks at once", "p50 s", "p95 s", "max s", "total s", "tasks/min"],
        rows,
    )


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def bench_memory() -> None:
    image = stack_env()["TEST_IMAGE"]
    rows = []
    # 10m of CPU each, so that 50 pods fit on the 2-core node (the default 100m fits about 19).
    instance = Instance(extra={"JOB_CPU_REQUEST": "10m", "JOB_MEMORY_REQUEST": "16Mi"})
    with running(instance, LOG_DIR) as (broker, worker):
        assert worker.proc is not None
        pid = worker.proc.pid
        time.sleep(2)
        rows.append(["idle", 0, rss_kib(pid) // 1024, threads(pid)])
        for n in (25, 50):
            ids = [f"m-{uuid.uuid4().hex[:8]}" for _ in range(n)]
            for task_id in ids:
                broker.publish(
                    {
                        "id": task_id,
                        "image": image,
                        "volume_mount_path": "/w",
                        "cmd": ["/bin/sh", "-c", "sleep 150; echo ok"],
                    }
                )
            wait_until(lambda n=n: running_pods(instance.name) >= n, 140)
            rows.append([f"{n} Jobs running", n, rss_kib(pid) // 1024, threads(pid)])
            broker.responses(n, timeout=300)
        rows.append(["after all answered", 0, rss_kib(pid) // 1024, threads(pid)])
    table(
        "worker memory and threads vs running Jobs", ["state", "Jobs", "RSS MiB", "threads"], rows
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_deliveries() -> tuple[int, int]:
    """RabbitMQ's own counts of messages delivered to consumers and of those delivered again
    (a requeue, or a consumer gone), over every queue of the broker."""
    text = rabbitmqctl("eval", "rabbit_global_counters:overview().").stdout
    delivered = sum(int(n) for n in re.findall(r"messages_delivered_total => (\d+)", text))
    again = sum(int(n) for n in re.findall(r"messages_redelivered_total => (\d+)", text))
    return delivered, again


def deliveries_since(before: tuple[int, int]) -> tuple[int, int]:
    now = broker_deliveries()
    return now[0] - before[0], now[1] - before[1]


def bench_burst(count: int = 500, seconds: float = 5.0, fail_once_fraction: float = 0.0) -> None:
    """A burst far larger than the node, with default settings (MAX_ACTIVE_JOBS, 100m cpu);
    with `fail_once_fraction`, that share of the tasks fails once and is retried by its Job."""
    defaults = Settings.from_env({})
    instance = Instance()
    depths: list[int] = []
    with running(instance, LOG_DIR) as (broker, worker):
        assert worker.proc is not None
        alone = run_burst(broker, 1, seconds, timeout=120)  # one task on an idle node
        overhead = alone.makespan - seconds
        cpu, counted = cpu_seconds(worker.proc.pid), broker_deliveries()
        with JobMonitor(instance.env()) as jobs:
            result = run_burst(
                broker,
                count,
                seconds,
                timeout=1800,
                on_tick=lambda: depths.append(task_queue_depth(broker)),
                fail_once_fraction=fail_once_fraction,
            )
        cpu = cpu_seconds(worker.proc.pid) - cpu
        delivered, again = deliveries_since(counted)
        submits = submit_seconds(worker)[1:]
    slots = min(node_slots(defaults.job_cpu_request), defaults.max_active_jobs)
    ideal = ideal_makespan(count, slots, seconds, overhead)
    created = sorted(jobs.created.values())
    first = created[: min(count, defaults.max_active_jobs)]
    waits = [at - result.first_publish for at in created]
    rows = [
        ["tasks sent / answered", f"{result.sent} / {result.answered}"],
        [
            "wrong / duplicates / lost",
            f"{len(result.wrong)} / {result.duplicates} / {len(result.lost)}",
        ],
        [
            "attempts answered (answers listing more than one)",
            f"{result.attempts} ({result.retried})",
        ],
        ["tasks the node runs at once (slots)", slots],
        [
            "one task alone, publish to response",
            f"{alone.makespan:.1f} s ({overhead:.1f} s overhead)",
        ],
        ["makespan", f"{result.makespan:.1f} s"],
        ["ideal: ceil(tasks / slots) x task + overhead of one task", f"{ideal:.1f} s"],
        ["makespan / ideal", f"{result.makespan / ideal:.2f}"],
        [
            "time per wave of slots beyond the task itself",
            f"{(result.makespan - overhead) / math.ceil(count / slots) - seconds:.1f} s",
        ],
        ["throughput", f"{result.answered / result.makespan * 60:.0f} tasks/min"],
        [
            "submit task p50 / p99",
            f"{pct(submits, 0.5) * 1000:.0f} / {pct(submits, 0.99) * 1000:.0f} ms",
        ],
        [
            f"first {len(first)} Jobs created",
            f"in {first[-1] - first[0]:.2f} s ({(len(first) - 1) / (first[-1] - first[0]):.0f}/s)",
        ],
        ["publish to Job created p50 / p99", f"{pct(waits, 0.5):.1f} / {pct(waits, 0.99):.1f} s"],
        [
            "most active Jobs at once (MAX_ACTIVE_JOBS)",
            f"{jobs.max_active} ({defaults.max_active_jobs})",
        ],
        ["deepest task queue seen", max(depths, default=0)],
        ["worker CPU per task", f"{cpu / count * 1000:.1f} ms"],
        ["broker: messages delivered / delivered again (all queues)", f"{delivered} / {again}"],
    ]
    retrying = f", {fail_once_fraction:g} of them failing once" if fail_once_fraction else ""
    table(
        f"burst: {count} x `sleep {seconds:g}` at once{retrying}, default settings, "
        "single 2-core node",
        ["measure", "result"],
        rows,
    )


def bench_delivery_limit(count: int = 60, seconds: float = 2.0, limit: int = 3) -> None:
    """MAX_ACTIVE_JOBS=2 and an operator's policy setting the task queue's delivery-limit to
    `limit`: the backlog waits untouched, so every task is delivered once and answered once."""
    instance = Instance(extra={"MAX_ACTIVE_JOBS": "2"})
    queue = instance.env()["TASK_QUEUE_NAME"]
    policy = f"{instance.name}-limit"
    pattern = "^" + re.escape(queue) + "$"
    rabbitmqctl(
        "set_policy", policy, pattern, json.dumps({"delivery-limit": limit}), "--apply-to", "queues"
    )
    try:
        with running(instance, LOG_DIR) as (broker, worker):
            assert worker.proc is not None
            cpu, counted = cpu_seconds(worker.proc.pid), broker_deliveries()
            result = run_burst(broker, count, seconds, timeout=1200)
            cpu = cpu_seconds(worker.proc.pid) - cpu
            delivered, again = deliveries_since(counted)
            extra = broker.no_more_responses(2)
    finally:
        rabbitmqctl("clear_policy", policy)
    rows = [
        ["tasks sent / answered", f"{result.sent} / {result.answered}"],
        [
            "wrong / duplicates / lost",
            f"{len(result.wrong)} / {result.duplicates + len(extra)} / {len(result.lost)}",
        ],
        ["makespan", f"{result.makespan:.1f} s"],
        ["worker CPU per task", f"{cpu / count * 1000:.1f} ms"],
        ["broker: messages delivered / delivered again (all queues)", f"{delivered} / {again}"],
    ]
    table(
        f"delivery limit: {count} x `sleep {seconds:g}`, MAX_ACTIVE_JOBS=2, the task queue's "
        f"delivery-limit {limit} (policy)",
        ["measure", "result"],
        rows,
    )


def bench_kueue(count: int = 300, seconds: float = 5.0) -> None:
    """The same burst with and without Kueue deciding (needs `make kueue-up`): a ClusterQueue
    whose cpu quota is what the node holds, MAX_ACTIVE_JOBS=0, against the default settings."""
    slots = node_slots("100m")
    objects = kueue_queue("bench-kueue", f"{slots * 100}m")
    listed = json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    kubectl("apply", "-f", "-", input=listed)
    rows = []
    try:
        for label, extra in (
            ("default settings (MAX_ACTIVE_JOBS=100)", {}),
            (
                "Kueue decides (MAX_ACTIVE_JOBS=0)",
                {"KUEUE_LOCAL_QUEUE": "bench-kueue", "MAX_ACTIVE_JOBS": "0"},
            ),
        ):
            instance = Instance(extra=extra)
            with running(instance, LOG_DIR) as (broker, _), JobMonitor(instance.env()) as jobs:
                alone = run_burst(broker, 1, seconds, timeout=120)
                result = run_burst(broker, count, seconds, timeout=1800)
            ideal = ideal_makespan(count, slots, seconds, alone.makespan - seconds)
            rows.append(
                [
                    label,
                    f"{result.answered} / {len(result.wrong)} / {result.duplicates} / "
                    f"{len(result.lost)}",
                    f"{alone.makespan:.1f} s",
                    f"{result.makespan:.1f} s",
                    f"{result.makespan / ideal:.2f}",
                    jobs.max_active,
                ]
            )
    finally:
        kubectl("delete", "--ignore-not-found", "-f", "-", input=listed)
    table(
        f"kueue: {count} x `sleep {seconds:g}` at once, {slots} at a time "
        "(ClusterQueue quota = the node)",
        [
            "settings",
            "answered / wrong / dup / lost",
            "one task alone",
            "makespan",
            "/ ideal",
            "most Jobs not ended at once",
        ],
        rows,
    )


def kueue_queue(name: str, cpu: str) -> list[dict[str, object]]:
    """A ResourceFlavor, a ClusterQueue with `cpu` of quota, and its LocalQueue `name`."""
    quota = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "64Gi"}]
    group = {"coveredResources": ["cpu", "memory"], "flavors": [{"name": name, "resources": quota}]}
    api = "kueue.x-k8s.io/v1beta2"
    return [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": name}},
        {
            "apiVersion": api,
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {"namespaceSelector": {}, "resourceGroups": [group]},
        },
        {
            "apiVersion": api,
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": "dispatcher"},
            "spec": {"clusterQueue": name},
        },
    ]


class Responder:
    """Answers every task on the instance's task queue at once, as a worker would (no cluster):
    what is measured is the client."""

    def __init__(self, instance: Instance) -> None:
        self._connection = Connection(instance.broker_url)
        self._channel = self._connection.channel()
        self._producer = Producer(self._channel)
        queue = Queue(instance.env()["TASK_QUEUE_NAME"], no_declare=True)
        self._consumer = Consumer(self._channel, queues=[queue], on_message=self._answer)
        self._channel.basic_qos(0, 256, False)
        self._consumer.consume()
        self._stopped = threading.Event()
        self._pending: list[Any] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _answer(self, message: object) -> None:
        self._pending.append(message)

    def _run(self) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                self._connection.drain_events(timeout=0.05)
            while self._pending:
                message = self._pending.pop(0)
                task = json.loads(message.body)
                properties = message.properties
                self._producer.publish(
                    json.dumps({"id": task["id"], "output": "ok\n", "exit": 0}).encode(),
                    exchange="",
                    routing_key=properties["reply_to"],
                    correlation_id=properties["correlation_id"],
                    content_type="application/json",
                )
                message.ack()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)
        self._connection.release()


async def follow_at_once(instance: Instance, n: int) -> tuple[float, list[float]]:
    """`n` x `run()` at once on one AsyncClient: the seconds for all, and each one's."""
    latencies: list[float] = []

    async def one(client: AsyncClient, i: int) -> None:
        started = time.monotonic()
        sent = {"id": f"client-{i}", "image": "localhost/x:1", "volume_mount_path": "/w"}
        response = await client.run(sent, timeout=120)
        assert response.output == "ok\n"
        latencies.append(time.monotonic() - started)

    async with AsyncClient(Settings.from_env(instance.env())) as client:
        started = time.monotonic()
        await asyncio.gather(*(one(client, i) for i in range(n)))
        return time.monotonic() - started, latencies


def bench_client() -> None:
    """The asyncio client following many tasks at once on one connection: `gather` of `run()`,
    each answered at once by a responder (no cluster), so the client's own cost is measured."""
    rows = []
    for n in (1, 100, 1000):
        instance = Instance()
        broker = Broker(instance)
        responder = Responder(instance)
        try:
            seconds, latencies = asyncio.run(follow_at_once(instance, n))
        finally:
            responder.stop()
            broker.close()
        rows.append(
            [
                n,
                len(latencies),
                f"{seconds:.2f}",
                f"{n / seconds:,.0f}",
                f"{pct(latencies, 0.5) * 1000:.0f}",
                f"{pct(latencies, 0.99) * 1000:.0f}",
            ]
        )
    table(
        "client: AsyncClient, n x run() at once on one client, answered at once (no cluster)",
        ["tasks", "answered", "seconds", "tasks/s", "run p50 ms", "run p99 ms"],
        rows,
    )


BENCHES = {
    "parse": bench_parse,
    "client": bench_client,
    "intake": bench_intake,
    "e2e": bench_e2e,
    "memory": bench_memory,
    "burst": bench_burst,
    "delivery-limit": bench_delivery_limit,
    "kueue": bench_kueue,
}


def main(argv: list[str]) -> None:
    """Run the benchmarks named in `argv` (all but kueue when none); `--count N` and
    `--fail-once-fraction F` are passed to burst."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    names, options = _options(argv)
    for name in names or [name for name in BENCHES if name != "kueue"]:  # kueue: make kueue-up
        if name == "burst":
            bench_burst(**options)
        else:
            BENCHES[name]()


def _options(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    names: list[str] = []
    options: dict[str, Any] = {}
    words = iter(argv)
    for word in words:
        if word == "--count":
            options["count"] = int(next(words))
        elif word == "--fail-once-fraction":
            options["fail_once_fraction"] = float(next(words))
        else:
            names.append(word)
    return names, options


if __name__ == "__main__":
    main(sys.argv[1:])
