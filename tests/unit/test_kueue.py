"""Kueue: Jobs created suspended in a LocalQueue wait (never answered for waiting), are answered
only when Kueue can never admit them, and count as queued again when Kueue evicts them."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.core.finalize import Context, Finalized, finalize
from dispatcher.core.preflight import check_kueue
from dispatcher.core.reactor import Reactor
from dispatcher.core.request import FinalizeRequest
from dispatcher.errors import ConfigError, ForbiddenError, KubeError
from dispatcher.kube import kueue
from dispatcher.kube.conventions import KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL
from dispatcher.kube.jobspec import build_job
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import (
    NAMESPACE,
    SETTINGS,
    T0,
    T1,
    TASK,
    FakeKube,
    FakePublisher,
    KubeObject,
    condition,
    make_pod,
    terminated,
    workload_for,
)

KUEUE = Settings.from_env(
    {
        "JOB_NAMESPACE": NAMESPACE,
        "KUEUE_LOCAL_QUEUE": "team-a",
        "QUEUE_TIMEOUT_SECONDS": "60",
        "IMAGE_PULL_GRACE_SECONDS": "30",
    }
)
NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)  # two hours after T0
NEVER_FITS = (
    "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default, "
    "previously considered podsets requests (0) + current podset request (4) > maximum "
    "capacity (2)"
)
NEVER_FITS_BIG = (
    "insufficient quota for cpu in flavor big, previously considered podsets requests (0) + "
    "current podset request (4) > maximum capacity (3)"
)
USED_UP_BIG = "insufficient unused quota for cpu in flavor big, 3 more needed"
NO_MEMORY = "couldn't assign flavors to pod set main: resource memory unavailable in ClusterQueue"
USED_UP = (
    "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor "
    "default, 100m more needed"
)


def pending(message: str, reason: str = "Inadmissible") -> Any:
    return condition("QuotaReserved", "False", reason, message)


def suspended_job(kube: FakeKube, settings: Settings = KUEUE) -> KubeObject:
    """The Job submit creates with Kueue on: suspended, in the LocalQueue."""
    return kube.create_job(build_job(TASK, ReplyRoute(), settings))


# --- the Job ----------------------------------------------------------------------------------


def test_with_a_local_queue_the_job_is_created_suspended_with_its_queue_and_priority() -> None:
    settings = dataclasses.replace(KUEUE, kueue_priority_class="batch-low")

    job = build_job(TASK, ReplyRoute(), settings)

    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert job["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "batch-low"
    assert KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


def test_without_kueue_the_job_is_neither_suspended_nor_labelled_for_it() -> None:
    job = build_job(TASK, ReplyRoute(), SETTINGS)

    assert "suspend" not in job["spec"]
    assert not {KUEUE_QUEUE_LABEL, KUEUE_PRIORITY_LABEL} & set(job["metadata"]["labels"])


# --- what Kueue says --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "active", "problem"),
    [
        pytest.param([pending("LocalQueue team-a doesn't exist")], True,
                     "LocalQueue team-a doesn't exist", id="no-local-queue"),
        pytest.param([pending("ClusterQueue cq doesn't exist")], True,
                     "ClusterQueue cq doesn't exist", id="no-cluster-queue"),
        pytest.param([pending(NEVER_FITS, "Pending")], True, NEVER_FITS, id="above-max-capacity"),
        pytest.param([pending(USED_UP, "Pending")], True, None, id="quota-used-up-for-now"),
        pytest.param([pending("ClusterQueue cq is inactive")], True, None, id="inactive-queue"),
        pytest.param([pending("The ClusterQueue is stopped")], True, None, id="stopped-queue"),
        pytest.param([pending("a message from a newer Kueue")], True, None, id="unknown-text"),
        pytest.param([], True, None, id="nothing-said-yet"),
        pytest.param([pending(f"{NEVER_FITS}, {USED_UP_BIG}", "Pending")], True, None,
                     id="one-flavor-too-small-another-used-up"),
        pytest.param([pending(f"{NEVER_FITS}, {NEVER_FITS_BIG}", "Pending")], True,
                     f"{NEVER_FITS}, {NEVER_FITS_BIG}", id="every-flavor-too-small"),
        pytest.param([pending(NO_MEMORY, "Pending")], True, NO_MEMORY,
                     id="no-quota-for-a-resource"),
        pytest.param([condition("QuotaReserved"), condition("Admitted")], True, None,
                     id="admitted"),
        pytest.param(
            [condition("Evicted", "True", "InactiveWorkload", "exceeded the requeue limit")],
            False,
            "Kueue deactivated the workload: exceeded the requeue limit",
            id="deactivated",
        ),
        pytest.param([], False, "Kueue deactivated the workload: spec.active is false",
                     id="deactivated-silently"),
    ],
)  # fmt: skip
def test_a_workload_is_never_admitted_only_when_waiting_cannot_cure_it(
    conditions: list[Any], active: bool, problem: str | None
) -> None:
    workload = workload_for(suspended_job(FakeKube()), *conditions, active=active)

    assert kueue.never_admitted(workload) == problem


def test_a_workload_names_its_job_and_other_workloads_name_none() -> None:
    job = suspended_job(FakeKube())
    workload = workload_for(job)
    foreign = {**workload, "metadata": {**workload["metadata"], "ownerReferences": []}}

    assert kueue.owner_job(workload) == ("t-1", job["metadata"]["uid"])
    assert kueue.owner_job(foreign) is None


# --- the reactor ------------------------------------------------------------------------------


def kueue_reactor(
    queue_timeout: float = 60,
) -> tuple[Reactor, list[FinalizeRequest], list[tuple[str, str]]]:
    requests: list[FinalizeRequest] = []
    evictions: list[tuple[str, str]] = []
    react = Reactor(
        requests.append,
        stuck_grace_seconds=30,
        queue_timeout_seconds=queue_timeout,
        on_evicted=lambda name, reason, message: evictions.append((name, reason)),
    )
    return react, requests, evictions


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_suspended_job_waits_past_its_queue_timeout_and_the_clock_starts_at_admission() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    react, requests, _ = kueue_reactor(queue_timeout=60)

    react.on_job("ADDED", job)
    react.sweep(at(T0) + 7200)  # two hours in Kueue's queue
    assert requests == []
    assert react.waiting_jobs() == 1

    admitted = kube.set_suspend("t-1", False, start_time="2025-01-10T12:00:00Z")
    react.on_job("MODIFIED", admitted)
    react.sweep(at("2025-01-10T12:00:59Z"))
    assert requests == []
    react.sweep(at("2025-01-10T12:01:00Z"))  # admitted, then no node for its queue timeout
    assert requests == [FinalizeRequest("t-1", job["metadata"]["uid"], 0.0, "queue timeout")]


def test_a_just_admitted_job_without_its_start_time_yet_is_not_swept() -> None:
    kube = FakeKube()
    suspended_job(kube)
    react, requests, _ = kueue_reactor(queue_timeout=60)
    react.on_job("ADDED", kube.set_suspend("t-1", False))  # startTime not set yet

    react.sweep(at(T0) + 7200)

    assert requests == []


def test_a_job_admitted_again_after_a_preemption_gets_a_new_queue_timeout() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    uid = job["metadata"]["uid"]
    react, requests, _ = kueue_reactor(queue_timeout=60)
    react.on_job("ADDED", kube.set_suspend("t-1", False, start_time=T0))
    react.sweep(at(T0) + 60)  # no node for 60 s: asked (finalize may find it started since)
    react.on_job("MODIFIED", kube.set_suspend("t-1", True))
    react.on_job("MODIFIED", kube.set_suspend("t-1", False, start_time="2025-01-10T11:00:00Z"))
    react.sweep(at("2025-01-10T11:01:00Z"))

    assert requests == [FinalizeRequest("t-1", uid, 0.0, "queue timeout")] * 2


def test_a_job_kueue_still_cannot_admit_is_asked_about_again_now_and_then() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    uid = job["metadata"]["uid"]
    clock = [at(T0)]
    requests: list[FinalizeRequest] = []
    react = Reactor(requests.append, stuck_grace_seconds=30, clock=lambda: clock[0])
    react.on_job("ADDED", job)
    react.on_workload("MODIFIED", workload_for(job, pending(NEVER_FITS, "Pending")))

    react.sweep(at(T0) + 299)
    react.sweep(at(T0) + 300)  # still not answered (e.g. a pod was still terminating)
    react.sweep(at(T0) + 301)
    react.on_job("MODIFIED", kube.set_suspend("t-1", False, start_time=T1))  # admitted after all
    react.sweep(at(T0) + 900)

    assert [r.why for r in requests] == ["not admitted by Kueue"] * 2
    assert requests[1] == FinalizeRequest("t-1", uid, 0.0, "not admitted by Kueue")


def test_a_pod_being_removed_does_not_count_its_job_as_started() -> None:
    kube = FakeKube()
    react, _, _ = kueue_reactor()
    job = kube.set_suspend(suspended_job(kube)["metadata"]["name"], True)
    react.on_job("MODIFIED", job)
    going = make_pod(job, phase="Running", state={"running": {}})
    going["metadata"]["deletionTimestamp"] = T1

    react.on_pod("MODIFIED", going)

    assert react.waiting_jobs() == 1


def test_a_job_kueue_can_never_admit_is_handed_to_finalize_once_after_the_grace() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    react, requests, _ = kueue_reactor()
    react.on_job("ADDED", job)

    for _ in range(3):
        react.on_workload("MODIFIED", workload_for(job, pending(NEVER_FITS, "Pending")))

    assert requests == [FinalizeRequest("t-1", job["metadata"]["uid"], 30, "not admitted by Kueue")]


def test_a_workload_seen_before_its_job_is_answered_once_the_job_is_seen() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    react, requests, _ = kueue_reactor()

    react.on_workload("ADDED", workload_for(job, pending("LocalQueue team-a doesn't exist")))
    assert requests == []
    react.on_job("ADDED", job)

    assert requests == [FinalizeRequest("t-1", job["metadata"]["uid"], 30, "not admitted by Kueue")]


def test_a_workload_of_a_job_never_seen_is_forgotten_when_it_goes_or_at_the_next_list() -> None:
    kube = FakeKube()
    foreign, other = suspended_job(kube), suspended_job(FakeKube())
    other["metadata"]["uid"] = "someone-else"
    react, requests, _ = kueue_reactor()
    never = pending("LocalQueue team-a doesn't exist")

    react.on_workload("ADDED", workload_for(foreign, never))
    react.on_workload("ADDED", workload_for(other, never))
    react.on_workload("DELETED", workload_for(foreign, never))
    assert react.remembered() == 1
    react.jobs_listed(set())  # a Jobs list made before the Job existed forgets nothing
    assert react.remembered() == 1
    react.workloads_listed(set())

    assert react.remembered() == 0
    assert requests == []


def test_a_workload_waiting_for_quota_or_of_another_job_asks_for_nothing() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    react, requests, _ = kueue_reactor()
    react.on_job("ADDED", job)
    other = suspended_job(FakeKube())  # not seen by this reactor's Job watch
    other["metadata"]["uid"] = "someone-else"

    react.on_workload("ADDED", workload_for(job, pending(USED_UP, "Pending")))
    react.on_workload("ADDED", workload_for(other, pending(NEVER_FITS, "Pending")))

    assert requests == []


def test_a_preempted_job_is_queued_again_and_its_eviction_told_once_each_time() -> None:
    kube = FakeKube()
    job = suspended_job(kube)
    react, requests, evictions = kueue_reactor()
    react.on_job("ADDED", job)
    admitted = kube.set_suspend("t-1", False, start_time=T0)
    react.on_job("MODIFIED", admitted)
    react.on_pod("MODIFIED", make_pod(admitted, phase="Running", state={"running": {}}))
    assert react.waiting_jobs() == 0

    react.on_job("MODIFIED", kube.set_suspend("t-1", True))  # preempted: suspended again
    preempted = condition("Evicted", "True", "Preempted", "Preempted to accommodate a workload")
    react.on_workload("MODIFIED", workload_for(job, preempted))
    react.on_workload("MODIFIED", workload_for(job, preempted))  # the same eviction again

    assert react.waiting_jobs() == 1
    assert evictions == [("t-1", "Preempted")]
    assert requests == []  # not answered for it


def test_the_pod_copy_of_a_rerun_job_is_not_dropped_by_the_old_pods_deletion() -> None:
    kube = FakeKube()
    job = kube.set_suspend(suspended_job(kube)["metadata"]["name"], False, start_time=T0)
    react, requests, _ = kueue_reactor()
    react.on_job("ADDED", job)
    old = make_pod(job, "old11", phase="Failed", state=terminated(137, "Error"))
    new = make_pod(job, "new22", phase="Succeeded", state=terminated(0))

    react.on_pod("MODIFIED", old)
    react.on_pod("MODIFIED", new)
    react.on_pod("DELETED", old)  # the preempted pod goes after the re-run one ended
    react.on_job("MODIFIED", kube.update_status("t-1", {"conditions": [condition("Complete")]}))

    assert requests[0].pod is not None
    assert requests[0].pod["metadata"]["name"] == "t-1-new22"


# --- finalize ---------------------------------------------------------------------------------


def run(kube: FakeKube, publisher: FakePublisher, job: KubeObject, settings: Settings) -> Any:
    context = Context(kube, publisher, settings, "worker-a/1", clock=lambda: NOW)
    return finalize(job["metadata"]["name"], job["metadata"]["uid"], context, now=NOW)


def test_a_task_kueue_can_never_admit_is_answered_with_its_reason_and_removed() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = suspended_job(kube)
    kube.workloads.append(workload_for(job, pending(NEVER_FITS, "Pending")))

    assert run(kube, publisher, job, KUEUE).state is Finalized.ANSWERED
    assert publisher.responses == [
        Response(id="t-1", error=f"Kueue cannot admit the task: {NEVER_FITS}")
    ]
    assert "t-1" not in kube.jobs


@pytest.mark.parametrize(
    "conditions",
    [
        pytest.param([pending(USED_UP, "Pending")], id="quota-used-up"),
        pytest.param([], id="no-word-from-kueue-yet"),
        pytest.param([condition("QuotaReserved")], id="admitted-meanwhile"),
    ],
)
def test_a_suspended_task_that_may_still_be_admitted_waits_however_long(
    conditions: list[Any],
) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = suspended_job(kube)  # two hours old at NOW, queue timeout 60 s
    kube.workloads.append(workload_for(job, *conditions))

    assert run(kube, publisher, job, KUEUE).state is Finalized.RUNNING
    assert publisher.responses == []
    assert "t-1" in kube.jobs


def test_a_job_suspended_by_someone_else_without_kueue_waits_without_asking_kueue() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = suspended_job(kube)
    settings = dataclasses.replace(KUEUE, kueue_local_queue="")

    assert run(kube, publisher, job, settings).state is Finalized.RUNNING
    assert "list_objects" not in kube.calls


# --- start-up check ---------------------------------------------------------------------------


class Cluster:
    """The `ObjectReader` port: whether Kueue is served, and the LocalQueues that exist."""

    def __init__(self, served: bool, queues: set[str], error: KubeError | None = None) -> None:
        self.served, self.queues, self.error = served, queues, error
        self.asked: list[str] = []

    def get_claim(self, name: str) -> dict[str, Any] | None:
        return None

    def serves(self, kind: str) -> bool:
        self.asked.append(f"serves {kind}")
        if self.error is not None:
            raise self.error
        return self.served

    def get_object(self, kind: str, name: str) -> dict[str, Any] | None:
        self.asked.append(f"get {kind} {name}")
        return {"metadata": {"name": name}} if name in self.queues else None


def test_without_kueue_served_the_worker_refuses_to_start() -> None:
    with pytest.raises(ConfigError) as caught:
        check_kueue(Cluster(served=False, queues=set()), KUEUE)

    assert str(caught.value) == (
        "KUEUE_LOCAL_QUEUE: is 'team-a' but the cluster serves no Kueue API "
        "(kueue.x-k8s.io/v1beta2): install Kueue, or leave KUEUE_LOCAL_QUEUE empty"
    )


def test_a_missing_local_queue_or_a_failed_check_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    missing = check_kueue(Cluster(served=True, queues=set()), KUEUE)
    forbidden = check_kueue(
        Cluster(True, set(), ForbiddenError("discover /apis/kueue.x-k8s.io/v1beta2: no", 403)),
        KUEUE,
    )

    assert missing == (
        f"KUEUE_LOCAL_QUEUE: LocalQueue 'team-a' does not exist in namespace '{NAMESPACE}'; "
        "Kueue admits none of its Jobs, and each task is answered with Kueue's reason after "
        "IMAGE_PULL_GRACE_SECONDS"
    )
    assert forbidden is not None
    assert forbidden.startswith("KUEUE_LOCAL_QUEUE: cannot check LocalQueue 'team-a': discover")
    assert [r.getMessage() for r in caplog.records] == [missing, forbidden]


def test_an_existing_local_queue_passes_and_without_kueue_nothing_is_asked() -> None:
    cluster = Cluster(served=True, queues={"team-a"})

    assert check_kueue(cluster, KUEUE) is None
    assert check_kueue(cluster, SETTINGS) is None
    assert cluster.asked == ["serves workloads", "get localqueues team-a"]


def test_a_task_kueue_admitted_a_moment_ago_is_not_answered_for_its_queue_timeout() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    suspended_job(kube)
    job = kube.set_suspend("t-1", False)  # two hours after creation, no startTime yet

    assert run(kube, publisher, job, KUEUE).state is Finalized.RUNNING
    assert publisher.responses == []
