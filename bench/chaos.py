"""Fault scenarios on the local stack, each with at least 100 tasks in flight; one table.

    make chaos                                   # every scenario, writes docs/reliability.md
    python bench/chaos.py worker-sigkill rolling-update      # some, table on stdout only

For every scenario: tasks sent, answered, wrong (an answer that is not the task's own), duplicates
(a second answer to a task under another message_id: a second run), repeats (a second answer
under the same message_id: provably the same run's answer sent again), lost (never answered),
and the time from the end of the fault to the last answer. Each scenario is bounded in tasks
and time and talks only to the local broker and cluster.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from harness.burst import running_pods, sleeper, wait_until
from harness.proxy import Proxy
from harness.stack import (
    LOCAL,
    REPO,
    Broker,
    Instance,
    Worker,
    kubectl,
    memory_watermark,
    stack_env,
)
from kombu import Connection

from dispatcher.errors import InvalidTaskError
from dispatcher.kube.outcome import RESULT_DELETED_ERROR
from dispatcher.messages.task import parse_task

LOG_DIR = LOCAL / "logs" / "chaos"
STACK_RUN = "/run/dispatcher-stack"  # where the local stack records its PIDs (stack/lib.sh)
DELETED = "the Job was deleted before it finished"
Expect = Callable[[dict[str, Any]], bool]


# --- tasks and what each must answer -----------------------------------------------------------


def its_own_output(task_id: str) -> Expect:
    return lambda body: body == {"id": task_id, "output": f"{task_id}\n", "exit": 0}


def burst(count: int, seconds: float = 2) -> dict[str, dict[str, Any]]:
    """`count` sleepers of `seconds`, by id."""
    prefix = "c" + uuid.uuid4().hex[:6]
    return {f"{prefix}-{i}": sleeper(f"{prefix}-{i}", seconds) for i in range(count)}


# --- collecting and judging answers --------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    body: dict[str, Any]
    message_id: str | None
    at: float


class Collector:
    """Reads the instance's response queue in a thread of its own, reconnecting when the broker
    goes away; `pause()` stops reading (the queue fills up) until `resume()`."""

    def __init__(self, instance: Instance) -> None:
        self._url = instance.broker_url
        self._queue = instance.env()["RESPONSE_QUEUE_NAME"]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reading = threading.Event()
        self._reading.set()
        self.answers: list[Answer] = []
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def pause(self) -> None:
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def count(self, ids: set[str] | None = None) -> int:
        with self._lock:
            return len(
                {a.body.get("id") for a in self.answers if ids is None or a.body.get("id") in ids}
            )

    def wait_for(self, ids: set[str], timeout: float, *, at_least: int | None = None) -> None:
        """Until `at_least` (default: all) of `ids` are answered, or the timeout."""
        wanted = len(ids) if at_least is None else at_least
        deadline = time.monotonic() + timeout
        while self.count(ids) < wanted and time.monotonic() < deadline:
            time.sleep(0.2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with Connection(self._url) as conn:
                    channel = conn.channel()
                    while not self._stop.is_set():
                        if not self._reading.wait(0.2):
                            continue
                        # Acked once recorded: an answer in flight when a broker node goes
                        # away is delivered again (then counted as a repeat), never dropped.
                        message = channel.basic_get(queue=self._queue, no_ack=False)
                        if message is None:
                            time.sleep(0.05)
                            continue
                        self._record(message)
                        channel.basic_ack(message.delivery_tag)
            except Exception:  # the broker restarts in one scenario: connect again
                self._stop.wait(1.0)

    def _record(self, message: Any) -> None:
        try:
            body = json.loads(message.body)
        except ValueError:
            body = {"undecodable": repr(message.body[:80])}
        properties = message.properties or {}
        answer = Answer(body, properties.get("message_id"), time.monotonic())
        with self._lock:
            self.answers.append(answer)


@dataclass
class Row:
    scenario: str
    sent: int
    answered: int
    wrong: int
    duplicates: int
    repeats: int
    lost: int
    recovery: float | None
    notes: list[str] = field(default_factory=list)


def judge(
    name: str,
    expected: dict[str, Expect],
    answers: list[Answer],
    fault_end: float | None,
    *,
    repeats_expected: bool = False,
) -> Row:
    """One row: each expected task's answers against what it must say."""
    by_id: dict[str, list[Answer]] = {}
    stray = 0
    for answer in answers:
        task_id = answer.body.get("id")
        if task_id in expected:
            by_id.setdefault(task_id, []).append(answer)
        else:
            stray += 1
    wrong = stray + sum(
        1 for task_id, got in by_id.items() for a in got if not expected[task_id](a.body)
    )
    duplicates = repeats = 0
    for got in by_id.values():
        first = got[0].message_id
        for extra in got[1:]:
            if extra.message_id == first:
                repeats += 1
            else:
                duplicates += 1
    last = max((a.at for got in by_id.values() for a in got), default=None)
    recovery = None if fault_end is None or last is None else max(0.0, last - fault_end)
    row = Row(
        name,
        len(expected),
        len(by_id),
        wrong,
        duplicates,
        repeats,
        len(expected) - len(by_id),
        recovery,
    )
    if stray:
        row.notes.append(f"{stray} answers to no task of the scenario")
    wrong_bodies = [
        a.body for got in by_id.values() for a in got if not expected[a.body["id"]](a.body)
    ]
    if wrong_bodies:
        row.notes.append(f"wrong, for example: `{json.dumps(wrong_bodies[0])[:200]}`")
    if repeats and not repeats_expected:
        row.notes.append("repeats: the same run's answer sent again (same message_id)")
    return row


# --- the stack as scenarios drive it -----------------------------------------------------------


def rabbitmqctl(*args: str, node: int = 1) -> str:
    command = ["bash", "stack/rabbitmqctl.sh", str(node), "-q", *args]
    done = subprocess.run(command, cwd=REPO, check=True, timeout=120, capture_output=True)
    return done.stdout.decode()


def broker_nodes() -> int:
    return int(stack_env().get("BROKER_NODES", "1"))


def needs_three_nodes(scenario: str) -> None:
    if broker_nodes() != 3:
        raise SystemExit(f"{scenario}: needs a three-node broker: BROKER_NODES=3 make up")


def leader_of(queue: str) -> int:
    """Which broker node (1, 2 or 3) leads the quorum queue `queue`."""
    for line in rabbitmqctl("list_queues", "--no-table-headers", "name", "leader").splitlines():
        name, _, leader = line.strip().partition("\t")
        if name == queue:
            node = leader.strip().split("@")[0]
            return int(node.rpartition("-")[2]) if "-" in node else 1
    raise AssertionError(f"queue {queue} has no leader")


def component(node: int) -> str:
    """Broker node N as the stack names it: its PID file and its log directory."""
    return "rabbitmq" if node == 1 else f"rabbitmq-{node}"


def node_pid(node: int) -> int:
    return int(Path(STACK_RUN, "pids", f"{component(node)}.pid").read_text())


def broker_node(action: str, node: int) -> int:
    """stack/broker-node.sh: stop, start or restart one node of the stack's broker; how many
    boots it refused before one succeeded (see start_app)."""
    command = ["bash", "stack/broker-node.sh", action, str(node)]
    done = subprocess.run(command, cwd=REPO, check=True, timeout=600, capture_output=True)
    return done.stderr.decode().count("refused to boot")


@contextmanager
def installation(
    extra: dict[str, str] | None = None, workers: int = 1
) -> Iterator[tuple[Instance, Broker, list[Worker]]]:
    instance = Instance(extra={"IMAGE_PULL_GRACE_SECONDS": "30", **(extra or {})})
    broker = Broker(instance)
    started: list[Worker] = []
    try:
        for _ in range(workers):
            worker = Worker(instance, LOG_DIR)
            worker.start(broker)
            started.append(worker)
        yield instance, broker, started
    finally:
        for worker in started:
            worker.stop()
        with suppress(Exception):
            Broker(instance).close()


def publish_all(broker: Broker, tasks: dict[str, dict[str, Any]], **properties: Any) -> None:
    for document in tasks.values():
        broker.publish(document, **properties)


def jobs_of(instance: Instance) -> list[dict[str, Any]]:
    selector = f"job-dispatcher.io/instance={instance.name}"
    out = kubectl("-n", "dispatcher", "get", "jobs", "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def ended(job: dict[str, Any]) -> bool:
    conditions = job.get("status", {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


# --- the scenarios -------------------------------------------------------------------------------

COUNT = 120
TIMEOUT = 600.0


def worker_sigkill() -> Row:
    """The only worker is killed with SIGKILL mid-burst and started again 5 s later."""
    tasks = burst(COUNT)
    with installation() as (instance, broker, (worker,)), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=30)
        worker.kill(signal.SIGKILL)
        time.sleep(5)
        restarted = Worker(instance, LOG_DIR)
        restarted.start(broker)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
        restarted.stop()
    return judge(
        "worker killed (SIGKILL) mid-burst, restarted",
        expect_own(tasks),
        answers.answers,
        fault_end,
    )


def broker_restart() -> Row:
    """RabbitMQ stops and starts again mid-burst (its queues are durable): every node, with
    BROKER_NODES=3."""
    tasks = burst(COUNT)
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=30)
        for node in range(broker_nodes(), 0, -1):  # node 1 last: it starts first
            rabbitmqctl("stop_app", node=node)
        time.sleep(5)
        attempts = {node: start_app(node) for node in range(1, broker_nodes() + 1)}
        for node in range(1, broker_nodes() + 1):
            rabbitmqctl("await_startup", node=node)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
    row = judge("RabbitMQ restarted mid-burst", expect_own(tasks), answers.answers, fault_end)
    row.notes.extend(refused_boots({node: tries - 1 for node, tries in attempts.items()}))
    return row


def start_app(node: int, attempts: int = 6) -> int:
    """Start the broker application on `node`; how many attempts it took. With
    `transient_nonexcl_queues` denied, RabbitMQ 4.0.5 checks on a node rejoining its cluster that
    no such queue exists before its (RAM) queue table has been copied from the running nodes;
    the check fails with `no_exists`, and so does the boot (`failed_to_deny_deprecated_features`).
    A later attempt finds the table."""
    for attempt in range(1, attempts + 1):
        try:
            rabbitmqctl("start_app", node=node)
            return attempt
        except subprocess.CalledProcessError:
            logs = (LOCAL / "logs" / component(node)).glob("*.log")
            raced = any(
                "failed_to_deny_deprecated_features" in log.read_text(errors="replace")[-100_000:]
                for log in logs
            )
            if not raced or attempt == attempts:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def leader_fault(name: str, scenario: str, fault: Callable[[int], None]) -> Row:
    """Three broker nodes: mid-burst, `fault(node)` strikes the node leading the task queue."""
    needs_three_nodes(name)
    tasks = burst(COUNT)
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=30)
        leader = leader_of(instance.env()["TASK_QUEUE_NAME"])
        fault(leader)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
    return judge(scenario.format(node=leader), expect_own(tasks), answers.answers, fault_end)


def broker_leader_killed() -> Row:
    """The node leading the task queue is killed (SIGKILL) mid-burst and stays down until every
    task is answered; then it is started again."""
    killed: list[int] = []

    def kill(node: int) -> None:
        os.kill(node_pid(node), signal.SIGKILL)
        killed.append(node)

    try:
        return leader_fault(
            "broker-leader-killed",
            "broker node leading the task queue (node {node} of 3) killed (SIGKILL) mid-burst",
            kill,
        )
    finally:
        for node in killed:  # forget the dead process, then bring the node back
            broker_node("stop", node)
            broker_node("start", node)


def broker_node_frozen() -> Row:
    """The node leading the task queue is frozen (SIGSTOP) for 30 s mid-burst."""

    def freeze(node: int) -> None:
        pid = node_pid(node)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            os.kill(pid, signal.SIGCONT)

    return leader_fault(
        "broker-node-frozen",
        "broker node leading the task queue (node {node} of 3) frozen (SIGSTOP) 30 s",
        freeze,
    )


def broker_rolling_restart() -> Row:
    """Three broker nodes restarted one after the other mid-burst (each stopped, started, and
    back in the cluster before the next)."""
    needs_three_nodes("broker-rolling-restart")
    tasks = burst(COUNT)
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=20)
        refused = {}
        for node in (3, 2, 1):
            refused[node] = broker_node("restart", node)
            time.sleep(5)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
    row = judge(
        "rolling restart of all three broker nodes mid-burst",
        expect_own(tasks),
        answers.answers,
        fault_end,
    )
    row.notes.extend(refused_boots(refused))
    return row


def refused_boots(refused: dict[int, int]) -> list[str]:
    """Notes on the boots of broker nodes RabbitMQ refused before one succeeded."""
    return [
        f"node {node} booted at attempt {count + 1}: RabbitMQ 4.0.5 refuses to boot a node"
        " rejoining its cluster (failed_to_deny_deprecated_features) when it checks for"
        " transient queues before its queue table is copied"
        for node, count in refused.items()
        if count
    ]


def memory_alarm() -> Row:
    """RabbitMQ raises a memory alarm mid-burst (its watermark at one byte) for 30 s: it blocks
    every connection that publishes, the dispatcher's own included, then lifts it."""
    tasks = burst(COUNT)
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=30)
        before = memory_watermark()
        rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
        try:
            time.sleep(30)
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", *before)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
    return judge(
        "RabbitMQ memory alarm for 30 s mid-burst (publishers blocked)",
        expect_own(tasks),
        answers.answers,
        fault_end,
    )


def api_unreachable() -> Row:
    """The worker's connections to the API server are cut, and refused, for 30 s."""
    tasks = burst(COUNT)
    proxy = Proxy(("127.0.0.1", 6443))
    kubeconfig = LOG_DIR / f"kubeconfig-{uuid.uuid4().hex[:6]}"
    original = Path(stack_env()["KUBECONFIG"]).read_text()
    kubeconfig.write_text(
        original.replace("https://127.0.0.1:6443", f"https://127.0.0.1:{proxy.port}")
    )
    try:
        with (
            installation({"KUBECONFIG": str(kubeconfig)}) as (instance, broker, _),
            Collector(instance) as answers,
        ):
            publish_all(broker, tasks)
            answers.wait_for(set(tasks), 120, at_least=30)
            proxy.cut()
            time.sleep(30)
            proxy.restore()
            fault_end = time.monotonic()
            answers.wait_for(set(tasks), TIMEOUT)
            time.sleep(3)
    finally:
        proxy.close()
        kubeconfig.unlink(missing_ok=True)
    return judge(
        "the worker cut off from the API server (connections refused) for 30 s",
        expect_own(tasks),
        answers.answers,
        fault_end,
    )


def api_server_stopped() -> Row:
    """The kube-apiserver process itself is stopped (SIGSTOP to its recorded process group) for
    30 s: every client's requests hang, the Job controller's too; then it continues."""
    tasks = burst(COUNT)
    pid = int(Path(f"{STACK_RUN}/pids/kube-apiserver.pid").read_text())
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=30)
        os.killpg(pid, signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            os.killpg(pid, signal.SIGCONT)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
    return judge(
        "kube-apiserver stopped (SIGSTOP) for 30 s",
        expect_own(tasks),
        answers.answers,
        fault_end,
    )


def delivered_twice() -> Row:
    """Every task message arrives twice (a producer that retries at once)."""
    tasks = burst(COUNT)
    with installation() as (instance, broker, _), Collector(instance) as answers:
        for document in tasks.values():
            broker.publish(document)
            broker.publish(document)
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(5)
    return judge("every task delivered twice", expect_own(tasks), answers.answers, None)


def replicas_one_killed() -> Row:
    """Three replicas share the burst; one is killed with SIGKILL and stays dead."""
    tasks = burst(150)
    with installation(workers=3) as (instance, broker, workers), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=40)
        workers[0].kill(signal.SIGKILL)
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
    return judge(
        "three replicas, one killed (SIGKILL)", expect_own(tasks), answers.answers, fault_end
    )


def rolling_update() -> Row:
    """A rolling update: a second replica starts, then the first is stopped (SIGTERM)."""
    tasks = burst(COUNT)
    with installation() as (instance, broker, (first,)), Collector(instance) as answers:
        publish_all(broker, tasks)
        answers.wait_for(set(tasks), 120, at_least=30)
        second = Worker(instance, LOG_DIR)
        second.start(broker)
        answers.wait_for(set(tasks), 120, at_least=60)
        first.stop()
        fault_end = time.monotonic()
        answers.wait_for(set(tasks), TIMEOUT)
        time.sleep(3)
        second.stop()
    return judge(
        "rolling update (two replicas for a while)", expect_own(tasks), answers.answers, fault_end
    )


def jobs_deleted_while_down() -> Row:
    """With no worker running: 20 ended, unanswered Jobs deleted by hand, 20 deleted by their TTL
    and 10 running Jobs deleted by hand; then the worker starts again."""
    short = burst(100, 1)
    prefix = "l" + uuid.uuid4().hex[:6]
    long = {f"{prefix}-{n}": sleeper(f"{prefix}-{n}", 600) for n in range(10)}
    with installation() as (instance, broker, (worker,)), Collector(instance) as answers:
        publish_all(broker, long)
        wait_until(lambda: running_pods(instance.name) >= len(long), 180)
        publish_all(broker, short)
        wait_until(lambda: len(jobs_of(instance)) >= len(long) + len(short), 180)
        worker.kill(signal.SIGKILL)

        def unanswered_short() -> list[dict[str, Any]]:
            return [
                job
                for job in jobs_of(instance)
                if job["metadata"]["name"] in short
                and "job-dispatcher.io/responded" not in (job["metadata"].get("annotations") or {})
            ]

        wait_until(lambda: all(ended(job) for job in unanswered_short()), 300)
        names = [job["metadata"]["name"] for job in unanswered_short()]
        by_hand, by_ttl = names[:20], names[20:40]
        kubectl("-n", "dispatcher", "delete", "job", "--wait=false", *by_hand, *long)
        ttl_zero = '{"spec":{"ttlSecondsAfterFinished":0}}'
        for name in by_ttl:
            kubectl("-n", "dispatcher", "patch", "job", name, "--type=merge", "-p", ttl_zero)
        time.sleep(5)  # the TTL controller deletes them: our finalizer holds them
        restarted = Worker(instance, LOG_DIR)
        restarted.start(broker)
        fault_end = time.monotonic()
        expected = (
            expect_own(short)
            | {name: its_own_output_or_lost(name) for name in by_ttl}
            | {task_id: was_deleted for task_id in long}
        )
        answers.wait_for(set(expected), TIMEOUT)
        time.sleep(3)
        restarted.stop()
    lost = sum(1 for a in answers.answers if a.body.get("error") == RESULT_DELETED_ERROR)
    row = judge(
        "Jobs deleted by hand and by TTL while no worker ran",
        expected,
        answers.answers,
        fault_end,
    )
    row.notes.append(
        f"{len(by_hand)} ended Jobs deleted by hand (answered with their real result), "
        f"{len(by_ttl)} by their TTL ({lost} of them answered that their result was lost with "
        f"their pods, which the TTL controller deletes first), {len(long)} running Jobs deleted "
        f"(answered `{DELETED} (…)`)"
    )
    return row


def its_own_output_or_lost(task_id: str) -> Expect:
    """The TTL controller deletes a Job's pods first: its output may be gone with them."""
    own = its_own_output(task_id)
    return lambda body: own(body) or body == {"id": task_id, "error": RESULT_DELETED_ERROR}


def was_deleted(body: dict[str, Any]) -> bool:
    return set(body) == {"id", "error"} and str(body["error"]).startswith(DELETED)


def resent_after_answer() -> Row:
    """Every task sent again after its answer: within the idempotency window (the same answer,
    no second run) and, in a second installation with a 2 s window, after it (a new run)."""
    inside, outside = burst(60), burst(60)
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, inside)
        answers.wait_for(set(inside), TIMEOUT)
        publish_all(broker, inside, correlation_id="retry")
        wait_until(lambda: len(answers.answers) >= 2 * len(inside), 120)
        time.sleep(3)
        first = judge("", expect_own(inside), answers.answers, None, repeats_expected=True)
    with (
        installation({"IDEMPOTENCY_WINDOW_SECONDS": "2"}) as (instance, broker, _),
        Collector(instance) as answers,
    ):
        publish_all(broker, outside)
        answers.wait_for(set(outside), TIMEOUT)
        wait_until(lambda: not jobs_of(instance), 120)
        round_one = list(answers.answers)
        publish_all(broker, outside)
        wait_until(lambda: len(answers.answers) >= 2 * len(outside), TIMEOUT)
        time.sleep(3)
        round_two = answers.answers[len(round_one) :]
    second = judge("", expect_own(outside), round_one, None)
    third = judge("", expect_own(outside), round_two, None)
    row = Row(
        "the same task re-sent after its answer, inside and after the window",
        first.sent + second.sent + third.sent,
        first.answered + second.answered + third.answered,
        first.wrong + second.wrong + third.wrong,
        first.duplicates + second.duplicates + third.duplicates,
        first.repeats + second.repeats + third.repeats,
        first.lost + second.lost + third.lost,
        None,
    )
    row.notes.append(
        f"{len(inside)} re-sent within the window: {first.repeats} answered again with the same "
        f"message_id, {first.duplicates} run again; {len(outside)} re-sent after it: run anew"
    )
    return row


def responses_queue_full() -> Row:
    """The response queue holds at most 20 messages and refuses more (reject-publish) while no
    one reads it; then its consumer comes back."""
    tasks = burst(COUNT)
    with installation() as (instance, broker, (worker,)), Collector(instance) as answers:
        queue = instance.env()["RESPONSE_QUEUE_NAME"]
        policy = f"{instance.name}-full"
        limits = """{"max-length":20,"overflow":"reject-publish"}"""
        rabbitmqctl("set_policy", policy, f"^{queue}$", limits, "--apply-to", "queues")
        try:
            answers.pause()
            publish_all(broker, tasks)
            wait_until(lambda: "broker error" in worker.log(), 300)  # publishes refused
            time.sleep(10)
            answers.resume()
            fault_end = time.monotonic()
            answers.wait_for(set(tasks), TIMEOUT)
            time.sleep(3)
        finally:
            rabbitmqctl("clear_policy", policy)
    return judge(
        "responses queue full (x-max-length 20, reject-publish)",
        expect_own(tasks),
        answers.answers,
        fault_end,
    )


def hostile_bodies() -> Row:
    """10,000 generated hostile bodies through the running consumer, next to 100 real tasks."""
    tasks = burst(100)
    bodies = list(hostile(10_000, random.Random(20261204)))
    with installation() as (instance, broker, _), Collector(instance) as answers:
        publish_all(broker, tasks)
        for body in bodies:
            broker.publish(body)
        deadline = time.monotonic() + TIMEOUT
        while len(answers.answers) < len(bodies) + len(tasks) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)
    real = [a for a in answers.answers if a.body.get("id") in tasks]
    errors = [a for a in answers.answers if a.body.get("id") not in tasks]
    row = judge("10,000 generated hostile bodies beside 100 tasks", expect_own(tasks), real, None)
    not_errors = [a for a in errors if set(a.body) - {"id", "error"} or "error" not in a.body]
    row.sent += len(bodies)
    row.answered += min(len(errors), len(bodies))
    row.lost += max(0, len(bodies) - len(errors))
    row.wrong += len(not_errors)
    row.notes.append(f"{len(errors)} error answers to {len(bodies)} hostile bodies")
    return row


def expect_own(tasks: dict[str, dict[str, Any]]) -> dict[str, Expect]:
    return {task_id: its_own_output(task_id) for task_id in tasks}


# --- hostile bodies ------------------------------------------------------------------------------


def hostile(count: int, rng: random.Random) -> Iterator[bytes]:
    """Bodies no valid task is among: broken JSON, wrong types, hostile values, deep nesting,
    oversized and non-UTF-8 messages, and valid tasks with one field made hostile."""
    image = stack_env()["TEST_IMAGE"]
    values: list[Any] = [
        None,
        True,
        0,
        -1,
        2**70,
        1.5,
        float("1e308"),
        "",
        " ",
        "\x00",
        "é" * 50,
        "../" * 30,
        "/etc/passwd",
        "$(reboot)",
        "a" * 5000,
        [],
        {},
        [None],
        {"$ne": 1},
        ["x"] * 300,
    ]
    fields = ["id", "image", "volume_mount_path", "working_dir", "args", "cmd"]
    made = 0
    while made < count:
        kind = rng.randrange(6)
        if kind == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind == 1:
            body = b"[" * rng.randrange(100, 3000) + b"]" * rng.randrange(0, 10)
        elif kind == 2:
            body = json.dumps(rng.choice(values)).encode()
        elif kind == 3:
            task: dict[str, Any] = {
                "id": f"h{made}",
                "image": image,
                "volume_mount_path": "/work",
                "args": ["true"],
            }
            task[rng.choice(fields)] = rng.choice(values)
            body = json.dumps(task).encode()
        elif kind == 4:
            body = json.dumps(
                {"id": f"h{made}", "pad": "x" * rng.randrange(65_000, 200_000)}
            ).encode()
        else:
            text = json.dumps({"id": f"h{made}", "image": image, "volume_mount_path": "/work"})
            cut = rng.randrange(1, len(text))
            body = text[:cut].encode()
        try:
            parse_task(body)
        except InvalidTaskError:
            made += 1
            yield body


# --- the table -----------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[], Row]] = {
    "worker-sigkill": worker_sigkill,
    "broker-restart": broker_restart,
    "memory-alarm": memory_alarm,
    "broker-leader-killed": broker_leader_killed,
    "broker-node-frozen": broker_node_frozen,
    "broker-rolling-restart": broker_rolling_restart,
    "api-unreachable": api_unreachable,
    "api-server-stopped": api_server_stopped,
    "delivered-twice": delivered_twice,
    "replicas-one-killed": replicas_one_killed,
    "rolling-update": rolling_update,
    "jobs-deleted-while-down": jobs_deleted_while_down,
    "resent-after-answer": resent_after_answer,
    "responses-queue-full": responses_queue_full,
    "hostile-bodies": hostile_bodies,
}


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | sent | answered | wrong | duplicates | repeats | lost | recovered in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = "—" if r.recovery is None else f"{r.recovery:.0f} s"
        lines.append(
            f"| {r.scenario} | {r.sent} | {r.answered} | {r.wrong} | {r.duplicates} | "
            f"{r.repeats} | {r.lost} | {recovery} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    write = "--write" in argv
    names = [a for a in argv if not a.startswith("--")] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}", file=sys.stderr)
        return 2
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        started = time.monotonic()
        row = SCENARIOS[name]()
        rows.append(row)
        print(f"{name}: {row} ({time.monotonic() - started:.0f} s)", flush=True)
    print(table(rows))
    if write:
        (REPO / "docs" / "reliability.md").write_text(document(rows))
    bad = [r for r in rows if r.wrong or r.duplicates or r.lost]
    return 1 if bad else 0


def document(rows: list[Row]) -> str:
    notes = "\n".join(f"- {r.scenario}: {'; '.join(r.notes)}." for r in rows if r.notes)
    return f"""# Reliability under faults

`make chaos` runs each scenario below on the local stack (a real three-node RabbitMQ 4 cluster,
quorum queues, real single-node Kubernetes, 2 cores) with at least 100 tasks in flight, and
writes this page. Last run:
{date.today():%B %Y}.

- **wrong**: an answer that is not the task's own output and exit code (or the expected error).
- **duplicates**: a second answer to a task under another `message_id`, i.e. a second run.
- **repeats**: a second answer under the same `message_id`: the same run's answer sent again,
  which a consumer drops by `message_id`.
- **lost**: a task never answered within the scenario's ten minutes.
- **recovered in**: from the end of the fault to the last answer.

{table(rows)}

Notes:

{notes}

Recovery times vary from run to run. A Job claimed by a worker that was killed mid-answer is
taken over only when the claim expires (`CLAIM_TTL`, two minutes), which is why a scenario that
kills a worker sometimes recovers in about 120 s instead of a few seconds. After a RabbitMQ
restart the worker's Celery connection has, in some runs, stayed half-open until the AMQP
heartbeat declared it dead (recoveries of 13 to 125 s were seen). RabbitMQ 4.0.5, denying
transient non-exclusive queues as 4.3 does, sometimes refuses to boot a node that rejoins running
ones (`failed_to_deny_deprecated_features`): the scenarios start it again and note each retry
([operations](operations.md#restarts-upgrades-scaling)). A repeat is the same run's answer
published again after a failure between publishing and marking the Job (at-least-once, same
`message_id`). During a memory alarm RabbitMQ stops reading from every connection that
publishes: the worker's answers and its internal tasks wait unsent and go out as the alarm lifts.
The broker runs as three nodes with quorum queues: when the node leading the task queue dies or
freezes, the other two elect a new leader, and a worker whose connection was on that node
reconnects to the next node of `AMQP_HOST`; the tasks it held unacknowledged are delivered
again (one delivery counted each).

How each scenario is staged is in [`bench/chaos.py`](../bench/chaos.py); the guarantees behind
the figures are in [architecture](architecture.md#why-nothing-is-lost).
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
