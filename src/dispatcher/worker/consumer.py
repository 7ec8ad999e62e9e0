"""The custom consumer bootstep: reads raw task and control messages and hands valid ones to
Celery.

It consumes two queues. The task queue, with at most TASK_PREFETCH messages unacknowledged; and
the control queue (cancel requests), on a channel of its own, so that a cancel never waits
behind tasks. For each message intake (`core.intake`) decides, and one `match` acts:

- invalid input is answered at once with an error (`amqp.confirms`: pipelined confirms on a
  connection of its own) and acked when the answer is confirmed;
- a cancel request is sent to `dispatcher.cancel`, whatever the load;
- a valid task is sent to `dispatcher.submit` when MAX_ACTIVE_JOBS leaves room, and acked when
  the broker confirmed that send (`amqp.handover`: from a thread of its own). When there is no
  room, it is *held*: kept unacknowledged, in order, and handed on as Jobs end. The broker sends
  no more than TASK_PREFETCH, so the backlog waits in RabbitMQ untouched — never put back, so no
  delivery is spent, the order stays, and the queue's depth is the operator's view of it.

With `TASK_ACK_MODE=immediate` a message is acked as soon as it is acted on, before its answer
or hand-over is confirmed (the original service's behaviour). Message bodies are never decoded
by kombu: intake parses the bytes itself.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from typing import Any, ClassVar

from amqp.exceptions import PreconditionFailed
from celery import bootsteps
from kombu import Consumer
from kombu.message import Message

from dispatcher.amqp.confirms import Answers, AnswersFactory, PipelinedAnswers
from dispatcher.amqp.declare import mismatch
from dispatcher.amqp.handover import HandOver
from dispatcher.amqp.topology import (
    CANCEL_TASK,
    SUBMIT_TASK,
    control_queue,
    progress_exchange,
    response_queue,
    task_queue,
)
from dispatcher.core.intake import Accepted, CancelRequested, Rejected, deliveries, take
from dispatcher.worker.runtime import Runtime

log = logging.getLogger(__name__)

HOLD_CHECK_SECONDS = 0.5
HOLD_TIMEOUT_MS = 7 * 24 * 3600 * 1000
"""How long RabbitMQ lets the task consumer keep a message unacknowledged (x-consumer-timeout)."""
QUEUE_DEPTH_SECONDS = 5.0
CONFIRM_POLL_SECONDS = 0.1


class TaskConsumerStep(bootsteps.ConsumerStep):
    """Built for one worker's runtime by `for_runtime`; Celery constructs it."""

    runtime: ClassVar[Runtime]
    answers: ClassVar[AnswersFactory]

    @classmethod
    def for_runtime(
        cls, runtime: Runtime, answers: AnswersFactory = PipelinedAnswers
    ) -> type[TaskConsumerStep]:
        """The step class of one worker: its runtime, and what publishes the answers to invalid
        messages (tests pass a fake of that port)."""
        wiring = {"runtime": runtime, "answers": answers, "__module__": cls.__module__}
        return type(cls.__name__, (cls,), wiring)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        self.settings = self.runtime.settings
        self.metrics = self.runtime.metrics
        self.admission = self.runtime.admission
        self._timers: list[Any] = []
        self._connection: Any = None
        self._held: deque[tuple[Accepted, Message]] = deque()
        self._answers: Answers | None = None
        self._handover: HandOver | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, parent: Any) -> None:
        # Everything a message needs exists before the consumers start: while the broker
        # confirms one consumer, py-amqp already hands over messages for the other.
        self._connection = parent.connection  # the control queue gets a channel of its own
        self._forget_held()
        # The answers' connection and the hand-over's results are read on the consumer's own
        # thread, woken by its event loop when they are readable; the timers run there too.
        hub = getattr(parent, "hub", None)
        self._answers = self.answers(
            lambda: self.app.connection_for_write(
                transport_options={"confirm_publish": False}, heartbeat=0
            ),
            self.settings,
            watch=(lambda fd: hub.add_reader(fd, self._poll)) if hub else None,
            unwatch=hub.remove_reader if hub else None,
        )
        self._handover = HandOver(
            watch=(lambda fd: hub.add_reader(fd, self._settle_handed_over)) if hub else None,
            unwatch=hub.remove_reader if hub else None,
        )
        self.metrics.max_active_jobs.set(self.settings.max_active_jobs)
        super().start(parent)
        self.runtime.broker_ready.set()
        if parent.timer is not None:
            self._timers = [
                parent.timer.call_repeatedly(HOLD_CHECK_SECONDS, self._take_held),
                parent.timer.call_repeatedly(QUEUE_DEPTH_SECONDS, self._measure_queue),
                parent.timer.call_repeatedly(CONFIRM_POLL_SECONDS, self._poll),
            ]

    def stop(self, parent: Any) -> None:
        self.runtime.broker_ready.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        self._close_parts()
        super().stop(parent)

    def shutdown(self, parent: Any) -> None:
        self.runtime.broker_ready.clear()
        self._close_parts()
        super().shutdown(parent)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        """Called on every (re)connection: held messages of the old channel are the broker's
        again (it delivers them anew), so none is kept."""
        try:
            return self._consumers(channel)
        except PreconditionFailed as exc:  # checked at start, unless the broker was away then
            log.error("%s", mismatch(str(exc), self.settings))
            raise

    def _consumers(self, channel: Any) -> list[Consumer]:
        settings = self.settings
        self._forget_held()
        progress = progress_exchange(settings)  # producers bind to it and may not declare it
        for declared in (response_queue(settings), *([progress] if progress else [])):
            declared(channel).declare()
        queue = task_queue(settings)
        # Held tasks stay unacknowledged as long as Jobs take to end: longer than RabbitMQ's
        # default delivery acknowledgement timeout (30 minutes).
        queue.consumer_arguments = {"x-consumer-timeout": HOLD_TIMEOUT_MS}
        tasks = Consumer(
            channel,
            queues=[queue],
            on_message=self.on_task,
            prefetch_count=settings.task_prefetch,
            no_ack=False,
        )
        consumers = [tasks]
        control = control_queue(settings)
        if control is not None:
            consumers.append(
                Consumer(
                    self._connection.channel(),  # its own prefetch, never behind held tasks
                    queues=[control],
                    on_message=self.on_control,
                    prefetch_count=settings.task_prefetch,
                    no_ack=False,
                )
            )
        return consumers

    # -- messages -----------------------------------------------------------------------------

    def on_task(self, message: Message) -> None:
        self._on_message(message, control=False)

    def on_control(self, message: Message) -> None:
        self._on_message(message, control=True)

    def _on_message(self, message: Message, *, control: bool) -> None:
        self.metrics.tasks_received.inc()
        outcome = take(
            message.body,
            message.properties,
            self.settings,
            delivery=deliveries(message.headers),
            control=control,
        )
        match outcome:
            case Rejected():
                self._answer(outcome, message)
            case CancelRequested():
                self._hand_over(outcome, message)
            case Accepted() if self._held or self.admission.room() <= 0:
                self._hold(outcome, message)
            case Accepted():
                self._hand_over(outcome, message)

    def _answer(self, rejected: Rejected, message: Message) -> None:
        """Answer an invalid message; ack it once the broker confirmed the answer (put it back
        when it did not: it is read and answered again)."""
        self.metrics.tasks_invalid.inc()
        log.info("rejected a task message: %s", rejected.response.error)
        immediate = self._ack_now(message)
        assert self._answers is not None

        def settle(confirmed: bool) -> None:
            _settle(message, immediate, confirmed, "the answer to an invalid message")

        self._answers.publish(rejected.response, rejected.route, rejected.message_id, settle)

    def _hand_over(self, outcome: Accepted | CancelRequested, message: Message) -> None:
        """Send the Celery task from the hand-over thread; ack the message once it is confirmed
        (put it back, and stop counting it against MAX_ACTIVE_JOBS, when the send failed)."""
        immediate = self._ack_now(message)
        if isinstance(outcome, Accepted):
            self.admission.handed_over(outcome.task.id)

        def send() -> None:
            if isinstance(outcome, Accepted):
                self._send_submit(outcome)
            else:
                self._send_cancel(outcome)

        def settle(sent: bool) -> None:
            if not sent and isinstance(outcome, Accepted):
                self.admission.settled(outcome.task.id)
            _settle(message, immediate, sent, "a task message")

        assert self._handover is not None
        self._handover.submit(send, settle)

    def _send_submit(self, accepted: Accepted) -> None:
        task, route = accepted.task, accepted.route
        self.app.tasks[SUBMIT_TASK].apply_async(
            args=[task.to_json(), route.to_json()], task_id=f"submit.{task.id}.{task.digest()[:12]}"
        )
        log.info("task %s handed to %s", task.id, SUBMIT_TASK)

    def _send_cancel(self, request: CancelRequested) -> None:
        task_id, route = request.cancel.id, request.route
        self.app.tasks[CANCEL_TASK].apply_async(
            args=[task_id, route.to_json()], task_id=f"cancel.{task_id}.{uuid.uuid4().hex[:12]}"
        )
        log.info("cancel of task %s handed to %s", task_id, CANCEL_TASK)

    def _ack_now(self, message: Message) -> bool:
        """With TASK_ACK_MODE=immediate, ack as the message is acted on (True)."""
        if self.settings.task_ack_mode != "immediate":
            return False
        message.ack()
        return True

    # -- back-pressure ------------------------------------------------------------------------

    def _hold(self, accepted: Accepted, message: Message) -> None:
        """No room for another Job: keep the message, unacknowledged, behind those held before."""
        if not self._held:
            why = (
                "the active Jobs are not known yet (the Job watch has not listed them)"
                if self.runtime.active_jobs() is None
                else f"MAX_ACTIVE_JOBS ({self.settings.max_active_jobs}) is reached"
            )
            log.info("%s; tasks wait in queue %s", why, self.settings.task_queue_name)
        self._held.append((accepted, message))
        self._show_held()
        self._take_held()  # room may have come since the first was held

    def _take_held(self) -> None:
        """Hand on held tasks, oldest first, while there is room."""
        if not self._held:
            return
        room = self.admission.room()
        while self._held and room > 0:
            accepted, message = self._held.popleft()
            self._hand_over(accepted, message)
            room -= 1
        if not self._held:
            log.info("room for more Jobs: taking tasks again")
        self._show_held()

    def _forget_held(self) -> None:
        self._held.clear()
        self._show_held()

    def _show_held(self) -> None:
        self.metrics.tasks_held.set(len(self._held))
        self.metrics.intake_paused.set(1 if self._held else 0)

    # -- plumbing -----------------------------------------------------------------------------

    def _poll(self) -> None:
        if self._answers is not None and self._answers.pending():
            self._answers.poll()
        self._settle_handed_over()

    def _settle_handed_over(self) -> None:
        if self._handover is not None and self._handover.pending():
            self._handover.settle()

    def _close_parts(self) -> None:
        if self._handover is not None:
            self._handover.close()
        if self._answers is not None:
            self._answers.close()
        self._forget_held()

    def _measure_queue(self) -> None:
        """The task queue's depth, asked on a channel of its own: a refused passive declare
        closes its channel, and must never close the one holding our messages."""
        if self._connection is None:
            return
        try:
            channel = self._connection.channel()
            try:
                _, ready, _ = channel.queue_declare(self.settings.task_queue_name, passive=True)
            finally:
                channel.close()
        except Exception as exc:  # noqa: BLE001 - a metric must never break the consumer
            log.debug("could not read the task queue's depth: %s", exc)
            return
        self.metrics.task_queue_messages.set(ready)


def _settle(message: Message, immediate: bool, confirmed: bool, what: str) -> None:
    """Ack a message whose hand-over or answer the broker confirmed; put it back otherwise (it
    is read again). With TASK_ACK_MODE=immediate it was acked already: a failure is a loss."""
    if immediate:
        if not confirmed:
            log.error("%s was lost (TASK_ACK_MODE=immediate)", what)
    elif confirmed:
        message.ack()
    else:
        message.requeue()
