"""The consumer bootstep, started as Celery starts it: every raw message ends answered (then
acked), handed over (then acked), held unacknowledged while there is no room, or back on its
queue; never acked before its answer or its hand-over is confirmed, and never put back to wait.

The step runs in a real Celery app whose broker is kombu's in-memory transport (its submit and
cancel messages land there); answers to invalid messages go to a fake of our answers port, and
raw messages are stand-ins recording ack and requeue.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dispatcher.amqp.topology import CANCEL_TASK, SUBMIT_TASK, internal_queue
from dispatcher.config import Settings
from dispatcher.core.admission import Admission
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from dispatcher.worker.app import create_app
from dispatcher.worker.consumer import TaskConsumerStep
from tests.unit.fakes import SETTINGS

UNLIMITED = dataclasses.replace(SETTINGS, max_active_jobs=0)


class RawMessage:
    """A task message as the broker delivered it: records what the consumer did with it."""

    def __init__(
        self,
        body: bytes,
        properties: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.body = body
        self.properties = properties or {}
        self.headers = headers or {}
        self.done: list[str] = []

    def ack(self) -> None:
        self.done.append("ack")

    def requeue(self) -> None:
        self.done.append("requeue")


@dataclasses.dataclass
class Sent:
    response: Response
    route: ReplyRoute
    message_id: str
    done: Any


class FakeAnswers:
    """The answers port: records each answer; the broker's confirm comes with `confirm`."""

    made: list[FakeAnswers] = []

    def __init__(self, connect: Any, settings: Settings, **_: Any) -> None:
        self.sent: list[Sent] = []
        self.confirms = True
        FakeAnswers.made.append(self)

    def publish(self, response: Response, route: ReplyRoute, message_id: str, done: Any) -> None:
        self.sent.append(Sent(response, route, message_id, done))

    def pending(self) -> int:
        return len(self.sent)

    def poll(self) -> None:
        sent, self.sent = self.sent, []
        for answer in sent:
            answer.done(self.confirms)

    def close(self, wait: float = 5.0) -> None:
        pass


@dataclasses.dataclass
class Intake:
    step: TaskConsumerStep
    app: Any
    answers: FakeAnswers
    answered: list[Sent] = dataclasses.field(default_factory=list)

    def deliver(self, raw: RawMessage, *, control: bool = False) -> None:
        (self.step.on_control if control else self.step.on_task)(raw)  # type: ignore[arg-type]

    def settle(self) -> None:
        """What the consumer's event loop does when confirms arrive."""
        self.answered += self.answers.sent
        deadline = time.monotonic() + 5
        while self.step._handover is not None and self.step._handover.pending():
            self.step._settle_handed_over()
            assert time.monotonic() < deadline, "the hand-over thread did not finish"
            time.sleep(0.01)
        self.step._poll()

    def sent(self) -> list[dict[str, Any]]:
        """The Celery tasks sent to the internal queue, in order."""
        found = []
        with self.app.connection() as conn:
            queue = conn.SimpleQueue(internal_queue(self.app.dispatcher.settings))
            while queue.qsize():
                message = queue.get(timeout=1)
                found.append({"task": message.headers["task"], "args": message.decode()[0]})
                message.ack()
            queue.close()
        return found

    def room(self, active: list[int], limit: int) -> None:
        """MAX_ACTIVE_JOBS `limit`, with `active[0]` Jobs active as the watch would say."""
        self.app.dispatcher.admission = Admission(limit, lambda: active[0])
        self.step.admission = self.app.dispatcher.admission


def started(settings: Settings) -> Intake:
    app = create_app(settings)
    app.conf.broker_url = "memory://"
    FakeAnswers.made.clear()
    step_class = TaskConsumerStep.for_runtime(app.dispatcher, answers=FakeAnswers)
    parent = SimpleNamespace(app=app, timer=None, hub=None, connection=app.connection_for_write())
    step = step_class(parent)
    step.start(parent)
    return Intake(step, app, FakeAnswers.made[-1])


@pytest.fixture
def intake() -> Iterator[Intake]:
    made = started(UNLIMITED)
    yield made
    made.step.shutdown(SimpleNamespace(connection=made.step._connection))
    made.app.close()


def valid(task_id: str = "t-1") -> bytes:
    return json.dumps({"id": task_id, "image": "busybox:1", "volume_mount_path": "/w"}).encode()


def test_start_consumes_the_task_queue_and_the_control_queue(intake: Intake) -> None:
    queues = [q for consumer in intake.step.consumers for q in consumer.queues]
    channels = {id(consumer.channel) for consumer in intake.step.consumers}

    assert [q.name for q in queues] == ["tasks", "tasks.control"]
    assert len(channels) == 2  # the control queue's prefetch is its own
    assert queues[0].consumer_arguments == {"x-consumer-timeout": 7 * 24 * 3600 * 1000}
    assert intake.app.dispatcher.broker_ready.is_set()


def test_a_message_delivered_while_the_consumers_start_is_handled(monkeypatch: Any) -> None:
    """py-amqp hands over deliveries for the task queue while it waits for the broker to
    confirm the control queue's consumer: the step must be ready for them by then."""
    early = RawMessage(b"[]")
    delivered: list[RawMessage] = []
    original = TaskConsumerStep.get_consumers

    def get_consumers(self: TaskConsumerStep, channel: Any) -> Any:
        consumers = original(self, channel)
        self.on_task(early)  # type: ignore[arg-type]
        delivered.append(early)
        return consumers

    monkeypatch.setattr(TaskConsumerStep, "get_consumers", get_consumers)
    intake = started(UNLIMITED)
    intake.settle()

    assert delivered == [early]
    assert [a.response.error for a in intake.answered] == [
        "message: must be a JSON object, got array"
    ]
    assert early.done == ["ack"]
    intake.app.close()


def test_a_message_handed_over_after_the_step_stopped_goes_back_to_its_queue(
    intake: Intake,
) -> None:
    parent = SimpleNamespace(connection=intake.step._connection)
    intake.step.stop(parent)  # type: ignore[arg-type]
    late = RawMessage(valid())

    intake.deliver(late)

    assert late.done == ["requeue"]


def test_an_invalid_message_is_answered_then_acked_once_confirmed(intake: Intake) -> None:
    raw = RawMessage(b'{"id": "t-1"}', {"correlation_id": "c-1", "reply_to": "amq.gen-r1"})

    intake.deliver(raw)
    assert raw.done == []  # not before the broker confirmed the answer
    intake.settle()

    (answer,) = intake.answered
    assert answer.response == Response(id="t-1", error="image: is required")
    assert answer.route == ReplyRoute("c-1", "amq.gen-r1")
    assert raw.done == ["ack"]
    assert intake.sent() == []


def test_an_answer_the_broker_does_not_confirm_leaves_the_message_for_redelivery(
    intake: Intake,
) -> None:
    intake.answers.confirms = False
    raw = RawMessage(b"not json")

    intake.deliver(raw)
    intake.settle()

    assert raw.done == ["requeue"]


def test_a_valid_message_is_handed_to_submit_then_acked(intake: Intake) -> None:
    raw = RawMessage(valid(), {"correlation_id": "c-7"})

    intake.deliver(raw)
    intake.settle()

    (submitted,) = intake.sent()
    assert submitted["task"] == SUBMIT_TASK
    task, route = submitted["args"]
    assert task["id"] == "t-1"
    assert route == {"correlation_id": "c-7", "reply_to": None}
    assert raw.done == ["ack"]
    assert intake.answered == []


def test_without_room_tasks_are_held_unacknowledged_and_handed_on_in_order_as_room_comes() -> None:
    intake = started(SETTINGS)
    active = [2]
    intake.room(active, limit=2)
    held = [RawMessage(valid(f"t-{n}")) for n in range(3)]
    bad = RawMessage(b"[]")

    for raw in held:
        intake.deliver(raw)
    intake.deliver(bad)
    intake.settle()

    assert [raw.done for raw in held] == [[], [], []]  # neither acked nor put back
    assert intake.sent() == []
    assert bad.done == ["ack"]  # invalid input is still answered at once
    assert intake.app.dispatcher.metrics.tasks_held._value.get() == 3

    active[0] = 1  # one Job ended
    intake.step._take_held()
    intake.settle()
    assert [s["args"][0]["id"] for s in intake.sent()] == ["t-0"]

    active[0] = 0
    intake.app.dispatcher.admission.settled("t-0")  # its Job is seen, and ended
    intake.step._take_held()
    intake.settle()
    assert [s["args"][0]["id"] for s in intake.sent()] == ["t-1", "t-2"]
    assert [raw.done for raw in held] == [["ack"], ["ack"], ["ack"]]
    intake.app.close()


def test_a_task_arriving_while_others_are_held_waits_behind_them() -> None:
    intake = started(SETTINGS)
    active = [1]
    intake.room(active, limit=1)
    first, second = RawMessage(valid("t-a")), RawMessage(valid("t-b"))
    intake.deliver(first)

    active[0] = 0
    intake.deliver(second)  # room now, but t-a was first
    intake.settle()

    assert [s["args"][0]["id"] for s in intake.sent()] == ["t-a"]
    assert second.done == []
    intake.app.close()


def test_held_tasks_are_forgotten_on_a_new_connection_as_the_broker_delivers_them_again() -> None:
    intake = started(SETTINGS)  # no Job watch has listed: no room
    intake.deliver(RawMessage(valid()))

    intake.step.get_consumers(intake.step._connection.channel())

    assert intake.step._held == type(intake.step._held)()
    assert intake.app.dispatcher.metrics.tasks_held._value.get() == 0
    intake.app.close()


def test_a_cancel_request_is_handed_to_cancel_even_with_tasks_held() -> None:
    intake = started(SETTINGS)  # at the limit: tasks are held, cancels must not be
    intake.deliver(RawMessage(valid()))
    cancel = RawMessage(b'{"cancel": "t-1"}', {"correlation_id": "c-5", "reply_to": "amq.gen-x"})

    intake.deliver(cancel, control=True)
    intake.settle()

    assert cancel.done == ["ack"]
    assert intake.sent() == [
        {"task": CANCEL_TASK, "args": ["t-1", {"correlation_id": "c-5", "reply_to": "amq.gen-x"}]}
    ]
    intake.app.close()


def test_a_task_sent_to_the_control_queue_is_answered_not_run(intake: Intake) -> None:
    raw = RawMessage(valid("t-9"))

    intake.deliver(raw, control=True)
    intake.settle()

    (answer,) = intake.answered
    assert answer.response.id == "t-9"
    assert answer.response.error is not None
    assert answer.response.error.startswith("cancel: the control queue takes cancel requests only")
    assert intake.sent() == []


def test_a_message_delivered_max_deliveries_times_is_answered_not_handed_on(
    intake: Intake,
) -> None:
    raw = RawMessage(valid("t-3"), headers={"x-delivery-count": 9})  # the 10th delivery

    intake.deliver(raw)
    intake.settle()

    (answer,) = intake.answered
    assert answer.response == Response(
        id="t-3",
        error="x-delivery-count: the message was delivered 10 times without being acknowledged "
        "(MAX_DELIVERIES is 10): a worker holding it stopped or lost its connection each time. "
        "It is answered now instead of being taken again, before RabbitMQ would drop it, and was "
        "not started by this delivery",
    )
    assert raw.done == ["ack"]
    assert intake.sent() == []


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

    intake.deliver(raw)
    intake.settle()

    assert intake.answered[0].route == ReplyRoute()
    assert raw.done == ["ack"]


def test_immediate_ack_mode_acks_before_answering() -> None:
    intake = started(dataclasses.replace(UNLIMITED, task_ack_mode="immediate"))
    raw = RawMessage(b"{}")

    intake.deliver(raw)

    assert raw.done == ["ack"]  # before any confirm
    assert len(intake.answers.sent) == 1
    intake.app.close()
