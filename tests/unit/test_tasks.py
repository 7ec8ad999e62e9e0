"""The Celery tasks: every way out is a confirmed response or a retry, never a silent end.

The tasks run as Celery runs them (the real task objects and `Task.retry`, publishing retries to
an in-memory broker); Kubernetes and the response publisher are the fakes of our own ports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from amqp.exceptions import MessageNacked
from celery import Celery
from celery.exceptions import Retry
from kombu.exceptions import OperationalError

from dispatcher.amqp.topology import CANCEL_TASK, FINALIZE_TASK, SUBMIT_TASK, internal_queue
from dispatcher.core.finalize import LOGS_UNAVAILABLE
from dispatcher.errors import InvalidSpecError, PermanentKubeError, TransientKubeError
from dispatcher.kube.conventions import RESPONDED_ANNOTATION
from dispatcher.messages.response import Response
from dispatcher.worker.app import create_app
from dispatcher.worker.retry import LOG_ATTEMPTS, MAX_ATTEMPTS
from dispatcher.worker.seal import SEAL_HEADER, Sealer
from dispatcher.worker.tasks import API_UNAVAILABLE, INTERNAL_ERROR
from tests.unit.fakes import (
    COMPLETE,
    SETTINGS,
    TASK,
    WINDOW,
    FakeKube,
    FakePublisher,
    create_job_for,
    make_pod,
    terminated,
)

BROKER_TROUBLE = [
    pytest.param(MessageNacked(), id="nacked"),
    pytest.param(OperationalError("connection reset"), id="connection-lost"),
    pytest.param(ConnectionRefusedError(111, "refused"), id="refused"),
]


@dataclass
class Worker:
    app: Celery
    kube: FakeKube
    publisher: FakePublisher

    def submit(self, task: dict[str, Any], *, retries: int = 0) -> str:
        return self._run(SUBMIT_TASK, retries, task, {"correlation_id": "c-1"})

    def cancel(self, task_id: str, *, retries: int = 0) -> str:
        return self._run(CANCEL_TASK, retries, task_id, {"correlation_id": "c-9"})

    def finalize(self, *args: Any, retries: int = 0) -> str:
        return self._run(FINALIZE_TASK, retries, *args)

    def _run(self, name: str, retries: int, *args: Any, seal: str | None = None) -> str:
        """Run the task as a worker runs a message; sealed as our own send would seal it,
        unless `seal` is given."""
        task = self.app.tasks[name]
        if seal is None:
            seal = self.app.dispatcher.sealer.seal(name, list(args), {})
        task.push_request(
            id=f"{name}-1",
            retries=retries,
            args=list(args),
            kwargs={},
            headers={SEAL_HEADER: seal},
            called_directly=False,
        )
        try:
            result: str = task.run(*args)
        finally:
            task.pop_request()
        return result


@pytest.fixture
def worker(request: pytest.FixtureRequest) -> Iterator[Worker]:
    """A worker with the unit settings, or those of `@pytest.mark.parametrize("worker", …,
    indirect=True)`."""
    app = create_app(getattr(request, "param", SETTINGS))
    app.conf.broker_url = "memory://"
    kube, publisher = FakeKube(), FakePublisher()
    app.dispatcher.kube = kube
    app.dispatcher.publisher = publisher
    yield Worker(app, kube, publisher)
    app.close()


def task_document() -> dict[str, Any]:
    return {"id": TASK.id, "image": TASK.image, "volume_mount_path": "/work", "args": ["true"]}


def ended_job(kube: FakeKube) -> tuple[str, str]:
    job = create_job_for(kube)
    kube.add_pod(make_pod(job, phase="Succeeded", state=terminated(0)))
    kube.update_status("t-1", COMPLETE)
    return job["metadata"]["name"], job["metadata"]["uid"]


# --- submit ------------------------------------------------------------------------------------


def test_submit_creates_the_job(worker: Worker) -> None:
    assert worker.submit(task_document()) == "created"
    assert "t-1" in worker.kube.jobs


@pytest.mark.parametrize("trouble", BROKER_TROUBLE)
@pytest.mark.parametrize("retries", [0, MAX_ATTEMPTS + 40])
def test_broker_trouble_while_answering_is_retried_however_long_it_lasts(
    worker: Worker, trouble: Exception, retries: int
) -> None:
    worker.publisher = worker.app.dispatcher.publisher = FakePublisher(error=trouble)

    with pytest.raises(Retry):
        worker.submit({"id": "t-1"}, retries=retries)  # invalid: answered with an error


def test_kubernetes_unavailable_is_retried_then_answered(worker: Worker) -> None:
    outage = TransientKubeError("create Job t-1: ConnectError: connection refused")
    worker.kube.fail_next("create_job", outage)
    with pytest.raises(Retry):
        worker.submit(task_document(), retries=0)

    worker.kube.fail_next("create_job", outage)
    assert worker.submit(task_document(), retries=MAX_ATTEMPTS) == "rejected"
    assert worker.publisher.responses == [Response(id="t-1", error=API_UNAVAILABLE)]


def test_a_defect_while_submitting_is_answered_not_dropped(worker: Worker) -> None:
    worker.kube.fail_next("create_job", KeyError("spec"))  # type: ignore[arg-type]

    assert worker.submit(task_document()) == "rejected"
    assert worker.publisher.responses == [Response(id="t-1", error=INTERNAL_ERROR)]


# --- finalize ----------------------------------------------------------------------------------


def test_finalize_answers_an_ended_job_and_lets_it_go(worker: Worker) -> None:
    name, uid = ended_job(worker.kube)
    worker.kube.logs["t-1-x7k2p"] = "done\n"

    assert worker.finalize(name, uid) == "answered"
    assert worker.publisher.responses == [Response(id="t-1", output="done\n", exit=0)]
    assert RESPONDED_ANNOTATION in worker.kube.annotations("t-1")
    assert worker.kube.get_job("t-1") is None


@pytest.mark.parametrize("trouble", BROKER_TROUBLE)
def test_finalize_retries_broker_trouble_and_the_job_stays_unanswered(
    worker: Worker, trouble: Exception
) -> None:
    name, uid = ended_job(worker.kube)
    worker.publisher = worker.app.dispatcher.publisher = FakePublisher(error=trouble)

    with pytest.raises(Retry):
        worker.finalize(name, uid, retries=100)
    assert RESPONDED_ANNOTATION not in worker.kube.annotations("t-1")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(
            "patch_job",
            InvalidSpecError('admission webhook "audit" denied the request (HTTP 422)', 422),
            id="claim-denied-by-a-webhook",
        ),
        pytest.param(
            "release_job",
            PermanentKubeError("release Job t-1: forbidden by policy (HTTP 400)", 400),
            id="release-refused",
        ),
        pytest.param("list_pods", RuntimeError("a defect"), id="defect"),
    ],
)
def test_finalize_retries_a_permanent_failure_instead_of_ending_silently(
    worker: Worker, call: str, error: Exception
) -> None:
    name, uid = ended_job(worker.kube)
    worker.kube.fail_next(call, error)  # type: ignore[arg-type]

    with pytest.raises(Retry):
        worker.finalize(name, uid)
    assert worker.kube.get_job("t-1") is not None  # still there to be answered


def test_finalize_answers_a_deleted_job_and_retries_if_the_broker_refuses(worker: Worker) -> None:
    worker.publisher = worker.app.dispatcher.publisher = FakePublisher(error=MessageNacked())

    with pytest.raises(Retry):
        worker.finalize("t-1", "uid-1", {"job-dispatcher.io/reply-to": "replies"})


def test_logs_that_keep_failing_are_given_up_after_a_bounded_time(worker: Worker) -> None:
    name, uid = ended_job(worker.kube)
    worker.kube.logs["t-1-x7k2p"] = TransientKubeError("read the log: HTTP 502", 502)

    with pytest.raises(Retry):
        worker.finalize(name, uid, retries=LOG_ATTEMPTS - 1)
    assert worker.finalize(name, uid, retries=LOG_ATTEMPTS) == "answered"
    assert worker.publisher.responses == [Response(id="t-1", exit=0, error=LOGS_UNAVAILABLE)]


@pytest.mark.parametrize("worker", [WINDOW], indirect=True)
def test_the_same_task_sent_again_after_its_answer_is_answered_again_without_a_second_run(
    worker: Worker,
) -> None:
    assert worker.submit(task_document()) == "created"
    job = worker.kube.get_job("t-1")
    assert job is not None
    worker.kube.add_pod(make_pod(job, phase="Succeeded", state=terminated(0)))
    worker.kube.update_status("t-1", COMPLETE)
    worker.kube.logs["t-1-x7k2p"] = "ran once\n"
    assert worker.finalize("t-1", job["metadata"]["uid"]) == "answered"

    assert worker.submit(task_document()) == "answered before"

    first, again = worker.publisher.published
    assert again.response == first.response == Response(id="t-1", output="ran once\n", exit=0)
    assert again.message_id == first.message_id
    assert list(worker.kube.jobs) == ["t-1"]  # no second Job, no second run
    worker.kube.remove_job("t-1")  # the window closed: Kubernetes deleted it
    assert worker.submit(task_document()) == "created"


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_of_a_running_task_stops_its_job(worker: Worker) -> None:
    worker.submit(task_document())

    assert worker.cancel("t-1") == "stopping"
    assert worker.kube.jobs["t-1"]["metadata"]["deletionTimestamp"]
    assert worker.publisher.responses == []  # finalize answers it, with its logs so far


def test_cancel_of_a_task_not_yet_in_the_cluster_answers_cancelled_and_its_task_never_runs(
    worker: Worker,
) -> None:
    assert worker.cancel("t-1") == "answered"
    [published] = worker.publisher.published
    assert published.response == Response(
        id="t-1",
        error="cancelled: task 't-1' had no Job yet; if it arrives within 86400 s "
        "(CANCEL_TOMBSTONE_SECONDS) it is answered 'cancelled' without running",
    )
    assert published.route.correlation_id == "c-9"

    assert worker.submit(task_document()) == "cancelled"  # the task is read later
    assert worker.kube.jobs == {}
    assert worker.publisher.responses[-1] == Response(id="t-1", error="cancelled")


def test_cancel_with_the_api_down_is_retried_then_answered(worker: Worker) -> None:
    outage = TransientKubeError("get Job t-1: ConnectError: connection refused")
    worker.kube.fail_next("get_job", outage)
    with pytest.raises(Retry):
        worker.cancel("t-1", retries=0)

    worker.kube.fail_next("get_job", outage)
    assert worker.cancel("t-1", retries=MAX_ATTEMPTS) == "answered"
    assert worker.publisher.responses == [
        Response(id="t-1", error=f"cancel: task 't-1' was not stopped: {API_UNAVAILABLE}")
    ]


# --- seals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seal",
    [
        pytest.param("", id="missing"),
        pytest.param("0" * 64, id="made-up"),
        pytest.param(Sealer([b"another-key-0123456789"]).seal(SUBMIT_TASK, [], {}), id="other-key"),
    ],
)
def test_an_internal_message_without_our_seal_is_dropped_unrun(worker: Worker, seal: str) -> None:
    assert worker._run(SUBMIT_TASK, 0, task_document(), {}, seal=seal) == "refused"

    assert worker.kube.jobs == {}
    assert worker.publisher.responses == []
    refused = worker.app.dispatcher.metrics.internal_refused.labels(SUBMIT_TASK)
    assert refused._value.get() == 1


def test_a_seal_is_good_for_its_own_arguments_only(worker: Worker) -> None:
    sealer = worker.app.dispatcher.sealer
    forged = {**task_document(), "image": "evil.example/x:1"}
    seal = sealer.seal(SUBMIT_TASK, [task_document(), {}], {})

    assert worker._run(SUBMIT_TASK, 0, forged, {}, seal=seal) == "refused"
    assert worker._run(FINALIZE_TASK, 0, task_document(), {}, seal=seal) == "refused"
    assert worker.kube.jobs == {}


def test_a_retry_is_sent_sealed(worker: Worker) -> None:
    worker.kube.fail_next("create_job", TransientKubeError("create Job t-1: 503"))
    with pytest.raises(Retry):
        worker.submit(task_document())

    with worker.app.connection_for_write() as conn:
        message = conn.SimpleQueue(internal_queue(SETTINGS), no_ack=True).get(timeout=2)
    args, kwargs, _ = message.decode()
    assert worker.app.dispatcher.sealer.verify(
        SUBMIT_TASK, args, kwargs, message.headers[SEAL_HEADER]
    )
