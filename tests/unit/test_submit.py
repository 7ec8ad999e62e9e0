"""Submit: one Job per task id; a repeated delivery joins it, a different task is refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dispatcher.core.submit import Submitted, submit
from dispatcher.errors import (
    ConflictError,
    ForbiddenError,
    InvalidSpecError,
    KubeError,
    TaskConflictError,
    TransientKubeError,
)
from dispatcher.kube.conventions import (
    CORRELATION_ID_ANNOTATION,
    REPLY_TO_ANNOTATION,
    RESPONDED_ANNOTATION,
    TASK_HASH_ANNOTATION,
)
from dispatcher.kube.routes import MAX_ROUTES, routes_of
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import COMPLETE, FAILED, SETTINGS, TASK, WINDOW, FakeKube

ROUTE = ReplyRoute("c-42", "amq.rabbitmq.reply-to.g1h2AA")


def test_new_task_creates_its_job() -> None:
    kube = FakeKube()

    assert submit(TASK, ROUTE, kube=kube, settings=SETTINGS) is Submitted.CREATED

    job = kube.get_job("t-1")
    assert job is not None
    assert job["metadata"]["annotations"] == {
        TASK_HASH_ANNOTATION: TASK.digest(),
        CORRELATION_ID_ANNOTATION: "c-42",
        REPLY_TO_ANNOTATION: "amq.rabbitmq.reply-to.g1h2AA",
    }
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == TASK.image


def test_same_task_delivered_again_joins_the_existing_job() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    before = kube.get_job("t-1")

    assert submit(TASK, ROUTE, kube=kube, settings=SETTINGS) is Submitted.JOINED

    assert list(kube.jobs) == ["t-1"]
    assert kube.get_job("t-1") == before  # its route is answered already


def test_a_copy_with_a_route_of_its_own_joins_and_adds_its_route() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    other, third = ReplyRoute("c-43", "amq.gen-second"), ReplyRoute("c-44")

    assert submit(TASK, other, kube=kube, settings=SETTINGS) is Submitted.JOINED
    assert submit(TASK, third, kube=kube, settings=SETTINGS) is Submitted.JOINED
    assert submit(TASK, other, kube=kube, settings=SETTINGS) is Submitted.JOINED  # once only

    assert list(kube.jobs) == ["t-1"]
    assert routes_of(kube.annotations("t-1")) == [ROUTE, other, third]


def test_a_copy_joining_while_another_changes_the_job_looks_again() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    rival = ReplyRoute("c-50")
    kube.before_next("patch_job", lambda: submit(TASK, rival, kube=kube, settings=SETTINGS))

    assert submit(TASK, ReplyRoute("c-51"), kube=kube, settings=SETTINGS) is Submitted.JOINED

    assert routes_of(kube.annotations("t-1")) == [ROUTE, rival, ReplyRoute("c-51")]


@pytest.mark.parametrize(
    "status", [pytest.param(COMPLETE, id="ran-to-its-end"), pytest.param(FAILED, id="failed")]
)
def test_the_same_task_sent_again_after_its_answer_is_to_be_answered_again(status: Any) -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=WINDOW)
    kube.update_status("t-1", status)
    kube.patch_job("t-1", {"metadata": {"annotations": {RESPONDED_ANNOTATION: "now"}}})

    assert submit(TASK, ReplyRoute("c-60"), kube=kube, settings=WINDOW) is Submitted.ANSWERED
    with pytest.raises(TaskConflictError):
        submit(dataclasses.replace(TASK, args=("other",)), ROUTE, kube=kube, settings=WINDOW)
    assert list(kube.jobs) == ["t-1"]


def test_without_a_window_the_same_task_sent_again_runs_anew_once_its_job_is_gone() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    kube.update_status("t-1", COMPLETE)  # answered: its TTL of 0 is about to delete it
    kube.patch_job("t-1", {"metadata": {"annotations": {RESPONDED_ANNOTATION: "now"}}})

    with pytest.raises(TransientKubeError):  # retried
        submit(TASK, ReplyRoute("c-60"), kube=kube, settings=SETTINGS)
    kube.remove_job("t-1")
    assert submit(TASK, ReplyRoute("c-60"), kube=kube, settings=SETTINGS) is Submitted.CREATED


def test_a_copy_does_not_join_a_job_answered_with_an_error_and_going() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)  # e.g. its image could not be pulled
    kube.patch_job("t-1", {"metadata": {"annotations": {RESPONDED_ANNOTATION: "now"}}})

    with pytest.raises(TransientKubeError):  # retried: once the Job is gone, it runs anew
        submit(TASK, ReplyRoute("c-60"), kube=kube, settings=SETTINGS)


def test_a_job_takes_at_most_max_routes() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    for number in range(MAX_ROUTES + 5):
        submit(TASK, ReplyRoute(f"c-{number}"), kube=kube, settings=SETTINGS)

    assert len(routes_of(kube.annotations("t-1"))) == MAX_ROUTES


def test_different_task_with_a_taken_id_is_a_conflict() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    other = dataclasses.replace(TASK, args=("echo something else",))

    with pytest.raises(TaskConflictError) as caught:
        submit(other, ReplyRoute(), kube=kube, settings=SETTINGS)

    assert caught.value.task_id == "t-1"
    assert str(caught.value) == (
        "id: a different task with id 't-1' is running or was just answered; use a new id"
    )
    assert kube.annotations("t-1")[TASK_HASH_ANNOTATION] == TASK.digest()


def test_job_of_the_same_name_without_a_task_hash_is_a_conflict() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    kube.patch_job("t-1", {"metadata": {"annotations": {TASK_HASH_ANNOTATION: None}}})

    with pytest.raises(TaskConflictError):
        submit(TASK, ROUTE, kube=kube, settings=SETTINGS)


def test_the_same_task_never_joins_another_installations_job() -> None:
    # Two installations share a namespace, and a Job name is the task id: the other one's Job
    # (here kept answered for its idempotency window) is neither joined nor answered again.
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=dataclasses.replace(SETTINGS, dispatcher_name="blue"))
    kube.update_status("t-1", COMPLETE)

    with pytest.raises(TaskConflictError):
        submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    assert routes_of(kube.annotations("t-1")) == [ROUTE]


def test_job_deleted_between_create_and_read_is_a_transient_error() -> None:
    kube = FakeKube()
    kube.fail_next("create_job", ConflictError('jobs.batch "t-1" already exists', 409))

    with pytest.raises(TransientKubeError, match="Job t-1 was deleted while it was being created"):
        submit(TASK, ROUTE, kube=kube, settings=SETTINGS)

    assert kube.jobs == {}


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(TransientKubeError("create Job t-1: ConnectError: refused"), id="unreachable"),
        pytest.param(TransientKubeError("create Job t-1: etcdserver: timeout", 503), id="503"),
        pytest.param(ForbiddenError("create Job t-1: jobs.batch is forbidden", 403), id="403"),
        pytest.param(InvalidSpecError("create Job t-1: Job.batch is invalid", 422), id="422"),
    ],
)
def test_kube_error_on_create_propagates_unchanged(error: KubeError) -> None:
    kube = FakeKube()
    kube.fail_next("create_job", error)

    with pytest.raises(KubeError) as caught:
        submit(TASK, ROUTE, kube=kube, settings=SETTINGS)

    assert caught.value is error
    assert kube.jobs == {}


def test_kube_error_while_reading_the_existing_job_propagates() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    error = TransientKubeError("read Job t-1: etcdserver: leader changed", 500)
    kube.fail_next("get_job", error)

    with pytest.raises(TransientKubeError) as caught:
        submit(TASK, ROUTE, kube=kube, settings=SETTINGS)

    assert caught.value is error
