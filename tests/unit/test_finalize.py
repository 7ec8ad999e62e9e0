"""Finalize: one response per ended or stuck Job, then the Job is released."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.core.finalize import (
    CLAIM_TTL,
    RENEW_AFTER,
    Context,
    Finalized,
    Result,
    answer_again,
    finalize,
)
from dispatcher.errors import KubeError, NotFoundError, PermanentKubeError, TransientKubeError
from dispatcher.kube.conventions import CLAIM_ANNOTATION, INSTANCE_LABEL, RESPONDED_ANNOTATION
from dispatcher.kube.outcome import RESULT_DELETED_ERROR
from dispatcher.kube.routes import with_route
from dispatcher.kube.snapshot import job_snapshot, pod_snapshot
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import (
    COMPLETE,
    DEADLINE,
    FAILED,
    FULL,
    FULL_MESSAGE,
    PULL_MESSAGE,
    RUNNING,
    SETTINGS,
    T0,
    TASK,
    UNSCHEDULABLE,
    UNSCHEDULABLE_MESSAGE,
    WINDOW,
    FakeKube,
    FakePublisher,
    KubeObject,
    Published,
    create_job_for,
    failed_create,
    make_pod,
    terminated,
    waiting,
)

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)
NOW_TEXT = "2025-01-10T10:10:00Z"
HOLDER = "worker-a/7"
MESSAGE_ID = "t-1.0b6f1b0e-5d1a-4c7e-9d8b-000000000001"  # the name and uid of one run
POD = "t-1-x7k2p"


def ended_job(
    kube: FakeKube,
    status: Any = COMPLETE,
    *,
    log: str | KubeError = "hello\n",
    route: ReplyRoute | None = None,
    **pod: Any,
) -> KubeObject:
    """A Job that ran one pod to its end (Succeeded with exit 0 unless `pod` says otherwise)."""
    job = create_job_for(kube, route=route)
    kube.add_pod(make_pod(job, **({"phase": "Succeeded", "state": terminated(0)} | pod)))
    kube.logs[POD] = log
    return kube.update_status("t-1", status)


def claim(kube: FakeKube, value: str) -> KubeObject:
    return kube.patch_job("t-1", {"metadata": {"annotations": {CLAIM_ANNOTATION: value}}})


def run(
    kube: FakeKube,
    publisher: FakePublisher,
    job: KubeObject,
    holder: str = HOLDER,
    attempt: int = 0,
) -> Result:
    """One execution (`attempt` 0 is the first, then the retries) of a finalize task."""
    return finalize(
        job["metadata"]["name"],
        job["metadata"]["uid"],
        Context(kube, publisher, SETTINGS, holder, attempt=attempt, clock=lambda: NOW),
        now=NOW,
    )


# --- answered ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "pod", "log", "response"),
    [
        pytest.param(
            COMPLETE,
            {"phase": "Succeeded", "state": terminated(0)},
            "hello\n",
            Response(id="t-1", output="hello\n", exit=0),
            id="succeeded",
        ),
        pytest.param(
            FAILED,
            {"phase": "Failed", "state": terminated(3, "Error")},
            "boom\n",
            Response(id="t-1", output="boom\n", exit=3),
            id="workload-failed-without-error",
        ),
        pytest.param(
            FAILED,
            {"phase": "Failed", "state": terminated(137, "OOMKilled")},
            "allocating\n",
            Response(
                id="t-1",
                output="allocating\n",
                exit=137,
                error="the container was killed: out of memory (OOMKilled)",
            ),
            id="oom-killed",
        ),
        pytest.param(
            DEADLINE,
            {"phase": "Failed", "state": terminated(137, "Error"), "reason": "DeadlineExceeded"},
            "started\n",
            Response(
                id="t-1",
                output="started\n",
                error="deadline exceeded: the task ran longer than 600 s",
            ),
            id="deadline-keeps-logs-without-exit",
        ),
    ],
)
def test_ended_job_is_answered_with_its_logs_and_exit_code_then_deleted(
    status: Any, pod: dict[str, Any], log: str, response: Response
) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube, status, log=log, **pod)

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert result.age_seconds == 600.0  # created at 10:00, answered at 10:10
    assert publisher.published == [Published(response, ReplyRoute(), MESSAGE_ID)]
    assert kube.get_job("t-1") is None
    assert kube.annotations("t-1")[RESPONDED_ANNOTATION] == NOW_TEXT


@pytest.mark.parametrize(
    ("pod", "error"),
    [
        pytest.param(
            {"state": waiting("ErrImagePull", PULL_MESSAGE)},
            f"image 'localhost/testbox:1.0' could not be pulled: {PULL_MESSAGE}",
            id="image-pull",
        ),
        pytest.param(
            {"scheduled": UNSCHEDULABLE},
            f"the pod cannot be scheduled: {UNSCHEDULABLE_MESSAGE}",
            id="unschedulable",
        ),
    ],
)
def test_stuck_pod_is_answered_with_an_error_and_no_logs(pod: dict[str, Any], error: str) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    kube.add_pod(make_pod(job, **pod))
    kube.logs[POD] = "never shown\n"
    job = kube.update_status("t-1", RUNNING)

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [Response(id="t-1", error=error)]
    assert kube.get_job("t-1") is None


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            PermanentKubeError(
                f'read the log of Pod {POD}: container "task" in pod "{POD}" is waiting to '
                "start: ContainerCreating (HTTP 400)",
                400,
            ),
            id="container-never-started",
        ),
        pytest.param(
            NotFoundError(f'read the log of Pod {POD}: pods "{POD}" not found (HTTP 404)', 404),
            id="pod-already-gone",
        ),
    ],
)
def test_logs_that_cannot_be_read_leave_the_output_out(error: PermanentKubeError) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube, FAILED, log=error, phase="Failed", state=terminated(128, "StartError"))

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [Response(id="t-1", exit=128)]
    assert kube.get_job("t-1") is None


def test_transient_log_error_propagates_and_leaves_the_job_for_a_retry() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube, log=TransientKubeError("read the log of Pod t-1-x7k2p: timed out"))

    with pytest.raises(TransientKubeError):
        run(kube, publisher, job)

    assert publisher.published == []
    assert RESPONDED_ANNOTATION not in kube.annotations("t-1")


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(ReplyRoute("c-42", "amq.rabbitmq.reply-to.g1h2AA"), id="rpc"),
        pytest.param(ReplyRoute(correlation_id="c-42"), id="correlation-only"),
        pytest.param(ReplyRoute(), id="response-exchange"),
    ],
)
def test_response_goes_where_the_job_annotations_say(route: ReplyRoute) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube, route=route)

    run(kube, publisher, job)

    assert [item.route for item in publisher.published] == [route]


def test_response_is_published_before_the_job_is_marked_responded_and_deleted() -> None:
    kube = FakeKube()
    job_when_published: list[KubeObject | None] = []
    publisher = FakePublisher(on_publish=lambda _: job_when_published.append(kube.get_job("t-1")))
    job = ended_job(kube)

    run(kube, publisher, job)

    (seen,) = job_when_published
    assert seen is not None
    assert RESPONDED_ANNOTATION not in seen["metadata"]["annotations"]
    assert seen["metadata"]["annotations"][CLAIM_ANNOTATION] == f"{HOLDER}#0 {NOW_TEXT}"
    assert kube.get_job("t-1") is None
    assert kube.annotations("t-1")[RESPONDED_ANNOTATION] == NOW_TEXT


def test_failed_publish_leaves_the_job_unmarked_and_a_retry_answers_it() -> None:
    kube = FakeKube()
    job = ended_job(kube)

    with pytest.raises(ConnectionResetError):
        run(kube, FakePublisher(error=ConnectionResetError("broker connection lost")), job)
    assert RESPONDED_ANNOTATION not in kube.annotations("t-1")
    assert kube.get_job("t-1") is not None

    publisher = FakePublisher()
    result = run(kube, publisher, job, attempt=1)  # the retry

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [Response(id="t-1", output="hello\n", exit=0)]


def test_a_repeated_answer_after_a_crash_carries_the_same_message_id() -> None:
    kube = FakeKube()
    job = ended_job(kube)
    crash = TransientKubeError("release Job t-1: connection reset by peer")
    first = FakePublisher(on_publish=lambda _: kube.fail_next("release_job", crash))

    with pytest.raises(TransientKubeError):  # published, then lost before marking the Job
        run(kube, first, job)
    retry = FakePublisher()
    run(kube, retry, job, attempt=1)

    assert [item.message_id for item in first.published + retry.published] == [
        MESSAGE_ID,
        MESSAGE_ID,
    ]
    assert first.responses == retry.responses
    assert kube.get_job("t-1") is None


def join(kube: FakeKube, route: ReplyRoute) -> None:
    """Another copy of the task joins the Job with a route of its own (as submit does)."""
    more = with_route(kube.annotations("t-1"), route)
    assert more is not None
    kube.patch_job("t-1", {"metadata": {"annotations": more}})


def test_every_route_that_asked_is_answered_once_with_its_own_message_id() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    first, second, third = ReplyRoute("c-1", "replies"), ReplyRoute("c-2", "q-2"), ReplyRoute("c-3")
    job = ended_job(kube, route=first)
    join(kube, second)
    join(kube, third)

    run(kube, publisher, job)

    answer = Response(id="t-1", output="hello\n", exit=0)
    assert publisher.published == [
        Published(answer, first, MESSAGE_ID),
        Published(answer, second, f"{MESSAGE_ID}.1"),
        Published(answer, third, f"{MESSAGE_ID}.2"),
    ]
    assert kube.get_job("t-1") is None


def test_a_copy_that_joins_while_the_answer_is_published_is_answered_too() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube, route=ReplyRoute("c-1"))
    late = ReplyRoute("c-late", "q-late")
    kube.before_next("release_job", lambda: join(kube, late))

    run(kube, publisher, job)

    assert [(item.route, item.message_id) for item in publisher.published] == [
        (ReplyRoute("c-1"), MESSAGE_ID),
        (late, f"{MESSAGE_ID}.1"),
    ]
    assert kube.get_job("t-1") is None


# --- the idempotency window ------------------------------------------------------------------


def run_with_window(kube: FakeKube, publisher: FakePublisher, job: KubeObject) -> Result:
    context = Context(kube, publisher, WINDOW, HOLDER, clock=lambda: NOW)
    return finalize(job["metadata"]["name"], job["metadata"]["uid"], context, now=NOW)


def test_a_job_that_ran_to_its_end_is_kept_for_the_window_and_left_to_its_ttl() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)

    assert run_with_window(kube, publisher, job).state is Finalized.ANSWERED

    kept = kube.get_job("t-1")
    assert kept is not None
    assert kept["metadata"]["finalizers"] == []
    assert kept["metadata"]["annotations"][RESPONDED_ANNOTATION] == NOW_TEXT
    assert kept["spec"]["ttlSecondsAfterFinished"] == WINDOW.idempotency_window_seconds
    assert run_with_window(kube, publisher, kept).state is Finalized.ALREADY_ANSWERED
    assert len(publisher.published) == 1
    assert kube.get_job("t-1") is not None


def test_a_job_answered_before_it_ended_is_deleted_at_once_even_with_a_window() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    kube.add_pod(make_pod(job, state=waiting("ErrImagePull", PULL_MESSAGE)))
    job = kube.update_status("t-1", RUNNING)

    later = datetime(2025, 1, 10, 10, 30, tzinfo=UTC)  # past the grace period
    context = Context(kube, publisher, WINDOW, HOLDER, clock=lambda: later)
    finalize("t-1", job["metadata"]["uid"], context, now=later)

    assert publisher.responses[0].error is not None
    assert kube.get_job("t-1") is None  # its pod must not keep trying


def test_the_same_task_sent_again_is_answered_again_from_the_kept_job() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube, route=ReplyRoute("c-1", "first"))
    run_with_window(kube, publisher, job)
    again = ReplyRoute("c-2", "second")

    assert answer_again("t-1", again, Context(kube, publisher, WINDOW, HOLDER))

    first, repeat = publisher.published
    assert repeat == Published(first.response, again, first.message_id)
    assert repeat.response == Response(id="t-1", output="hello\n", exit=0)


def test_a_job_not_kept_cannot_be_answered_again() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    running = create_job_for(kube)
    context = Context(kube, publisher, WINDOW, HOLDER)

    assert not answer_again("t-1", ReplyRoute("c-2"), context)  # running, not answered
    kube.remove_job(running["metadata"]["name"])
    assert not answer_again("t-1", ReplyRoute("c-2"), context)  # gone: the window closed
    assert publisher.published == []


# --- nothing to answer (yet) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "pods",
    [
        pytest.param([], id="no-pod-yet"),
        pytest.param([{"state": waiting("ContainerCreating")}], id="container-creating"),
        pytest.param(
            [{"phase": "Running", "state": {"running": {"startedAt": "2025-01-10T10:00:05Z"}}}],
            id="running",
        ),
    ],
)
def test_running_job_is_left_alone(pods: list[dict[str, Any]]) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    for pod in pods:
        kube.add_pod(make_pod(job, **pod))
    job = kube.update_status("t-1", RUNNING)

    result = run(kube, publisher, job)

    assert result.state is Finalized.RUNNING
    assert publisher.published == []
    assert kube.get_job("t-1") == job  # not even claimed


def test_already_answered_job_is_deleted_without_a_second_response() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    job = kube.patch_job(
        "t-1", {"metadata": {"annotations": {RESPONDED_ANNOTATION: "2025-01-10T10:09:00Z"}}}
    )

    result = run(kube, publisher, job)

    assert result.state is Finalized.ALREADY_ANSWERED
    assert publisher.published == []
    assert kube.get_job("t-1") is None


def test_job_that_no_longer_exists_is_gone() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    kube.remove_job("t-1")

    assert run(kube, publisher, job).state is Finalized.GONE
    assert publisher.published == []


def test_new_job_under_the_same_name_is_not_answered_for_the_old_one() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    old = ended_job(kube)
    kube.remove_job("t-1")
    new = ended_job(kube)

    result = run(kube, publisher, old)

    assert result.state is Finalized.GONE
    assert publisher.published == []
    assert kube.get_job("t-1") == new


# --- deleted before it was answered (our finalizer holds it) -----------------------------------


@pytest.mark.parametrize(
    ("pods", "error"),
    [
        pytest.param(
            [{"phase": "Running", "state": {"running": {}}}],
            "the Job was deleted before it finished (its pod had started)",
            id="running",
        ),
        pytest.param(
            [{"scheduled": FULL}],
            "the Job was deleted before it finished (it had not started)",
            id="waiting-for-room",
        ),
        pytest.param(
            [], "the Job was deleted before it finished (it had not started)", id="no-pod"
        ),
    ],
)
def test_a_job_deleted_before_it_ended_is_answered_with_how_far_it_got_then_let_go(
    pods: list[dict[str, Any]], error: str
) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube, route=ReplyRoute("c-9", "replies"))
    for pod in pods:
        kube.add_pod(make_pod(job, **pod))
    kube.update_status("t-1", RUNNING)
    kube.delete_job("t-1")  # someone deletes it: the finalizer keeps it, terminating
    job = kube.get_job("t-1")
    assert job is not None

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert publisher.published == [
        Published(Response(id="t-1", error=error), ReplyRoute("c-9", "replies"), MESSAGE_ID)
    ]
    assert kube.get_job("t-1") is None  # the finalizer went with the answer
    assert RESPONDED_ANNOTATION in kube.annotations("t-1")


def test_a_finished_job_deleted_before_it_was_answered_gets_its_real_answer() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    kube.delete_job("t-1")  # e.g. its TTL ran out while no worker was running
    job = kube.get_job("t-1")
    assert job is not None

    run(kube, publisher, job)

    assert publisher.responses == [Response(id="t-1", output="hello\n", exit=0)]
    assert kube.get_job("t-1") is None


def test_a_finished_job_whose_pod_went_with_its_deletion_is_answered_that_its_result_is_lost() -> (
    None
):
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    kube.delete_job("t-1")  # e.g. by its TTL, which deletes the pods first (foreground)
    kube.pods.clear()
    job = kube.get_job("t-1")
    assert job is not None

    run(kube, publisher, job)

    assert publisher.responses == [Response(id="t-1", error=RESULT_DELETED_ERROR)]
    assert kube.get_job("t-1") is None


def test_every_job_is_let_go_of_once_answered_and_other_finalizers_stay() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    kube.jobs["t-1"]["metadata"]["finalizers"].append("example.com/audit")

    run(kube, publisher, job)

    left = kube.get_job("t-1")
    assert left is not None
    assert left["metadata"]["deletionTimestamp"]
    assert left["metadata"]["finalizers"] == ["example.com/audit"]
    assert len(publisher.published) == 1


# --- the claim ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "held_by",
    [
        pytest.param("worker-b/3 2025-01-10T10:09:00Z", id="taken-a-minute-ago"),
        pytest.param("worker-b/3 2025-01-10T10:08:00Z", id="exactly-the-ttl-old"),
    ],
)
def test_fresh_claim_of_another_worker_is_respected(held_by: str) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    job = claim(kube, held_by)

    result = run(kube, publisher, job)

    assert result.state is Finalized.CLAIMED
    assert result.retry_in == CLAIM_TTL.total_seconds()
    assert publisher.published == []
    assert kube.get_job("t-1") == job


@pytest.mark.parametrize(
    "held_by",
    [
        pytest.param("worker-b/3 2025-01-10T10:07:59Z", id="expired-claim-of-another-worker"),
        pytest.param(f"{HOLDER}#0 2025-01-10T10:09:30Z", id="own-claim-from-an-earlier-attempt"),
        pytest.param("worker-b/3 yesterday", id="unreadable-claim"),
    ],
)
def test_expired_or_own_claim_is_taken_over(held_by: str) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    job = claim(kube, held_by)

    result = run(kube, publisher, job, attempt=1)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [Response(id="t-1", output="hello\n", exit=0)]
    assert kube.annotations("t-1")[CLAIM_ANNOTATION] == f"{HOLDER}#1 {NOW_TEXT}"


def test_losing_the_claim_race_publishes_nothing_and_asks_to_look_again() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    rival = "worker-b/3 2025-01-10T10:10:00Z"
    kube.before_next("patch_job", lambda: claim(kube, rival))

    result = run(kube, publisher, job)

    assert result.state is Finalized.CLAIMED
    assert result.retry_in == CLAIM_TTL.total_seconds()
    assert publisher.published == []
    assert kube.annotations("t-1")[CLAIM_ANNOTATION] == rival
    assert kube.get_job("t-1") is not None


def test_a_claim_lost_to_an_unrelated_update_is_tried_again_at_once() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    label = {"metadata": {"labels": {"team": "reports"}}}
    kube.before_next("patch_job", lambda: kube.patch_job("t-1", label))  # someone else's edit

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [Response(id="t-1", output="hello\n", exit=0)]


@pytest.mark.parametrize(
    ("held_by", "attempt"),
    [
        pytest.param(f"{HOLDER}#0 2025-01-10T10:09:30Z", 0, id="a-redelivered-copy"),
        pytest.param(f"{HOLDER}#2 2025-01-10T10:09:30Z", 1, id="a-later-attempt"),
        pytest.param(f"{HOLDER} 2025-01-10T10:09:30Z", 1, id="no-attempt-in-the-claim"),
    ],
)
def test_a_copy_of_the_same_finalize_task_running_at_once_is_a_rival(
    held_by: str, attempt: int
) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    job = claim(kube, held_by)

    result = run(kube, publisher, job, attempt=attempt)

    assert result.state is Finalized.CLAIMED
    assert publisher.published == []


def test_a_failed_answer_lets_go_of_its_claim_so_a_redelivered_copy_answers_at_once() -> None:
    kube = FakeKube()
    job = ended_job(kube)
    gone = ConnectionResetError(104, "broker connection lost")

    with pytest.raises(ConnectionResetError):
        run(kube, FakePublisher(error=gone), job)
    assert CLAIM_ANNOTATION not in kube.annotations("t-1")
    publisher = FakePublisher()
    result = run(kube, publisher, job)  # the same message, delivered again: the same attempt

    assert result.state is Finalized.ANSWERED
    assert len(publisher.published) == 1


def test_a_claim_taken_over_while_the_logs_were_read_is_not_answered_twice() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    rival = "worker-b/3/f-9#0 2025-01-10T10:12:01Z"  # ours had expired: the log read was slow
    clock = [NOW]

    def slow_read() -> None:
        clock[0] = NOW + CLAIM_TTL + timedelta(seconds=1)
        claim(kube, rival)

    kube.before_next("read_log", slow_read)
    context = Context(kube, publisher, SETTINGS, HOLDER, clock=lambda: clock[0])

    result = finalize("t-1", job["metadata"]["uid"], context, now=NOW)

    assert result.state is Finalized.CLAIMED
    assert publisher.published == []
    assert kube.annotations("t-1")[CLAIM_ANNOTATION] == rival
    assert RESPONDED_ANNOTATION not in kube.annotations("t-1")


def test_an_update_that_is_no_claim_does_not_stop_the_answer() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    kube.before_next("read_log", lambda: kube.update_status("t-1", COMPLETE))  # the controller

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert len(publisher.published) == 1
    assert kube.get_job("t-1") is None


def test_a_job_deleted_while_it_was_answered_is_marked_before_it_goes() -> None:
    kube = FakeKube()
    job = ended_job(kube)
    publisher = FakePublisher(on_publish=lambda _: kube.delete_job("t-1"))  # someone, meanwhile

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert kube.get_job("t-1") is None
    assert RESPONDED_ANNOTATION in kube.annotations("t-1")  # so its DELETED event says answered


def test_another_finalize_task_of_the_same_worker_is_a_rival_too() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    ended_job(kube)
    job = claim(kube, f"{HOLDER}/other-task 2025-01-10T10:09:30Z")

    result = run(kube, publisher, job, holder=f"{HOLDER}/this-task")

    assert result.state is Finalized.CLAIMED
    assert publisher.published == []


# --- pod never created ---------------------------------------------------------------------------

SA_MISSING = (
    'Error creating: pods "t-1-" is forbidden: error looking up service account '
    'dispatcher/job-internal: serviceaccount "job-internal" not found'
)


def test_job_whose_pod_cannot_be_created_is_answered_with_the_controllers_reason() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    kube.events.append(failed_create(job, SA_MISSING))

    result = run(kube, publisher, job)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [
        Response(
            id="t-1",
            error="the pod could not be created: its service account "
            "(INTERNAL_SERVICE_ACCOUNT_NAME) is missing",
        )
    ]
    assert "t-1" not in kube.jobs  # deleted: the id is free again


def test_job_without_pods_and_without_failure_events_is_left_running() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    other = create_job_for(kube, dataclasses.replace(TASK, id="t-2"))
    kube.events.append(failed_create(other, SA_MISSING))  # another Job's trouble

    assert run(kube, publisher, job).state is Finalized.RUNNING
    assert publisher.responses == []


def test_a_job_of_another_installation_is_never_answered() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    kube.patch_job("t-1", {"metadata": {"labels": {INSTANCE_LABEL: "someone-else"}}})
    kube.events.append(failed_create(job, SA_MISSING))

    assert run(kube, publisher, job).state is Finalized.GONE
    assert publisher.responses == []
    assert "t-1" in kube.jobs


# --- waiting for room ---------------------------------------------------------------------------

QUOTA_USED_UP = (
    'Error creating: pods "t-1-abcde" is forbidden: exceeded quota: tasks, '
    "requested: pods=1, used: pods=2, limited: pods=2"
)
QUOTA_TOO_SMALL = (
    'Error creating: pods "t-1-abcde" is forbidden: exceeded quota: compute, '
    "requested: requests.cpu=64, used: requests.cpu=0, limited: requests.cpu=2"
)


def run_with(kube: FakeKube, publisher: FakePublisher, job: KubeObject, **env: str) -> Result:
    settings = Settings.from_env({"JOB_NAMESPACE": SETTINGS.job_namespace, **env})
    context = Context(kube, publisher, settings, HOLDER)
    return finalize(job["metadata"]["name"], job["metadata"]["uid"], context, now=NOW)


@pytest.mark.parametrize(
    "trouble",
    [
        pytest.param("full", id="pod-waits-for-a-full-node"),
        pytest.param("quota", id="quota-used-up"),
        pytest.param("nothing-yet", id="no-pod-and-no-event-yet"),
    ],
)
def test_a_task_waiting_for_room_is_not_answered_within_its_queue_timeout(trouble: str) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)  # 600 s old at NOW
    if trouble == "full":
        kube.add_pod(make_pod(job, scheduled=FULL))
    elif trouble == "quota":
        kube.events.append(failed_create(job, QUOTA_USED_UP))

    result = run_with(kube, publisher, job, QUEUE_TIMEOUT_SECONDS="601")

    assert result.state is Finalized.RUNNING
    assert publisher.responses == []
    assert "t-1" in kube.jobs


@pytest.mark.parametrize(
    ("trouble", "why"),
    [
        pytest.param("full", FULL_MESSAGE, id="pod-waited-for-a-full-node"),
        pytest.param("quota", QUOTA_USED_UP, id="quota-stayed-used-up"),
    ],
)
def test_a_task_that_waited_its_whole_queue_timeout_is_answered_and_removed(
    trouble: str, why: str
) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    if trouble == "full":
        kube.add_pod(make_pod(job, scheduled=FULL))
    else:
        kube.events.append(failed_create(job, QUOTA_USED_UP))

    result = run_with(kube, publisher, job, QUEUE_TIMEOUT_SECONDS="600")

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [
        Response(
            id="t-1",
            error=f"the task waited 600 s for room in the cluster and never started: {why}",
        )
    ]
    assert "t-1" not in kube.jobs


def test_a_started_task_is_never_answered_for_its_queue_timeout() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    kube.add_pod(make_pod(job, phase="Running", state={"running": {"startedAt": T0}}))

    assert run_with(kube, publisher, job, QUEUE_TIMEOUT_SECONDS="60").state is Finalized.RUNNING
    assert publisher.responses == []


def test_a_quota_that_can_never_admit_the_pod_is_answered_with_its_reason() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    kube.events.append(failed_create(job, QUOTA_TOO_SMALL))

    assert run(kube, publisher, job).state is Finalized.ANSWERED
    assert publisher.responses == [
        Response(
            id="t-1",
            error="the pod could not be created: it asks for more than a ResourceQuota of the "
            "namespace ever allows",
        )
    ]


def test_a_cluster_autoscaler_adding_a_node_turns_cannot_be_scheduled_into_a_wait() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube)
    pod = make_pod(job, scheduled=UNSCHEDULABLE)
    kube.add_pod(pod)
    kube.events.append(
        {
            "metadata": {"name": "t-1-x7k2p.2", "namespace": SETTINGS.job_namespace},
            "involvedObject": {"kind": "Pod", "name": POD, "uid": pod["metadata"]["uid"]},
            "reason": "TriggeredScaleUp",
            "message": "pod triggered scale-up: [{pool-large 1->2 (max: 5)}]",
        }
    )

    assert run(kube, publisher, job).state is Finalized.RUNNING
    assert publisher.responses == []


def test_a_tasks_own_timeout_is_named_in_the_deadline_error() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube, dataclasses.replace(TASK, timeout_seconds=30))
    kube.add_pod(
        make_pod(job, phase="Failed", state=terminated(137, "Error"), reason="DeadlineExceeded")
    )
    kube.logs[POD] = "started\n"
    kube.update_status("t-1", DEADLINE)

    run(kube, publisher, job)

    assert publisher.responses == [
        Response(
            id="t-1", output="started\n", error="deadline exceeded: the task ran longer than 30 s"
        )
    ]


# --- what the watch already showed ------------------------------------------------------------


def seen_copies(kube: FakeKube, job: KubeObject) -> tuple[KubeObject, KubeObject]:
    """The Job and its pod as the watch showed them (the small copies the reactor hands on)."""
    return job_snapshot(job), pod_snapshot(kube.pods[0])


def test_an_ended_job_the_watch_showed_is_answered_with_three_requests() -> None:
    """Claim, log, release: no read of the Job, no list of its pods, no delete (its TTL)."""
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    seen, pod = seen_copies(kube, job)
    kube.calls.clear()

    result = finalize("t-1", job["metadata"]["uid"], context(kube, publisher), seen=seen, pod=pod)

    assert result.state is Finalized.ANSWERED
    assert kube.calls == ["patch_job", "read_log", "release_job"]
    assert publisher.responses == [Response(id="t-1", output="hello\n", exit=0)]
    assert kube.get_job("t-1") is None  # TTL 0: deleted by Kubernetes, not by us


def test_a_copy_that_is_behind_costs_one_read_and_nothing_else() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    seen, pod = seen_copies(kube, job)
    kube.patch_job("t-1", {"metadata": {"labels": {"team": "a"}}})  # someone else's update
    kube.calls.clear()

    result = finalize("t-1", job["metadata"]["uid"], context(kube, publisher), seen=seen, pod=pod)

    assert result.state is Finalized.ANSWERED
    assert kube.calls == ["patch_job", "get_job", "patch_job", "read_log", "release_job"]
    assert len(publisher.published) == 1


@pytest.mark.parametrize("answered", [True, False], ids=["answered-meanwhile", "still-running"])
def test_a_copy_is_never_trusted_over_the_job_itself(answered: bool) -> None:
    """A copy that shows the Job running, or a Job answered meanwhile, is read again first."""
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    seen, pod = seen_copies(kube, job)
    if answered:
        kube.patch_job("t-1", {"metadata": {"annotations": {RESPONDED_ANNOTATION: "now"}}})
        seen["metadata"]["annotations"][RESPONDED_ANNOTATION] = "now"
    else:
        seen["status"] = {}

    result = finalize("t-1", job["metadata"]["uid"], context(kube, publisher), seen=seen, pod=pod)

    assert result.state is (Finalized.ALREADY_ANSWERED if answered else Finalized.ANSWERED)
    assert len(publisher.published) == (0 if answered else 1)
    assert kube.get_job("t-1") is None


def test_a_slow_log_read_renews_the_claim_before_the_answer() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended_job(kube)
    clock = [NOW]
    kube.before_next("read_log", lambda: clock.__setitem__(0, NOW + RENEW_AFTER))
    kube.calls.clear()

    context_ = Context(kube, publisher, SETTINGS, HOLDER, clock=lambda: clock[0])
    result = finalize("t-1", job["metadata"]["uid"], context_, now=NOW)

    assert result.state is Finalized.ANSWERED
    assert kube.calls == [
        "get_job",
        "list_pods",
        "patch_job",
        "read_log",
        "patch_job",
        "release_job",
    ]


def context(kube: FakeKube, publisher: FakePublisher) -> Context:
    return Context(kube, publisher, SETTINGS, HOLDER, clock=lambda: NOW)
