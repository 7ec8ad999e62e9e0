"""Reactor: watch events in, one finalize request per ended Job (or stuck pod) out."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import pytest

from dispatcher.core.reactor import Reactor
from dispatcher.core.request import FinalizeRequest
from dispatcher.kube.conventions import RESPONDED_ANNOTATION
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import (
    COMPLETE,
    FAILED,
    FULL,
    PULL_MESSAGE,
    RUNNING,
    T0,
    T1,
    TASK,
    UNSCHEDULABLE,
    FakeKube,
    KubeObject,
    create_job_for,
    failed_create,
    make_pod,
    terminated,
    waiting,
)

GRACE = 60.0


def reactor() -> tuple[Reactor, list[FinalizeRequest]]:
    requests: list[FinalizeRequest] = []
    return Reactor(requests.append, stuck_grace_seconds=GRACE), requests


def job_states(*statuses: Any) -> list[KubeObject]:
    """The Job t-1 as successive watch events show it, one object per status."""
    kube = FakeKube()
    create_job_for(kube)
    return [kube.update_status("t-1", status) for status in statuses]


def uid(obj: KubeObject) -> str:
    return str(obj["metadata"]["uid"])


# --- Jobs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ended", [pytest.param(COMPLETE, id="complete"), pytest.param(FAILED, id="failed")]
)
def test_ended_job_is_finalized_once_however_often_it_is_seen(ended: Any) -> None:
    react, requests = reactor()
    running, *finished = job_states(RUNNING, ended, ended, ended)

    react.on_job("ADDED", running)
    react.on_job("MODIFIED", running)
    for job in finished:
        react.on_job("MODIFIED", job)
    react.on_job("LISTED", finished[-1])  # the watch re-listed

    assert requests == [FinalizeRequest("t-1", uid(running), 0.0, "job ended")]


def test_job_that_ended_while_nobody_watched_is_finalized_from_the_list() -> None:
    react, requests = reactor()
    (job,) = job_states(COMPLETE)

    react.on_job("LISTED", job)

    assert requests == [FinalizeRequest("t-1", uid(job), 0.0, "job ended")]


def test_running_job_is_not_finalized() -> None:
    react, requests = reactor()
    (job,) = job_states(RUNNING)

    react.on_job("ADDED", job)
    react.on_job("MODIFIED", job)

    assert requests == []


def answered_job() -> KubeObject:
    """The ended Job t-1 after its response was published (annotated, not yet deleted)."""
    kube = FakeKube()
    create_job_for(kube)
    kube.update_status("t-1", COMPLETE)
    answered = {RESPONDED_ANNOTATION: "2025-01-10T10:09:00Z"}
    return kube.patch_job("t-1", {"metadata": {"annotations": answered}})


def test_job_already_answered_is_not_finalized_again_while_it_is_being_deleted() -> None:
    react, requests = reactor()

    react.on_job("MODIFIED", answered_job())

    assert requests == []


def test_answered_job_left_behind_by_a_crash_is_cleaned_up_from_the_list() -> None:
    react, requests = reactor()
    job = answered_job()  # still holds our finalizer

    react.on_job("LISTED", job)
    react.on_job("LISTED", job)

    assert [(r.job_name, r.delay_seconds, r.why) for r in requests] == [
        ("t-1", 0.0, "answered, not yet let go of")
    ]


@pytest.mark.parametrize(
    ("status", "finalizers", "asked"),
    [
        pytest.param(COMPLETE, [], False, id="ran-to-its-end-left-to-its-ttl"),
        pytest.param(COMPLETE, ["job-dispatcher.io/answer"], True, id="ended-but-still-held"),
        pytest.param({}, [], True, id="answered-early-not-deleted"),
    ],
)
def test_an_answered_job_that_ran_to_its_end_is_left_to_its_ttl(
    status: Any, finalizers: list[str], asked: bool
) -> None:
    """Its TTL (the idempotency window, or 0) deletes it; a Job still held, or answered before
    it ended (stuck, queue timeout), is let go of by finalize after a crash cut that short."""
    requests: list[FinalizeRequest] = []
    react = Reactor(requests.append, stuck_grace_seconds=GRACE)
    job = answered_job()
    job["status"] = status
    job["metadata"]["finalizers"] = finalizers

    react.on_job("LISTED", job)

    assert bool(requests) is asked


def test_deleted_job_is_forgotten() -> None:
    react, requests = reactor()
    job = answered_job()

    react.on_job("MODIFIED", {**job, "metadata": {**job["metadata"], "annotations": {}}})
    react.on_job("DELETED", job)  # answered, then deleted by finalize: nothing more to say
    react.on_job("LISTED", {**job, "metadata": {**job["metadata"], "annotations": {}}})

    assert [r.why for r in requests] == ["job ended", "job ended"]  # seen again: treated as new
    assert react.active_jobs() == 0


@pytest.mark.parametrize(
    "status", [pytest.param(RUNNING, id="running"), pytest.param(COMPLETE, id="ended")]
)
def test_a_job_deleted_before_it_was_answered_is_answered_from_its_last_state(
    status: Any,
) -> None:
    react, requests = reactor()
    kube = FakeKube()
    job = create_job_for(kube, route=ReplyRoute("corr-7", "amq.gen-reply"))
    job = kube.update_status("t-1", status)

    react.on_job("DELETED", job)

    deleted = [r for r in requests if r.deleted_annotations is not None]
    assert [(r.job_name, r.job_uid, r.why) for r in deleted] == [
        ("t-1", uid(job), "deleted before it was answered")
    ]
    assert deleted[0].deleted_annotations == job["metadata"]["annotations"]


@pytest.mark.parametrize("event", ["MODIFIED", "LISTED"])
@pytest.mark.parametrize(
    "status", [pytest.param(RUNNING, id="running"), pytest.param(COMPLETE, id="ended")]
)
def test_a_job_marked_for_deletion_unanswered_is_finalized_once_and_no_longer_active(
    event: str, status: Any
) -> None:
    react, requests = reactor()
    kube = FakeKube()
    job = create_job_for(kube)
    react.on_job("ADDED", job)
    kube.update_status("t-1", status)
    kube.delete_job("t-1")  # held by the dispatcher's finalizer until it is answered
    terminating = kube.get_job("t-1")
    assert terminating is not None

    react.on_job(event, terminating)
    react.on_job(event, terminating)

    assert requests == [FinalizeRequest("t-1", uid(job), 0.0, "deleted before it was answered")]
    assert react.active_jobs() == 0


def test_a_job_whose_finalize_could_not_be_queued_is_asked_for_again() -> None:
    requests: list[FinalizeRequest] = []
    failures = [RuntimeError("broker away")]

    def schedule(request: FinalizeRequest) -> None:
        if failures:
            raise failures.pop()
        requests.append(request)

    react = Reactor(schedule, stuck_grace_seconds=GRACE)
    (job,) = job_states(COMPLETE)

    with pytest.raises(RuntimeError):
        react.on_job("MODIFIED", job)
    react.on_job("LISTED", job)  # the watch lists again after the failure

    assert [r.why for r in requests] == ["job ended"]


def test_active_jobs_counts_the_jobs_seen_running_until_they_end() -> None:
    react, _ = reactor()
    kube = FakeKube()
    for name in ("t-1", "t-2", "t-3"):
        create_job_for(kube, dataclasses.replace(TASK, id=name))
    running = [kube.update_status(name, RUNNING) for name in ("t-1", "t-2", "t-3")]

    for job in running:
        react.on_job("ADDED", job)
    assert react.active_jobs() == 3

    react.on_job("MODIFIED", kube.update_status("t-1", COMPLETE))
    react.on_job("DELETED", running[1])
    answered = {RESPONDED_ANNOTATION: "2025-01-10T10:09:00Z"}
    react.on_job("MODIFIED", kube.patch_job("t-3", {"metadata": {"annotations": answered}}))

    assert react.active_jobs() == 0


# --- Pods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "why"),
    [
        pytest.param(
            {"state": waiting("ErrImagePull", PULL_MESSAGE)}, "IMAGE_PULL_FAILED", id="image-pull"
        ),
        pytest.param({"scheduled": UNSCHEDULABLE}, "UNSCHEDULABLE", id="unschedulable"),
        pytest.param(
            {"state": waiting("CreateContainerConfigError", 'secret "db" not found')},
            "CONTAINER_CONFIG_ERROR",
            id="container-config",
        ),
    ],
)
def test_stuck_pod_is_finalized_after_the_grace_period(pod: dict[str, Any], why: str) -> None:
    react, requests = reactor()
    job = create_job_for(FakeKube())

    react.on_pod("ADDED", make_pod(job, **pod))

    assert requests == [FinalizeRequest("t-1", uid(job), GRACE, why)]


def test_stuck_pod_is_finalized_once_per_pod() -> None:
    react, requests = reactor()
    job = create_job_for(FakeKube())
    pulling = make_pod(job, state=waiting("ErrImagePull", PULL_MESSAGE))
    backing_off = make_pod(job, state=waiting("ImagePullBackOff", "Back-off pulling image"))
    replacement = make_pod(job, "q9w8e", state=waiting("ErrImagePull", PULL_MESSAGE))

    for event in ("ADDED", "MODIFIED", "LISTED"):
        react.on_pod(event, pulling)
    react.on_pod("MODIFIED", backing_off)
    react.on_pod("ADDED", replacement)

    assert requests == [FinalizeRequest("t-1", uid(job), GRACE, "IMAGE_PULL_FAILED")] * 2


def test_deleted_pod_is_forgotten() -> None:
    react, requests = reactor()
    pod = make_pod(create_job_for(FakeKube()), state=waiting("ErrImagePull", PULL_MESSAGE))

    react.on_pod("ADDED", pod)
    react.on_pod("DELETED", pod)
    react.on_pod("LISTED", pod)

    assert len(requests) == 2


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param({}, id="no-labels"),
        pytest.param({"batch.kubernetes.io/job-name": "t-1"}, id="no-controller-uid"),
        pytest.param({"batch.kubernetes.io/controller-uid": "0b6f"}, id="no-job-name"),
    ],
)
def test_stuck_pod_without_job_labels_is_ignored(labels: dict[str, str]) -> None:
    react, requests = reactor()
    pod = make_pod(create_job_for(FakeKube()), state=waiting("ErrImagePull", PULL_MESSAGE))
    pod["metadata"]["labels"] = labels

    react.on_pod("ADDED", pod)

    assert requests == []


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param({}, id="pending"),
        pytest.param({"state": waiting("ContainerCreating")}, id="container-creating"),
        pytest.param({"phase": "Running", "state": {"running": {}}}, id="running"),
        pytest.param({"phase": "Failed", "state": terminated(1, "Error")}, id="failed"),
    ],
)
def test_pod_that_is_not_stuck_is_ignored(pod: dict[str, Any]) -> None:
    react, requests = reactor()

    react.on_pod("MODIFIED", make_pod(create_job_for(FakeKube()), **pod))

    assert requests == []


# --- Events -----------------------------------------------------------------------------------


def test_a_failed_pod_creation_is_finalized_after_the_grace_period_once() -> None:
    react, requests = reactor()
    kube = FakeKube()
    job = create_job_for(kube)
    event = failed_create(job, "pods is forbidden: exceeded quota")

    react.on_event("ADDED", event)
    react.on_event("MODIFIED", event)  # the controller keeps counting the same failure
    react.on_event("LISTED", event)

    assert [(r.job_name, r.job_uid, r.delay_seconds, r.why) for r in requests] == [
        ("t-1", uid(job), GRACE, "pod not created")
    ]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"reason": "SuccessfulCreate"}, id="other-reason"),
        pytest.param({"involvedObject": {"kind": "Job"}}, id="no-job-named"),
    ],
)
def test_other_events_are_ignored(change: dict[str, Any]) -> None:
    react, requests = reactor()
    kube = FakeKube()
    event = failed_create(create_job_for(kube), "boom") | change

    react.on_event("ADDED", event)

    assert requests == []


# --- waiting for room, queue timeout, active Jobs ---------------------------------------


def queueing_reactor(timeout: float) -> tuple[Reactor, list[FinalizeRequest], list[str]]:
    requests: list[FinalizeRequest] = []
    seen: list[str] = []
    react = Reactor(
        requests.append,
        stuck_grace_seconds=GRACE,
        queue_timeout_seconds=timeout,
        on_job_seen=seen.append,
    )
    return react, requests, seen


def test_a_pod_waiting_for_room_is_not_stuck_and_counts_as_waiting() -> None:
    react, requests, _ = queueing_reactor(3600)
    (job,) = job_states(RUNNING)
    react.on_job("ADDED", job)

    react.on_pod("ADDED", make_pod(job, scheduled=FULL))

    assert requests == []
    assert (react.active_jobs(), react.waiting_jobs()) == (1, 1)
    react.on_pod("MODIFIED", make_pod(job))  # scheduled: it has a node now
    assert (react.active_jobs(), react.waiting_jobs()) == (1, 0)


def test_jobs_lists_the_active_jobs_oldest_first_with_whether_they_have_a_node() -> None:
    react, _, _ = queueing_reactor(3600)
    kube = FakeKube()
    first = create_job_for(kube)
    second = create_job_for(kube, dataclasses.replace(TASK, id="t-2"))
    later = {**second["metadata"], "creationTimestamp": "2025-01-10T10:05:00+00:00"}
    second = {**second, "metadata": later}
    react.on_job("ADDED", second)
    react.on_job("ADDED", first)
    react.on_pod("ADDED", make_pod(first))  # scheduled
    react.on_pod("ADDED", make_pod(second, "b8c1d", scheduled=FULL))
    created = datetime.fromisoformat(T0).timestamp()

    views = react.jobs()

    assert [(v.name, v.started, v.suspended) for v in views] == [
        ("t-1", True, False),
        ("t-2", False, False),
    ]
    assert views[0].since == created
    react.on_job("MODIFIED", kube.update_status("t-1", COMPLETE))
    assert [v.name for v in react.jobs()] == ["t-2"]


def test_a_deleted_job_is_forgotten_in_one_deletion_whatever_was_known_of_it() -> None:
    react, requests = reactor()
    (job,) = job_states(RUNNING)
    react.on_job("ADDED", job)
    react.on_pod("ADDED", make_pod(job, state=waiting("ErrImagePull", PULL_MESSAGE)))
    react.on_event("ADDED", failed_create(job, "pods is forbidden: exceeded quota"))
    assert (react.remembered(), len(requests)) == (1, 2)

    answered = {**job["metadata"], "annotations": {RESPONDED_ANNOTATION: "x"}}
    react.on_job("DELETED", {**job, "metadata": answered})

    assert react.remembered() == 0
    assert react.jobs() == []


def test_sweep_asks_once_for_jobs_that_waited_their_queue_timeout_without_a_node() -> None:
    react, requests, _ = queueing_reactor(300)
    kube = FakeKube()
    waiting_job = create_job_for(kube)  # created at T0 = 2025-01-10T10:00:00Z
    running_job = create_job_for(kube, dataclasses.replace(TASK, id="t-2"))
    react.on_job("ADDED", waiting_job)
    react.on_job("ADDED", running_job)
    react.on_pod("ADDED", make_pod(waiting_job, scheduled=FULL))
    react.on_pod("ADDED", make_pod(running_job, "b8c1d"))
    created = datetime.fromisoformat(T0).timestamp()

    react.sweep(created + 299)
    assert requests == []
    react.sweep(created + 300)
    react.sweep(created + 400)

    assert requests == [FinalizeRequest("t-1", uid(waiting_job), 0.0, "queue timeout")]


def test_sweep_does_nothing_without_a_queue_timeout() -> None:
    react, requests, _ = queueing_reactor(0)
    (job,) = job_states(RUNNING)
    react.on_job("ADDED", job)

    react.sweep(datetime.fromisoformat(T0).timestamp() + 10**9)

    assert requests == []


def test_a_relist_forgets_active_jobs_whose_deletion_was_missed() -> None:
    react, _, _ = queueing_reactor(3600)
    kube = FakeKube()
    create_job_for(kube)
    create_job_for(kube, dataclasses.replace(TASK, id="t-2"))
    first, second = (kube.update_status(name, RUNNING) for name in ("t-1", "t-2"))
    react.on_job("ADDED", first)
    react.on_job("ADDED", second)

    react.on_job("LISTED", second)  # t-1 was deleted while the watch was away
    react.jobs_listed({uid(second)})

    assert react.active_jobs() == 1


def test_a_relist_forgets_every_job_it_no_longer_finds() -> None:
    react, _ = reactor()
    kube = FakeKube()
    jobs = []
    for number in range(5):
        create_job_for(kube, dataclasses.replace(TASK, id=f"t-{number}"))
        jobs.append(kube.update_status(f"t-{number}", COMPLETE))
        react.on_job("MODIFIED", jobs[-1])  # ended: handed to finalize
    assert react.remembered() == 5

    react.jobs_listed({uid(job) for job in jobs[4:]})  # four DELETED events were missed

    assert react.remembered() == 1


def test_every_job_event_tells_admission_the_job_exists() -> None:
    react, _, seen = queueing_reactor(3600)
    running, ended = job_states(RUNNING, COMPLETE)

    react.on_job("ADDED", running)
    react.on_job("MODIFIED", ended)

    assert seen == ["t-1", "t-1"]


def test_an_ended_job_is_handed_on_with_small_copies_of_itself_and_its_pod() -> None:
    """Finalize then needs neither to read the Job again nor to list its pods."""
    react, requests = reactor()
    running, ended = job_states(RUNNING, COMPLETE)
    pod = make_pod(running, phase="Succeeded", state=terminated(0))
    pod["spec"]["nodeName"] = "node-1"

    react.on_job("ADDED", running)
    react.on_pod("MODIFIED", pod)
    react.on_job("MODIFIED", ended)

    [request] = requests
    assert request.job is not None
    assert request.pod is not None
    assert request.job["metadata"]["resourceVersion"] == ended["metadata"]["resourceVersion"]
    conditions = [(c["type"], c["status"]) for c in ended["status"]["conditions"]]
    assert [(c["type"], c["status"]) for c in request.job["status"]["conditions"]] == conditions
    assert request.pod["status"]["containerStatuses"][0]["state"] == terminated(0)
    assert "template" not in request.job["spec"] or "containers" not in str(request.job["spec"])
    assert len(json.dumps(request.job)) < len(json.dumps(ended)) / 2
    assert react.remembered() == 1  # the pod's copy went with the request


def test_the_copy_of_an_ended_pod_is_dropped_with_its_pod() -> None:
    react, requests = reactor()
    running, ended = job_states(RUNNING, COMPLETE)
    pod = make_pod(running, phase="Succeeded", state=terminated(0))

    react.on_pod("MODIFIED", pod)
    react.on_pod("DELETED", pod)
    react.on_job("MODIFIED", ended)

    assert [r.pod for r in requests] == [None]  # finalize lists the pods itself


def test_the_copy_of_an_ended_pod_is_dropped_when_a_relist_misses_its_job() -> None:
    react, _ = reactor()
    running, _ = job_states(RUNNING, COMPLETE)
    react.on_pod("MODIFIED", make_pod(running, phase="Succeeded", state=terminated(0)))
    before = react.remembered()

    react.jobs_listed(set())

    assert before == 1
    assert react.remembered() == 0


# --- ended Jobs waiting for their answer ------------------------------------------------------


def test_an_ended_job_is_unanswered_from_its_end_until_its_answer_shows() -> None:
    react, _ = reactor()
    running, ended, seen_again = job_states(RUNNING, COMPLETE, COMPLETE)
    react.on_job("ADDED", running)
    assert react.unanswered() == []

    react.on_job("MODIFIED", ended)
    react.on_job("MODIFIED", seen_again)  # e.g. finalize's claim: the same end
    assert react.unanswered() == [datetime.fromisoformat(T1).timestamp()]  # its condition's time

    react.on_job("MODIFIED", answered_job())
    assert react.unanswered() == []


def test_a_job_that_ended_while_nobody_watched_counts_from_its_own_end() -> None:
    react, _ = reactor()
    (job,) = job_states(FAILED)

    react.on_job("LISTED", job)

    assert react.unanswered() == [datetime.fromisoformat(T1).timestamp()]


def test_a_job_deleted_unanswered_counts_from_its_deletion_until_it_is_gone() -> None:
    react, _ = reactor()
    kube = FakeKube()
    job = create_job_for(kube)
    react.on_job("ADDED", job)
    kube.delete_job("t-1")  # held by the dispatcher's finalizer until it is answered
    terminating = kube.get_job("t-1")
    assert terminating is not None

    react.on_job("MODIFIED", terminating)
    assert react.unanswered() == [datetime.fromisoformat(T0).timestamp()]
    react.on_job("DELETED", terminating)
    assert react.unanswered() == []


def test_an_ended_job_without_a_time_counts_from_when_it_was_seen() -> None:
    react = Reactor(lambda request: None, stuck_grace_seconds=GRACE, clock=lambda: 1234.0)
    (job,) = job_states(COMPLETE)
    for item in job["status"]["conditions"]:
        del item["lastTransitionTime"]

    react.on_job("MODIFIED", job)

    assert react.unanswered() == [1234.0]


def test_a_relist_forgets_an_unanswered_job_that_is_gone() -> None:
    react, _ = reactor()
    (job,) = job_states(COMPLETE)
    react.on_job("MODIFIED", job)

    react.jobs_listed(set())

    assert react.unanswered() == []
