"""A FinalizeRequest crosses the broker unchanged, and `answer` picks its case: finalize the Job,
answer a Job that is gone, or answer a kept Job once more."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from dispatcher.core.finalize import Context, Finalized
from dispatcher.core.request import FinalizeRequest, answer
from dispatcher.kube.conventions import REPLY_TO_ANNOTATION
from dispatcher.kube.outcome import DELETED_ERROR, Outcome
from dispatcher.kube.snapshot import job_snapshot, pod_snapshot
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute

from .fakes import (
    COMPLETE,
    SETTINGS,
    WINDOW,
    FakeKube,
    FakePublisher,
    KubeObject,
    create_job_for,
    make_pod,
    terminated,
)

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)


def ended(kube: FakeKube) -> KubeObject:
    job = create_job_for(kube)
    kube.add_pod(make_pod(job, phase="Succeeded", state=terminated(0)))
    kube.logs["t-1-x7k2p"] = "hello\n"
    return kube.update_status("t-1", COMPLETE)


def context(kube: FakeKube, publisher: FakePublisher, attempt: int = 0) -> Context:
    return Context(kube, publisher, SETTINGS, "worker-a/7", attempt=attempt, clock=lambda: NOW)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(FinalizeRequest("t-1", "u-1"), id="bare"),
        pytest.param(FinalizeRequest("t-1", "u-1", 0.0, "gone", {"a": "b"}), id="deleted"),
        pytest.param(
            FinalizeRequest("t-1", "u-1", job={"metadata": {}}, pod={"status": {}}), id="hints"
        ),
    ],
)
def test_a_request_crosses_the_broker_as_json_and_comes_back_the_same(
    request_: FinalizeRequest,
) -> None:
    """All finalize needs comes back; when and why it was asked stay with the scheduler."""
    kwargs = json.loads(json.dumps(request_.task_kwargs()))

    back = FinalizeRequest.from_task(request_.job_name, request_.job_uid, **kwargs)

    assert back == dataclasses.replace(request_, why="")
    assert (back.job, back.pod) == (request_.job, request_.pod)


def test_an_ended_job_is_finalized_from_the_hints_without_a_read() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended(kube)
    request = FinalizeRequest(
        "t-1", job["metadata"]["uid"], job=job_snapshot(job), pod=pod_snapshot(kube.pods[0])
    )
    kube.calls.clear()

    result = answer(request, context(kube, publisher), NOW)

    assert result.state is Finalized.ANSWERED
    assert kube.calls == ["patch_job", "read_log", "release_job"]
    assert publisher.responses == [Response(id="t-1", output="hello\n", exit=0)]


def test_a_retry_reads_the_job_as_it_is_instead_of_the_hints() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended(kube)
    request = FinalizeRequest(
        "t-1", job["metadata"]["uid"], job=job_snapshot(job), pod=pod_snapshot(kube.pods[0])
    )
    kube.calls.clear()

    assert answer(request, context(kube, publisher, attempt=1), NOW).state is Finalized.ANSWERED
    assert kube.calls[:2] == ["get_job", "list_pods"]


def test_a_job_gone_unanswered_is_answered_from_its_last_annotations() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    request = FinalizeRequest("t-1", "u-1", 0.0, "deleted", {REPLY_TO_ANNOTATION: "replies"})

    result = answer(request, context(kube, publisher))

    assert result.state is Finalized.ANSWERED
    assert result.verdict is not None
    assert result.verdict.outcome is Outcome.DELETED
    [published] = publisher.published
    assert published.response == Response(id="t-1", error=DELETED_ERROR)
    assert published.route.reply_to == "replies"
    assert kube.calls == []


def test_a_kept_job_is_answered_again_and_one_not_kept_is_gone() -> None:
    kube, publisher = FakeKube(), FakePublisher()
    job = ended(kube)
    kept = Context(kube, publisher, WINDOW, "worker-a/7", clock=lambda: NOW)
    answer(FinalizeRequest("t-1", job["metadata"]["uid"]), kept, NOW)
    again = FinalizeRequest.again("t-1", ReplyRoute("c-2", "second"))

    assert answer(again, kept).state is Finalized.ANSWERED
    assert publisher.published[-1].route == ReplyRoute("c-2", "second")
    kube.remove_job("t-1")  # the window closed
    assert answer(again, kept).state is Finalized.GONE
