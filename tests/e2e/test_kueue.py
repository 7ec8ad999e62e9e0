"""Kueue decides when each task runs: a real Kueue manager (stack/kueue.sh) against the local
cluster, with exactly the objects docs/kueue.md tells a cluster administrator to create — a
ClusterQueue that runs three tasks of the default request at a time, first come first served,
where a higher priority class preempts a lower one."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.burst import run_burst
from harness.stack import REPO, Broker, Instance, kubectl, running, stack_env

pytestmark = pytest.mark.cluster
DOC = REPO / "docs" / "kueue.md"
NAMESPACE = "dispatcher"  # the tests' Job namespace; the doc's is dispatcher-jobs
QUOTA_TASKS = 3  # the doc's ClusterQueue: 300m of cpu, 100m per task


def doc_objects() -> list[dict[str, Any]]:
    """The objects of docs/kueue.md's administrator block, in the tests' namespace."""
    match = re.search(r"<!-- kueue-objects -->\n```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, "docs/kueue.md lost its kueue-objects block"
    objects = [doc for doc in yaml.safe_load_all(match[1]) if doc]
    for obj in objects:
        if "namespace" in obj["metadata"]:
            obj["metadata"]["namespace"] = NAMESPACE
    return objects


def stack_script(*args: str) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "stack" / "kueue.sh"), *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def kueue(local_stack: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    """Kueue running, the doc's queue objects applied; all removed afterwards."""
    stack_script("up")
    objects = doc_objects()
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        yield objects
    finally:
        kubectl("-n", NAMESPACE, "delete", "jobs", "-l", "kueue.x-k8s.io/queue-name",
                "--wait=true", "--timeout=60s", check=False)  # fmt: skip
        kubectl("delete", "--wait=true", "--timeout=60s", "--ignore-not-found", "-f", "-",
                input=yaml.safe_dump_all(objects), check=False)  # fmt: skip
        stack_script("down")


def installation(log_dir: Path, **settings: str) -> Any:
    """A running worker whose Jobs wait in the doc's LocalQueue."""
    name = "k" + uuid.uuid4().hex[:8]
    extra = {"KUEUE_LOCAL_QUEUE": "dispatcher", "MAX_ACTIVE_JOBS": "0", **settings}
    return running(Instance(name=name, extra=extra), log_dir)


def task(task_id: str, script: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "image": stack_env()["TEST_IMAGE"],
        "volume_mount_path": "/work",
        "cmd": ["/bin/sh", "-c", script],
        **fields,
    }


def jobs_of(broker: Broker) -> list[dict[str, Any]]:
    selector = f"job-dispatcher.io/instance={broker.instance.name}"
    out = kubectl("-n", NAMESPACE, "get", "jobs", "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def workloads_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kueue's Workloads of these Jobs."""
    out = kubectl("-n", NAMESPACE, "get", "workloads", "-o", "json").stdout
    uids = {job["metadata"]["uid"] for job in jobs}
    return [
        w
        for w in json.loads(out)["items"]
        if any(o["uid"] in uids for o in w["metadata"].get("ownerReferences") or ())
    ]


def admitted(workload: dict[str, Any]) -> float:
    """When Kueue admitted the Workload (its QuotaReserved condition turned true)."""
    (reserved,) = [
        c for c in workload["status"]["conditions"]
        if c["type"] == "QuotaReserved" and c["status"] == "True"
    ]  # fmt: skip
    return seconds(reserved["lastTransitionTime"])


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_a_small_cluster_queue_admits_a_burst_in_order_and_every_task_is_answered(
    kueue: list[dict[str, Any]], log_dir: Path
) -> None:
    """30 tasks (more than the node's 20 pods at once) through a quota of 3: each waits
    suspended for far longer than its queue timeout and is answered once, correctly; Kueue
    admitted them first come first served and never ran more than its quota at once."""
    with installation(log_dir, QUEUE_TIMEOUT_SECONDS="5", IMAGE_PULL_GRACE_SECONDS="5") as (
        broker,
        worker,
    ):
        suspended_seen = 0

        def sample() -> None:
            nonlocal suspended_seen
            waiting = [j for j in jobs_of(broker) if j["spec"].get("suspend")]
            suspended_seen = max(suspended_seen, len(waiting))

        result = run_burst(broker, 30, 2, timeout=400, on_tick=sample)
        jobs = jobs_of(broker)  # answered Jobs stay for the idempotency window
        workloads = workloads_of(jobs)

    assert (result.answered, result.wrong, result.duplicates) == (30, [], 0), result.summary()
    assert suspended_seen > 20  # most of the burst waited in Kueue, not in the task queue
    assert "queue timeout" not in worker.log()
    assert len(jobs) == len(workloads) == 30
    admissions = [(seconds(w["metadata"]["creationTimestamp"]), admitted(w)) for w in workloads]
    for queued_a, admitted_a in admissions:  # first queued, first admitted (to the second)
        assert all(admitted_a <= b for queued_b, b in admissions if queued_a < queued_b)
    runs = [
        (seconds(j["status"]["startTime"]), seconds(j["status"]["completionTime"])) for j in jobs
    ]
    for start, _ in runs:  # never more at once than the quota allows
        assert sum(1 for began, ended in runs if began <= start < ended) <= QUOTA_TASKS


def test_a_preempted_task_is_run_again_and_answered_not_failed(
    kueue: list[dict[str, Any]], log_dir: Path
) -> None:
    """Three low-priority tasks fill the quota; a high-priority one preempts one of them, which
    Kueue suspends (its pod is removed) and admits again later: it runs a second time and its
    answer is that run's, exit 0. The high one does not wait for the low ones to end."""
    low_script = (
        "echo run >> /work/$TASK_ID.runs; sleep 20; echo runs=$(wc -l < /work/$TASK_ID.runs)"
    )
    prefix = "p" + uuid.uuid4().hex[:6]
    with (
        installation(log_dir, KUEUE_PRIORITY_CLASS="batch-low") as (low, low_worker),
        installation(log_dir, KUEUE_PRIORITY_CLASS="batch-high") as (high, _),
    ):
        low_ids = [f"{prefix}-low-{i}" for i in range(QUOTA_TASKS)]
        for task_id in low_ids:
            low.publish(task(task_id, low_script))
        deadline = time.monotonic() + 90
        while sum(1 for j in jobs_of(low) if (j.get("status") or {}).get("ready")) < QUOTA_TASKS:
            assert time.monotonic() < deadline, "the low-priority tasks never all ran"
            time.sleep(0.5)
        high.publish(task(f"{prefix}-high", "echo high"))

        high_answer = high.response(timeout=120)
        low_answers = {r["id"]: r for r in map(json.loads, (m.body for m in low.responses(3, 180)))}
        evictions = low_worker.log().count("Kueue evicted Job")

    assert high_answer == {"id": f"{prefix}-high", "output": "high\n", "exit": 0}
    assert set(low_answers) == set(low_ids)
    assert all(a["exit"] == 0 and "error" not in a for a in low_answers.values()), low_answers
    outputs = sorted(a["output"] for a in low_answers.values())
    assert outputs == ["runs=1\n", "runs=1\n", "runs=2\n"]  # one ran twice, none failed
    assert evictions == 1


def test_a_task_kueue_can_never_admit_is_answered_with_kueues_reason(
    kueue: list[dict[str, Any]], log_dir: Path
) -> None:
    """More cpu than the ClusterQueue could ever give, and a LocalQueue that does not exist:
    each task is answered with Kueue's own words after the grace period, and its Job removed."""
    too_big = task("t-" + uuid.uuid4().hex[:10], "echo never", resources={"cpu": "1"})
    lost = task("t-" + uuid.uuid4().hex[:10], "echo never")
    with (
        installation(log_dir, IMAGE_PULL_GRACE_SECONDS="2") as (broker, _),
        installation(log_dir, IMAGE_PULL_GRACE_SECONDS="2", KUEUE_LOCAL_QUEUE="no-such-queue")
        as (elsewhere, elsewhere_worker),
    ):  # fmt: skip
        broker.publish(too_big)
        elsewhere.publish(lost)
        answer = broker.response(timeout=90)
        lost_answer = elsewhere.response(timeout=90)
        remaining = jobs_of(broker) + jobs_of(elsewhere)

    assert answer == {
        "id": too_big["id"],
        "error": "Kueue cannot admit the task: couldn't assign flavors to pod set main: "
        "insufficient quota for cpu in flavor default-flavor, previously considered podsets "
        "requests (0) + current podset request (1) > maximum capacity (300m)",
    }
    assert lost_answer == {
        "id": lost["id"],
        "error": "Kueue cannot admit the task: LocalQueue no-such-queue doesn't exist",
    }
    assert remaining == []
    assert (
        "KUEUE_LOCAL_QUEUE: LocalQueue 'no-such-queue' does not exist in namespace 'dispatcher'"
        in elsewhere_worker.log()
    )
