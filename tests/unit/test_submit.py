"""Submit: one Job per task id; a repeated delivery joins it, a different task is refused."""

from __future__ import annotations

import dataclasses

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
    TASK_HASH_ANNOTATION,
)
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import SETTINGS, TASK, FakeKube

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


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(ROUTE, id="same-delivery-again"),
        pytest.param(ReplyRoute("c-43"), id="same-task-other-properties"),
    ],
)
def test_same_task_delivered_again_joins_the_existing_job(route: ReplyRoute) -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    before = kube.get_job("t-1")

    assert submit(TASK, route, kube=kube, settings=SETTINGS) is Submitted.JOINED

    assert list(kube.jobs) == ["t-1"]
    assert kube.get_job("t-1") == before  # the first delivery's Job and route are kept


def test_different_task_with_a_taken_id_is_a_conflict() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    other = dataclasses.replace(TASK, args=("echo something else",))

    with pytest.raises(TaskConflictError) as caught:
        submit(other, ReplyRoute(), kube=kube, settings=SETTINGS)

    assert caught.value.task_id == "t-1"
    assert str(caught.value) == (
        "id: a different task with id 't-1' is already running; use a new id"
    )
    assert kube.annotations("t-1")[TASK_HASH_ANNOTATION] == TASK.digest()


def test_job_of_the_same_name_without_a_task_hash_is_a_conflict() -> None:
    kube = FakeKube()
    submit(TASK, ROUTE, kube=kube, settings=SETTINGS)
    kube.patch_job("t-1", {"metadata": {"annotations": {TASK_HASH_ANNOTATION: None}}})

    with pytest.raises(TaskConflictError):
        submit(TASK, ROUTE, kube=kube, settings=SETTINGS)


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
