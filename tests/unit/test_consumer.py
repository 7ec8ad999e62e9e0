"""The consumer bootstep: every raw message ends answered (then acked), handed over (then acked),
or back on its queue; never acked before its answer or its submit is confirmed.

The step runs in a real Celery app whose broker is kombu's in-memory transport; responses go
to the fake of our publisher port, and raw messages are stand-ins recording ack and requeue.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from amqp.exceptions import MessageNacked

from dispatcher.amqp.consumer import TaskConsumerStep
from dispatcher.amqp.topology import CANCEL_TASK, SUBMIT_TASK
from dispatcher.config import Settings
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from dispatcher.worker.app import create_app
from tests.unit.fakes import SETTINGS, FakePublisher

UNLIMITED = dataclasses.replace(SETTINGS, max_active_jobs=0)


class RawMessage:
    """A task message as the broker delivered it: records what the consumer did with it."""

    def __init__(self, body: bytes, properties: dict[str, Any] | None = None) -> None:
        self.body = body
        self.properties = properties or {}
        self.done: list[str] = []

    def ack(self) -> None:
        self.done.append("ack")

    def requeue(self) -> None:
        self.done.append("requeue")


@dataclasses.dataclass
class Intake:
    step: TaskConsumerStep
    app: Any
    publisher: FakePublisher

    def submitted(self) -> list[dict[str, Any]]:
        """The `dispatcher.submit` messages published to the internal queue."""
        found = []
        with self.app.connection() as conn:
            queue = conn.SimpleQueue(self.app.dispatcher.settings.celery_queue_name)
            while queue.qsize():
                message = queue.get(timeout=1)
                found.append({"task": message.headers["task"], "args": message.decode()[0]})
                message.ack()
            queue.close()
        return found


def intake_with(settings: Settings, publisher: FakePublisher | None = None) -> Intake:
    app = create_app(settings)
    app.conf.broker_url = "memory://"
    app.dispatcher.publisher = publisher or FakePublisher()
    step = TaskConsumerStep(SimpleNamespace(app=app, timer=None))
    return Intake(step, app, app.dispatcher.publisher)


@pytest.fixture
def intake() -> Iterator[Intake]:
    made = intake_with(UNLIMITED)
    yield made
    made.app.close()


def valid(task_id: str = "t-1") -> bytes:
    return json.dumps({"id": task_id, "image": "busybox:1", "volume_mount_path": "/w"}).encode()


def test_an_invalid_message_is_answered_then_acked(intake: Intake) -> None:
    raw = RawMessage(b'{"id": "t-1"}', {"correlation_id": "c-1", "reply_to": "amq.gen-r1"})

    intake.step.on_message(raw)

    assert [p.response for p in intake.publisher.published] == [
        Response(id="t-1", error="image: is required")
    ]
    assert intake.publisher.published[0].route == ReplyRoute("c-1", "amq.gen-r1")
    assert raw.done == ["ack"]
    assert intake.submitted() == []


@pytest.mark.parametrize(
    "trouble", [MessageNacked(), ConnectionResetError(104, "reset by peer")], ids=str
)
def test_an_answer_the_broker_does_not_confirm_leaves_the_message_for_redelivery(
    trouble: Exception,
) -> None:
    intake = intake_with(UNLIMITED, FakePublisher(error=trouble))
    raw = RawMessage(b"not json")

    intake.step.on_message(raw)  # no exception escapes into the consumer's event loop

    assert raw.done == ["requeue"]


def test_a_valid_message_is_handed_to_submit_then_acked(intake: Intake) -> None:
    raw = RawMessage(valid(), {"correlation_id": "c-7"})

    intake.step.on_message(raw)

    (submitted,) = intake.submitted()
    assert submitted["task"] == SUBMIT_TASK
    task, route = submitted["args"]
    assert task["id"] == "t-1"
    assert route == {"correlation_id": "c-7", "reply_to": None}
    assert raw.done == ["ack"]
    assert intake.publisher.published == []


def test_at_max_active_jobs_a_valid_message_goes_back_to_its_queue_unanswered() -> None:
    intake = intake_with(SETTINGS)  # MAX_ACTIVE_JOBS 100, and no Job watch has listed yet
    raw, bad = RawMessage(valid()), RawMessage(b"[]")

    intake.step.on_message(raw)
    intake.step.on_message(bad)

    assert raw.done == ["requeue"]
    assert intake.submitted() == []
    assert bad.done == ["ack"]  # invalid input is still answered at once
    assert len(intake.publisher.published) == 1


def test_a_cancel_request_is_handed_to_cancel_even_at_max_active_jobs() -> None:
    intake = intake_with(SETTINGS)  # at the limit: tasks go back, cancels must not
    cancel = RawMessage(b'{"cancel": "t-1"}', {"correlation_id": "c-5", "reply_to": "amq.gen-x"})

    intake.step.on_message(cancel)

    assert cancel.done == ["ack"]
    assert intake.submitted() == [
        {"task": CANCEL_TASK, "args": ["t-1", {"correlation_id": "c-5", "reply_to": "amq.gen-x"}]}
    ]
    assert intake.publisher.published == []


@pytest.mark.parametrize(
    "properties",
    [
        {"reply_to": 42, "correlation_id": ["x"]},
        {"reply_to": "", "correlation_id": None},
        {"content_type": "application/x-python-serialize"},
    ],
    ids=["wrong-types", "empty", "pickle-content-type"],
)
def test_odd_properties_never_break_the_consumer(
    intake: Intake, properties: dict[str, Any]
) -> None:
    raw = RawMessage(b'{"id": "t-1"}', properties)

    intake.step.on_message(raw)

    assert intake.publisher.published[0].route == ReplyRoute()
    assert raw.done == ["ack"]


def test_immediate_ack_mode_acks_before_answering() -> None:
    settings = dataclasses.replace(UNLIMITED, task_ack_mode="immediate")
    order: list[str] = []
    raw = RawMessage(b"{}")
    raw.ack = lambda: order.append("ack")  # type: ignore[method-assign]
    intake = intake_with(settings, FakePublisher(on_publish=lambda _: order.append("answer")))

    intake.step.on_message(raw)

    assert order == ["ack", "answer"]
