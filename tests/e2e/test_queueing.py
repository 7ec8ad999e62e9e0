"""A full cluster queues work, it does not fail it: bursts, MAX_ACTIVE_JOBS, quotas, timeouts.

Every test runs real pods on the single-node local cluster (2 cores: 20 pods of the default
100m request fit at once). The grace period for stuck pods is cut to 5 s so that a dispatcher
which took a busy cluster for a broken one would answer with errors long before the bursts end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness.burst import JobMonitor, run_burst, sleeper, task_queue_depth, wait_until
from harness.stack import Broker, Instance, Worker, kubectl, rabbitmqctl, run_cli, running

pytestmark = pytest.mark.cluster
Dispatcher = tuple[Broker, Worker]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT = free_port()


def metrics(port: int) -> dict[str, float]:
    """The worker's unlabelled Prometheus samples, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            samples[name] = float(value)
    return samples


@pytest.mark.settings(IMAGE_PULL_GRACE_SECONDS="5")
def test_a_burst_four_times_the_node_is_answered_exactly_once_each(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    with JobMonitor(broker.instance.env()) as jobs:
        result = run_burst(broker, 80, 3, timeout=420)

    assert (result.answered, result.wrong, result.duplicates) == (80, [], 0), result.summary()
    assert jobs.max_active > 20  # the cluster really was full: pods waited for room
    assert broker.no_more_responses(2) == []


@pytest.mark.settings(
    MAX_ACTIVE_JOBS="4", TASK_PREFETCH="4", IMAGE_PULL_GRACE_SECONDS="5", HEALTH_PORT=str(PORT)
)
def test_max_active_jobs_keeps_the_rest_waiting_in_the_task_queue(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    depths: list[int] = []
    scraped: list[dict[str, float]] = []

    def sample() -> None:
        depths.append(task_queue_depth(broker))
        scraped.append(metrics(PORT))

    with JobMonitor(broker.instance.env()) as jobs:
        result = run_burst(broker, 24, 2, timeout=300, on_tick=sample)

    assert (result.answered, result.wrong, result.duplicates) == (24, [], 0), result.summary()
    assert jobs.max_active <= 4  # seen from the cluster, at every moment
    assert len(jobs.created) == 24
    assert max(depths) >= 10  # the backlog waited in RabbitMQ: the worker held at most 4
    assert depths[-1] == 0
    # What operators see on /metrics meanwhile: the limit, the held tasks, the backlog.
    assert {sample["dispatcher_max_active_jobs"] for sample in scraped} == {4.0}
    assert max(sample["dispatcher_intake_paused"] for sample in scraped) == 1.0
    assert 1 <= max(sample["dispatcher_tasks_held"] for sample in scraped) <= 4
    assert max(sample["dispatcher_task_queue_messages"] for sample in scraped) >= 10
    assert max(sample["dispatcher_jobs_in_flight"] for sample in scraped) <= 4


@pytest.mark.settings(JOB_CPU_REQUEST="64", IMAGE_PULL_GRACE_SECONDS="5")
def test_a_task_no_node_can_ever_take_is_answered_after_the_grace_period(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = sleeper("t-" + uuid.uuid4().hex[:10], 0)
    broker.publish(sent)

    response = broker.response(timeout=90)

    assert response["id"] == sent["id"]
    assert response["error"].startswith(
        "the pod cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
    )
    assert "Preemption is not helpful" in response["error"]
    assert kubectl("-n", "dispatcher", "get", "job", sent["id"], check=False).returncode != 0


@pytest.mark.settings(
    JOB_CPU_REQUEST="1200m", QUEUE_TIMEOUT_SECONDS="15", IMAGE_PULL_GRACE_SECONDS="5"
)
def test_a_task_that_waits_past_its_queue_timeout_is_answered_and_the_other_runs(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    first, second = (sleeper("t-" + uuid.uuid4().hex[:10], s) for s in (45, 0))
    broker.publish(first)  # takes 1.2 of the node's 2 cores for 45 s
    time.sleep(3)
    broker.publish(second)  # fits the node, but not beside the first

    timed_out = broker.response(timeout=60)
    finished = broker.response(timeout=90)

    assert timed_out["id"] == second["id"]
    assert timed_out["error"].startswith(
        "the task waited 15 s for room in the cluster and never started: "
        "0/1 nodes are available: 1 Insufficient cpu."
    )
    assert finished == {"id": first["id"], "output": f"{first['id']}\n", "exit": 0}


# --- a namespace with a ResourceQuota ------------------------------------------------------


@dataclass(frozen=True)
class QuotaNamespace:
    name: str


@pytest.fixture
def quota_namespace(tmp_path: Path) -> Iterator[QuotaNamespace]:
    """A namespace of its own, with the claim, the service account, and room for 2 pods."""
    name = "dq-" + uuid.uuid4().hex[:8]
    tmp_path.chmod(0o777)
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{name}-pv"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "manual",
                "claimRef": {"namespace": name, "name": "worker-pv-claim"},
                "hostPath": {"path": str(tmp_path), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "worker-pv-claim", "namespace": name},
            "spec": {
                "storageClassName": "manual",
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeName": f"{name}-pv",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "job-internal", "namespace": name},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "tasks", "namespace": name},
            "spec": {"hard": {"pods": "2"}},
        },
    ]
    document = {"apiVersion": "v1", "kind": "List", "items": objects}
    kubectl("apply", "-f", "-", input=json.dumps(document))
    try:
        yield QuotaNamespace(name)
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)
        kubectl("delete", "pv", f"{name}-pv", "--wait=false", check=False)


def test_a_namespace_whose_quota_is_used_up_queues_the_tasks_instead_of_failing_them(
    quota_namespace: QuotaNamespace, log_dir: Path
) -> None:
    instance = Instance(
        extra={"JOB_NAMESPACE": quota_namespace.name, "IMAGE_PULL_GRACE_SECONDS": "5"}
    )
    with running(instance, log_dir) as (broker, _):
        result = run_burst(broker, 8, 4, timeout=400)

    assert (result.answered, result.wrong, result.duplicates) == (8, [], 0), result.summary()
    events = kubectl(
        "-n", quota_namespace.name, "get", "events", "--field-selector", "reason=FailedCreate"
    ).stdout
    assert "exceeded quota: tasks" in events  # the quota really turned pods away meanwhile


@pytest.mark.settings(MAX_ACTIVE_JOBS="2", TASK_PREFETCH="4", IMAGE_PULL_GRACE_SECONDS="5")
def test_a_cancel_overtakes_the_backlog_and_its_task_is_answered_cancelled_without_a_job(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    run = uuid.uuid4().hex[:6]
    backlog = [sleeper(f"b-{run}-{n}", 6) for n in range(8)]
    target = sleeper(f"target-{run}", 1)
    with JobMonitor(broker.instance.env()) as jobs:
        for sent in [*backlog, target]:
            broker.publish(sent)
        wait_until(lambda: len(jobs.created) >= 2, 60)  # the limit is reached: the rest wait

        started = time.monotonic()
        cancelled = run_cli(broker, "cancel", target["id"], timeout=60)
        answered_in = time.monotonic() - started

        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        answer = json.loads(cancelled.stdout)
        assert answer["id"] == target["id"]
        assert answer["error"].startswith(f"cancelled: task '{target['id']}' had no Job yet")
        assert answered_in < 5, f"the cancel waited {answered_in:.1f} s behind the backlog"
        assert task_queue_depth(broker) > 0  # its task still waits in RabbitMQ, not the worker

        answers = {r["id"]: r for r in (json.loads(m.body) for m in broker.responses(9, 240))}
    assert answers[target["id"]] == {"id": target["id"], "error": "cancelled"}
    assert target["id"] not in jobs.created  # no Job was ever created for it
    assert all(answers[t["id"]]["exit"] == 0 for t in backlog)
    assert broker.no_more_responses(2) == []


def test_a_queue_of_another_type_stops_start_up_with_one_line(instance: Instance) -> None:
    env = instance.env()
    broker = Broker(Instance(instance.name, {**instance.extra, "QUEUE_TYPE": "classic"}))
    try:  # the task queue now exists as a classic queue; the worker has QUEUE_TYPE's default
        result = subprocess.run(
            [sys.executable, "-m", "dispatcher.cli", "worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        broker.close()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1] == (
        f"dispatcher: QUEUE_TYPE: queue '{env['TASK_QUEUE_NAME']}' exists with x-queue-type "
        "'classic', but the dispatcher declares it with 'quorum' (QUEUE_TYPE=quorum): set "
        "QUEUE_TYPE=classic, or move its messages elsewhere and delete it so it is declared anew"
    )


def test_a_backlog_under_a_low_delivery_limit_is_answered_once_each_none_dropped(
    instance: Instance, log_dir: Path
) -> None:
    """An operator's policy lets the task queue deliver a message 3 times at most (RabbitMQ 4
    drops it after that). Waiting for room spends no delivery, so none is dropped."""
    instance.extra.update(MAX_ACTIVE_JOBS="2", IMAGE_PULL_GRACE_SECONDS="5")
    queue, policy = instance.env()["TASK_QUEUE_NAME"], f"{instance.name}-limit"
    rabbitmqctl("set_policy", policy, f"^{queue}$", '{"delivery-limit": 3}', "--apply-to", "queues")
    try:
        with running(instance, log_dir) as (broker, _):
            result = run_burst(broker, 30, 1, timeout=300)
            extra = broker.no_more_responses(2)
    finally:
        rabbitmqctl("clear_policy", policy)

    assert (result.answered, result.wrong, result.duplicates) == (30, [], 0), result.summary()
    assert extra == []
