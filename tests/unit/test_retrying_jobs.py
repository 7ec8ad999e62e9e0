"""A Job that runs its pod again: the reactor does not take a failed pod for the Job's end,
counts the Job once, tells each retry once; finalize answers with the last attempt and lists
every attempt; a cancel in the backoff and a pod past its deadline end the task."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from dispatcher.core.cancel import Cancelled, cancel
from dispatcher.core.finalize import Context, Finalized, finalize
from dispatcher.core.progress import Progress
from dispatcher.core.reactor import Reactor
from dispatcher.core.request import FinalizeRequest
from dispatcher.core.status_text import task_text
from dispatcher.core.taskview import read_task
from dispatcher.kube.snapshot import job_snapshot, pod_snapshot
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Attempt, Response
from dispatcher.messages.route import ReplyRoute

from .fakes import (
    SETTINGS,
    TASK,
    FakeEvents,
    FakeKube,
    FakePublisher,
    KubeObject,
    condition,
    create_job_for,
    job_status,
    make_pod,
    terminated,
)

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)
RETRYING = dataclasses.replace(TASK, retries=2)
BACKOFF = job_status(failed=1)  # the first attempt failed; the next pod comes after the backoff
DONE_AFTER_TWO_FAILURES = job_status(
    condition("SuccessCriteriaMet", reason="CompletionsReached"),
    condition("Complete", reason="CompletionsReached"),
    succeeded=1,
    failed=2,
)


def attempt_pod(job: KubeObject, number: int, exit_code: int, **kwargs: Any) -> KubeObject:
    phase = "Succeeded" if exit_code == 0 else "Failed"
    reason = "Completed" if exit_code == 0 else "Error"
    pod = make_pod(job, f"a{number}", phase=phase, state=terminated(exit_code, reason), **kwargs)
    pod["metadata"]["creationTimestamp"] = f"2025-01-10T10:0{number}:00Z"
    return pod


def retrying_job(kube: FakeKube, *exits: int) -> KubeObject:
    job = create_job_for(kube, RETRYING)
    for number, exit_code in enumerate(exits, 1):
        kube.add_pod(attempt_pod(job, number, exit_code))
        kube.logs[f"t-1-a{number}"] = f"attempt {number}\n"
    return job


def context(kube: FakeKube, publisher: FakePublisher) -> Context:
    return Context(kube, publisher, SETTINGS, "worker-a/7", clock=lambda: NOW)


# --- the reactor -------------------------------------------------------------------------------


def test_a_failed_attempt_is_not_the_end_of_a_job_that_runs_again() -> None:
    requests: list[FinalizeRequest] = []
    told: list[tuple[int, int | None]] = []
    react = Reactor(
        requests.append,
        stuck_grace_seconds=60,
        on_retrying=lambda job, attempt, exit_code: told.append((attempt, exit_code)),
    )
    kube = FakeKube()
    job = retrying_job(kube, 3)
    react.on_pod("MODIFIED", kube.pods[0])  # the first attempt failed with exit 3

    for _ in range(3):  # the Job in its backoff, seen again and again (and re-listed)
        react.on_job("MODIFIED", kube.update_status("t-1", BACKOFF))
    react.on_job("LISTED", kube.update_status("t-1", job_status(active=1, failed=1)))

    assert requests == []
    assert react.active_jobs() == 1  # MAX_ACTIVE_JOBS counts the task once, however often it runs
    assert told == [(1, 3)]
    react.on_job("MODIFIED", kube.update_status("t-1", job_status(failed=2)))
    assert told == [(1, 3)]  # the Job counts a second failure whose pod was not seen yet
    second = attempt_pod(job, 2, 4)
    react.on_pod("MODIFIED", second)
    react.on_pod("MODIFIED", second)
    assert told == [(1, 3), (2, 4)]
    react.on_job("MODIFIED", kube.update_status("t-1", DONE_AFTER_TWO_FAILURES))
    assert requests == [FinalizeRequest("t-1", job["metadata"]["uid"], 0.0, "job ended")]
    assert react.active_jobs() == 0


def test_a_retry_is_told_with_its_exit_whichever_watch_shows_it_first() -> None:
    told: list[tuple[str, int, int | None]] = []
    react = Reactor(
        lambda request: None,
        stuck_grace_seconds=60,
        on_retrying=lambda job, attempt, code: told.append(
            (job["metadata"]["annotations"]["job-dispatcher.io/reply-to"], attempt, code)
        ),
    )
    kube = FakeKube()
    job = create_job_for(kube, RETRYING, ReplyRoute("c-1", "replies"))
    failed = attempt_pod(job, 1, 75)

    react.on_job("MODIFIED", kube.update_status("t-1", BACKOFF))  # the Job's count came first
    assert told == []
    react.on_pod("MODIFIED", failed)
    assert told == [("replies", 1, 75)]


def test_the_retry_event_has_one_message_id_per_attempt() -> None:
    events = FakeEvents()
    progress = Progress(events, clock=lambda: NOW)
    kube = FakeKube()
    job = retrying_job(kube, 3)

    progress.retrying(job, 1, 3)

    [(event, _, message_id)] = events.events
    assert event == ProgressEvent(
        id="t-1", state="retrying", time="2025-01-10T10:10:00Z", exit=3, attempt=1
    )
    assert message_id == f"t-1.{job['metadata']['uid']}.retrying.1"
    assert ProgressEvent.decode(event.encode()) == event


def test_a_pod_past_its_deadline_is_no_retry_to_tell() -> None:
    told: list[int] = []
    react = Reactor(
        lambda request: None,
        stuck_grace_seconds=60,
        on_retrying=lambda job, attempt, code: told.append(attempt),
    )
    kube = FakeKube()
    job = create_job_for(kube, RETRYING)

    react.on_pod("MODIFIED", attempt_pod(job, 1, 137, reason="DeadlineExceeded"))
    react.on_job("MODIFIED", kube.update_status("t-1", BACKOFF))

    assert told == []


def test_a_pod_past_its_deadline_is_finalized_at_once_only_when_its_task_could_run_again() -> None:
    for task, expected in ((RETRYING, 1), (TASK, 0)):
        requests: list[FinalizeRequest] = []
        react = Reactor(requests.append, stuck_grace_seconds=60)
        job = create_job_for(FakeKube(), task)
        late = make_pod(
            job, phase="Failed", state=terminated(137, "Error"), reason="DeadlineExceeded"
        )

        react.on_pod("MODIFIED", late)
        react.on_pod("MODIFIED", late)

        assert (
            requests
            == [FinalizeRequest("t-1", job["metadata"]["uid"], 0.0, "DEADLINE_EXCEEDED")][:expected]
        )


# --- finalize ----------------------------------------------------------------------------------


def test_the_answer_is_the_last_attempts_with_every_attempt() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = retrying_job(kube, 3, 3, 0)
    ended = kube.update_status("t-1", DONE_AFTER_TWO_FAILURES)
    # the watch's copies: the Job, and the pod whose end it saw last
    seen, pod = job_snapshot(ended), pod_snapshot(kube.pods[-1])

    result = finalize(
        "t-1", job["metadata"]["uid"], context(kube, publisher), NOW, seen=seen, pod=pod
    )

    assert result.state is Finalized.ANSWERED
    [response] = publisher.responses
    first = Attempt(exit=3, node="node-1", start="2025-01-10T10:00:00Z", end="2025-01-10T10:05:00Z")
    last = dataclasses.replace(first, exit=0)
    assert response == Response(
        id="t-1", output="attempt 3\n", exit=0, attempts=(first, first, last)
    )
    assert "list_pods" in kube.calls  # one pod's copy cannot tell of the others


def test_a_job_in_its_backoff_is_not_answered() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = retrying_job(kube, 3)
    kube.update_status("t-1", BACKOFF)

    result = finalize("t-1", job["metadata"]["uid"], context(kube, publisher), NOW)

    assert result.state is Finalized.RUNNING
    assert publisher.published == []


def test_a_cancel_during_the_backoff_stops_the_job_and_answers_cancelled() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = retrying_job(kube, 3)
    kube.update_status("t-1", BACKOFF)

    assert cancel("t-1", ReplyRoute("c-9"), kube=kube, settings=SETTINGS, now=NOW) is (
        Cancelled.STOPPING
    )
    result = finalize("t-1", job["metadata"]["uid"], context(kube, publisher), NOW)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [
        Response(id="t-1", output="attempt 1\n", error="cancelled"),
        Response(id="t-1", output="attempt 1\n", error="cancelled"),
    ]  # the task's route and the cancel's
    assert kube.get_job("t-1") is None


def test_a_pod_past_its_deadline_ends_the_task_before_the_job_runs_it_again() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube, dataclasses.replace(RETRYING, timeout_seconds=30))
    kube.add_pod(attempt_pod(job, 1, 137, reason="DeadlineExceeded"))
    kube.update_status("t-1", BACKOFF)

    result = finalize("t-1", job["metadata"]["uid"], context(kube, publisher), NOW)

    assert result.state is Finalized.ANSWERED
    assert publisher.responses == [
        Response(id="t-1", output="", error="deadline exceeded: the task ran longer than 30 s")
    ]
    assert kube.get_job("t-1") is None  # deleted: no next attempt


# --- what an operator sees ---------------------------------------------------------------------


def test_the_task_view_lists_the_attempts_of_a_job_that_ran_more_than_once() -> None:
    kube = FakeKube()
    retrying_job(kube, 3, 0)
    kube.update_status("t-1", job_status(condition("Complete"), succeeded=1, failed=1))

    view = read_task(kube, "t-1", dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=600)

    assert view is not None
    assert [a["exit"] for a in view.to_json()["attempts"]] == [3, 0]
    text = task_text(view)
    assert "attempts\n   1  exit 3 on node-1  2025-01-10T10:00:00Z .. 2025-01-10T10:05:00Z" in text
    assert "   2  exit 0 on node-1" in text


def test_the_task_view_of_a_job_that_ran_once_is_as_before() -> None:
    kube = FakeKube()
    retrying_job(kube, 0)

    view = read_task(kube, "t-1", dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=600)

    assert view is not None
    assert "attempts" not in view.to_json()
    assert "attempts" not in task_text(view)


def test_after_a_restart_the_retry_is_told_with_the_newest_failed_attempts_exit() -> None:
    told: list[tuple[int, int | None]] = []
    react = Reactor(
        lambda request: None,
        stuck_grace_seconds=60,
        on_retrying=lambda job, attempt, code: told.append((attempt, code)),
    )
    kube = FakeKube()
    retrying_job(kube, 3, 4)

    for pod in reversed(kube.pods):  # a re-list shows the pods in any order
        react.on_pod("LISTED", pod)
    react.on_job("LISTED", kube.update_status("t-1", job_status(failed=2)))

    assert told == [(2, 4)]
