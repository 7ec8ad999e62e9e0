"""A burst of real tasks through one dispatcher installation, watched from the cluster's side.

`Burst` publishes N tasks (`sleep S; echo <id>`), collects every response on the instance's
response queue and judges each against what its task must print (with `fail_once_fraction`,
that share of them fails its first run with exit 3 and is retried once by its Job: its answer
must then list both attempts), while a `JobMonitor` watches
the installation's Jobs on the API server and records how many existed and how many were active
(not yet ended) at every moment, and when each was created. The e2e tests assert on it; the
benchmark prints it. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dispatcher.config import Settings
from dispatcher.kube.client import KubeClient
from dispatcher.kube.conventions import label_selector
from dispatcher.kube.outcome import job_finished
from harness.stack import Broker, Worker, kubectl, stack_env


class JobMonitor:
    """Watches one installation's Jobs; thread-safe counters of what the cluster held."""

    def __init__(self, env: dict[str, str]) -> None:
        settings = Settings.from_env(env)
        self._kube = KubeClient.from_settings(settings)
        self._selector = label_selector(settings.dispatcher_name)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._live: dict[str, bool] = {}  # Job uid -> still active (not ended)
        self.created: dict[str, float] = {}  # Job name -> when the watch first saw it
        self.max_jobs = 0
        self.max_active = 0
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-monitor", daemon=True)

    def __enter__(self) -> JobMonitor:
        self._thread.start()
        if not self.ready.wait(30):
            raise AssertionError("the Job monitor could not list the Jobs within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
        self._kube.close()

    def _run(self) -> None:
        items, version = self._kube.list_objects("jobs", self._selector)
        for job in items:
            self._see("ADDED", job)
        self.ready.set()
        while not self._stop.is_set():
            for event in self._kube.watch_objects("jobs", self._selector, version, 5):
                obj = event.get("object") or {}
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._see(str(event["type"]), obj)
                if self._stop.is_set():
                    return

    def ended(self) -> int:
        """Jobs that exist and have ended."""
        with self._lock:
            return sum(1 for active in self._live.values() if not active)

    def _see(self, kind: str, job: dict[str, Any]) -> None:
        meta = job.get("metadata", {})
        with self._lock:
            if kind == "DELETED":
                self._live.pop(meta["uid"], None)
            else:
                self.created.setdefault(meta["name"], time.monotonic())
                self._live[meta["uid"]] = not job_finished(job)
            self.max_jobs = max(self.max_jobs, len(self._live))
            self.max_active = max(self.max_active, sum(self._live.values()))


@dataclass
class BurstResult:
    sent: int
    answered: int
    wrong: list[dict[str, Any]]
    duplicates: int
    lost: list[str]
    makespan: float
    first_publish: float
    answer_times: dict[str, float] = field(default_factory=dict)
    attempts: int = 0  # runs of a container the right answers report (1 for an answer without)
    retried: int = 0  # right answers that list more than one attempt

    def summary(self) -> str:
        return (
            f"sent {self.sent}, answered {self.answered}, wrong {len(self.wrong)}, "
            f"duplicates {self.duplicates}, lost {len(self.lost)}, attempts {self.attempts} "
            f"({self.retried} retried), makespan {self.makespan:.1f} s; "
            f"first wrong: {self.wrong[:3]}"
        )


def sleeper(task_id: str, seconds: float) -> dict[str, Any]:
    """A task that sleeps, then prints its own id: its answer proves which task ran."""
    return {
        "id": task_id,
        "image": stack_env()["TEST_IMAGE"],
        "volume_mount_path": "/work",
        "cmd": ["/bin/sh", "-c"],
        "args": [f"sleep {seconds:g}; echo {task_id}"],
    }


def failing_once(task_id: str, seconds: float) -> dict[str, Any]:
    """A sleeper whose first run fails with exit 3 (it leaves a mark on the claim) and that may
    run once more: its second run succeeds and removes the mark."""
    mark = f"/work/{task_id}.failed"
    script = (
        f"if [ ! -e {mark} ]; then touch {mark}; echo first; exit 3; fi; "
        f"sleep {seconds:g}; rm -f {mark}; echo {task_id}"
    )
    return {**sleeper(task_id, seconds), "args": [script], "retries": 1}


def _right(response: dict[str, Any], task_id: str, fails_once: bool) -> bool:
    """The answer its task must get: its id printed, exit 0, and both runs when it failed once
    (exit 3, then 0)."""
    attempts = response.get("attempts")
    plain = {k: v for k, v in response.items() if k != "attempts"}
    if plain != {"id": task_id, "output": f"{task_id}\n", "exit": 0}:
        return False
    if not fails_once:
        return attempts is None
    return isinstance(attempts, list) and [a.get("exit") for a in attempts] == [3, 0]


def run_burst(
    broker: Broker,
    count: int,
    seconds: float,
    *,
    timeout: float,
    on_tick: Any = None,
    fail_once_fraction: float = 0.0,
) -> BurstResult:
    """Publish `count` sleepers at once and collect their answers (at most `timeout` s); the
    first `fail_once_fraction` of them (every other one at 0.5) fail once and are retried."""
    prefix = "b" + uuid.uuid4().hex[:6]
    ids = [f"{prefix}-{i}" for i in range(count)]
    step = round(1 / fail_once_fraction) if fail_once_fraction > 0 else 0
    failing = {task_id for i, task_id in enumerate(ids) if step and i % step == 0}
    start = time.monotonic()
    for task_id in ids:
        make = failing_once if task_id in failing else sleeper
        broker.publish(make(task_id, seconds))
    answers: Counter[str] = Counter()
    wrong: list[dict[str, Any]] = []
    times: dict[str, float] = {}
    attempts = retried = 0
    deadline = start + timeout
    queue = broker.response_queue(broker.conn.default_channel)
    expected = set(ids)
    while len(times) < count and time.monotonic() < deadline:
        message = queue.get(no_ack=True)
        if message is None:
            if on_tick is not None:
                on_tick()
            time.sleep(0.1)
            continue
        response = json.loads(message.body)
        task_id = response.get("id")
        answers[task_id] += 1
        if task_id not in expected:
            wrong.append(response)
            continue
        times.setdefault(task_id, time.monotonic() - start)
        if not _right(response, task_id, task_id in failing):
            wrong.append(response)
        elif answers[task_id] == 1:
            runs = len(response.get("attempts") or [response])
            attempts, retried = attempts + runs, retried + (runs > 1)
    makespan = max(times.values(), default=time.monotonic() - start)
    return BurstResult(
        sent=count,
        answered=len(times),
        wrong=wrong,
        duplicates=sum(n - 1 for n in answers.values() if n > 1),
        lost=sorted(expected - times.keys()),
        makespan=makespan,
        first_publish=start,
        answer_times=times,
        attempts=attempts,
        retried=retried,
    )


def submit_seconds(worker: Worker) -> list[float]:
    """How long each `dispatcher.submit` ran, from the worker's own log lines."""
    pattern = re.compile(r"Task dispatcher\.submit\[[^\]]+\] succeeded in ([0-9.]+)s")
    return [float(m[1]) for m in pattern.finditer(worker.log())]


def task_queue_depth(broker: Broker) -> int:
    """Task messages ready in the instance's task queue."""
    channel = broker.conn.default_channel
    _, ready, _ = channel.queue_declare(broker.task_queue.name, passive=True)
    return int(ready)


def node_slots(cpu_request: str = "100m") -> int:
    """How many pods of `cpu_request` the node's allocatable cpu holds (and at most its pods)."""
    node = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"][0]
    allocatable = node["status"]["allocatable"]
    cpu = allocatable["cpu"]
    milli = int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)
    request = int(cpu_request[:-1]) if cpu_request.endswith("m") else int(float(cpu_request) * 1000)
    return min(milli // request, int(allocatable["pods"]))


def ideal_makespan(count: int, slots: int, seconds: float, overhead: float) -> float:
    """The least time any dispatcher needs on this node: ceil(count / slots) waves of `slots`
    tasks back to back, each as long as the task itself, plus once the overhead of one task
    alone (publish, Job, pod start, logs, response), as if pod start and answer cost nothing
    between waves."""
    return math.ceil(count / slots) * seconds + overhead


def running_pods(instance_name: str) -> int:
    """Pods of one installation whose phase is Running."""
    selector = f"job-dispatcher.io/instance={instance_name}"
    out = kubectl("-n", "dispatcher", "get", "pods", "-l", selector, "-o", "json").stdout
    return sum(1 for pod in json.loads(out)["items"] if pod["status"].get("phase") == "Running")


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    """Poll `condition` every half second; TimeoutError when it is still false at `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:g} s")
        time.sleep(0.5)
