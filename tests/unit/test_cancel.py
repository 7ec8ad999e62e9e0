"""Cancel: a task in progress is stopped and answered ``cancelled`` once, on every route."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.core.cancel import Cancelled, cancel, not_in_progress_error
from dispatcher.core.finalize import Context, Finalized, finalize
from dispatcher.core.submit import Submitted, submit
from dispatcher.core.tombstones import is_buried, sweep, tombstone_manifest
from dispatcher.kube.conventions import CANCELLED_ANNOTATION, INSTANCE_LABEL, tombstone_name
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import (
    COMPLETE,
    PULL_MESSAGE,
    RUNNING,
    SETTINGS,
    TASK,
    UNSCHEDULABLE,
    FakeKube,
    FakePublisher,
    KubeObject,
    create_job_for,
    make_pod,
    terminated,
    waiting,
)

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)
TASK_ROUTE = ReplyRoute(correlation_id="c-1", reply_to="amq.gen-task")
CANCEL_ROUTE = ReplyRoute(correlation_id="c-1.cancel", reply_to="amq.gen-task")
POD = "t-1-x7k2p"


def job_with_pod(kube: FakeKube, **pod: Any) -> KubeObject:
    job = create_job_for(kube, route=TASK_ROUTE)
    kube.add_pod(make_pod(job, **pod))
    return kube.update_status("t-1", RUNNING)


def finalize_now(kube: FakeKube, publisher: FakePublisher, job: KubeObject) -> Finalized:
    context = Context(kube, publisher, SETTINGS, "worker-a/1", clock=lambda: NOW)
    return finalize("t-1", job["metadata"]["uid"], context, now=NOW).state


def test_a_running_task_is_stopped_and_answered_cancelled_with_its_logs_so_far() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = job_with_pod(kube, phase="Running", state={"running": {"startedAt": "x"}})
    kube.logs[POD] = "step 1\nstep 2\n"

    assert cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=NOW) is Cancelled.STOPPING
    stopping = kube.jobs["t-1"]["metadata"]
    assert stopping["annotations"][CANCELLED_ANNOTATION] == "2025-01-10T10:10:00Z"
    assert stopping["deletionTimestamp"]  # held by our finalizer until answered

    assert finalize_now(kube, publisher, job) is Finalized.ANSWERED
    answer = Response(id="t-1", output="step 1\nstep 2\n", error="cancelled")
    assert [(p.response, p.route) for p in publisher.published] == [
        (answer, TASK_ROUTE),
        (answer, CANCEL_ROUTE),
    ]
    assert "t-1" not in kube.jobs  # let go: its pod goes with it


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param({"scheduled": UNSCHEDULABLE}, id="queued-for-room"),
        pytest.param(
            {"state": waiting("ImagePullBackOff", PULL_MESSAGE)}, id="stuck-pulling-its-image"
        ),
    ],
)
def test_a_task_that_never_started_is_answered_cancelled_without_output(
    pod: dict[str, Any],
) -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = job_with_pod(kube, **pod)

    assert cancel("t-1", TASK_ROUTE, kube=kube, settings=SETTINGS) is Cancelled.STOPPING
    finalize_now(kube, publisher, job)

    # The same route as the task's: answered once.
    assert [(p.response, p.route) for p in publisher.published] == [
        (Response(id="t-1", error="cancelled"), TASK_ROUTE)
    ]


def test_a_second_cancel_of_the_same_task_changes_nothing_more() -> None:
    kube = FakeKube()
    job_with_pod(kube, phase="Running", state={"running": {"startedAt": "x"}})
    cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=NOW)
    first = kube.jobs["t-1"]["metadata"]["annotations"]

    assert cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS) is Cancelled.STOPPING
    assert kube.jobs["t-1"]["metadata"]["annotations"] == first


def test_another_installations_job_is_no_such_task_and_is_left_alone() -> None:
    kube = FakeKube()
    job_with_pod(kube)
    other = dataclasses.replace(SETTINGS, dispatcher_name="other")

    assert cancel("t-1", TASK_ROUTE, kube=kube, settings=other) is Cancelled.NO_SUCH_TASK
    assert kube.jobs["t-1"]["metadata"]["labels"][INSTANCE_LABEL] == "dispatcher"
    assert "deletionTimestamp" not in kube.jobs["t-1"]["metadata"]


def test_a_task_with_no_job_yet_gets_a_tombstone_and_never_runs() -> None:
    kube = FakeKube()

    assert cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=NOW) is (
        Cancelled.BEFORE_START
    )
    (tombstone,) = kube.tombstones.values()
    assert tombstone["metadata"]["name"] == "cancelled.dispatcher.t-1"
    assert tombstone["data"] == {"cancelled-at": "2025-01-10T10:10:00Z"}

    # The task is read later: submit answers it without a Job.
    assert submit(TASK, TASK_ROUTE, kube=kube, settings=SETTINGS, now=NOW) is (Submitted.CANCELLED)
    assert kube.jobs == {}


def test_a_job_created_while_the_cancel_left_its_tombstone_is_stopped_at_once() -> None:
    kube = FakeKube()
    # submit looked for a tombstone before the cancel wrote it; the cancel then looked for the
    # Job before submit created it: submit's second look sees the tombstone.
    kube.before_next(
        "create_job",
        lambda: cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=NOW),
    )

    assert submit(TASK, TASK_ROUTE, kube=kube, settings=SETTINGS, now=NOW) is (Submitted.CREATED)

    meta = kube.jobs["t-1"]["metadata"]
    assert CANCELLED_ANNOTATION in meta["annotations"]
    assert "deletionTimestamp" in meta  # held by our finalizer until it is answered cancelled


def test_a_submit_retried_after_its_job_was_made_stops_that_job_instead_of_answering_twice() -> (
    None
):
    kube = FakeKube()
    # The first attempt's create reached the API server, but its answer was lost; meanwhile
    # the cancel saw no Job and left its tombstone.
    create_job_for(kube, TASK, TASK_ROUTE)
    kube.tombstones[tombstone_name("dispatcher", "t-1")] = tombstone_manifest(
        "t-1", SETTINGS, NOW
    ) | {"metadata": {"name": tombstone_name("dispatcher", "t-1"), "uid": "cm-1"}}

    assert submit(TASK, TASK_ROUTE, kube=kube, settings=SETTINGS, now=NOW) is Submitted.JOINED
    meta = kube.jobs["t-1"]["metadata"]
    assert CANCELLED_ANNOTATION in meta["annotations"]  # stopped: its finalize answers once
    assert "deletionTimestamp" in meta


def test_a_cancel_after_a_tombstone_expired_makes_it_anew() -> None:
    kube = FakeKube()
    cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=NOW)
    later = NOW + timedelta(seconds=SETTINGS.cancel_tombstone_seconds + 60)

    assert cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=later) is (
        Cancelled.BEFORE_START
    )
    assert is_buried("t-1", kube, SETTINGS, later + timedelta(seconds=60))


def test_a_tombstone_is_honoured_for_cancel_tombstone_seconds_then_swept() -> None:
    kube = FakeKube()
    cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS, now=NOW)
    later = NOW + timedelta(seconds=SETTINGS.cancel_tombstone_seconds + 1)

    assert is_buried("t-1", kube, SETTINGS, NOW + timedelta(seconds=60))
    assert not is_buried("t-1", kube, SETTINGS, later)
    assert sweep(kube, SETTINGS, NOW) == 0
    assert sweep(kube, SETTINGS, later) == 1
    assert kube.tombstones == {}


def test_a_task_that_already_ended_keeps_its_own_answer() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = create_job_for(kube, TASK, TASK_ROUTE)
    kube.add_pod(make_pod(job, phase="Succeeded", state=terminated(0)))
    kube.logs[POD] = "done\n"
    kube.update_status("t-1", COMPLETE)

    assert cancel("t-1", CANCEL_ROUTE, kube=kube, settings=SETTINGS) is Cancelled.ENDED
    finalize_now(kube, publisher, job)
    assert publisher.responses == [Response(id="t-1", output="done\n", exit=0)]


def test_the_cancel_requests_answer_when_there_was_nothing_to_stop() -> None:
    assert not_in_progress_error("t-1", Cancelled.ENDED) == (
        "cancel: task 't-1' is not in progress: it has already ended"
    )
    assert not_in_progress_error("t-1", Cancelled.NO_SUCH_TASK) == (
        "cancel: task 't-1' is not in progress: the id names a Job of another installation"
    )
