"""The custom consumer bootstep: reads raw task messages and hands valid ones to Celery.

It declares the task and response topology, consumes the task queue with bounded prefetch, and
for each message either publishes an error response (invalid input) or sends the
`dispatcher.submit` Celery task — both confirmed by the broker — and only then acks the raw
message (`TASK_ACK_MODE=confirmed`). With `TASK_ACK_MODE=immediate` it acks first, as the
original service did. Message bodies are never decoded by kombu: we parse bytes ourselves.

Error answers do not wait for their confirm one by one: they go out on a connection of their
own with pipelined confirms (`amqp.confirms`), and each message is acked when its answer's
confirm arrives — thousands of invalid messages a second instead of one per round trip. Valid
tasks and cancel requests are sent to Celery by a thread of their own (`amqp.handover`), so
waiting for those confirms never holds up this thread, which also feeds Celery's worker threads.

Back-pressure: when `MAX_ACTIVE_JOBS` is reached, a valid task is put back on its queue and the
consumer cancels its subscription until Jobs end; invalid messages are still answered at once,
and cancel requests (``{"cancel": "<task id>"}``) are handed to `dispatcher.cancel` whatever the
limit (stopping a task only makes room).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import bootsteps
from kombu import Consumer
from kombu.message import Message

from dispatcher.amqp.confirms import PipelinedAnswers
from dispatcher.amqp.handover import HandOver
from dispatcher.amqp.topology import CANCEL_TASK, SUBMIT_TASK, response_queue, task_queue
from dispatcher.core.intake import Accepted, CancelRequested, Rejected, take

log = logging.getLogger(__name__)

RESUME_CHECK_SECONDS = 0.5
QUEUE_DEPTH_SECONDS = 5.0
CONFIRM_POLL_SECONDS = 0.1


class TaskConsumerStep(bootsteps.ConsumerStep):
    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        self.runtime = parent.app.dispatcher
        self._timers: list[Any] = []
        self._consumer: Consumer | None = None
        self._paused = False
        self._answers: PipelinedAnswers | None = None
        self._handover: HandOver | None = None

    def start(self, parent: Any) -> None:
        super().start(parent)
        self.runtime.broker_ready.set()
        self.runtime.metrics.max_active_jobs.set(self.runtime.settings.max_active_jobs)
        # Timers run on the consumer's own thread, the only one that may use its channel. The
        # first wakes the event loop every second so a SIGTERM is acted on at once (it otherwise
        # sleeps until its next timer, up to ten seconds) and resumes a paused intake.
        hub = getattr(parent, "hub", None)
        self._answers = PipelinedAnswers(
            lambda: self.app.connection_for_write(
                transport_options={"confirm_publish": False}, heartbeat=0
            ),
            self.runtime.settings,
            watch=(lambda fd: hub.add_reader(fd, self._poll_answers)) if hub else None,
            unwatch=hub.remove_reader if hub else None,
        )
        self._handover = HandOver(
            watch=(lambda fd: hub.add_reader(fd, self._settle_handed_over)) if hub else None,
            unwatch=hub.remove_reader if hub else None,
        )
        if parent.timer is not None:
            self._timers = [
                parent.timer.call_repeatedly(RESUME_CHECK_SECONDS, self._resume_if_room),
                parent.timer.call_repeatedly(QUEUE_DEPTH_SECONDS, self._measure_queue),
                parent.timer.call_repeatedly(CONFIRM_POLL_SECONDS, self._poll_answers),
            ]

    def stop(self, parent: Any) -> None:
        self.runtime.broker_ready.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        self._close_answers()
        super().stop(parent)

    def shutdown(self, parent: Any) -> None:
        self.runtime.broker_ready.clear()
        self._close_answers()
        super().shutdown(parent)

    def _poll_answers(self) -> None:
        if self._answers is not None and self._answers.pending():
            self._answers.poll()
        self._settle_handed_over()

    def _settle_handed_over(self) -> None:
        if self._handover is not None and self._handover.pending():
            self._handover.settle()

    def _close_answers(self) -> None:
        if self._handover is not None:
            self._handover.close()
        if self._answers is not None:
            self._answers.close()

    def get_consumers(self, channel: Any) -> list[Consumer]:
        settings = self.runtime.settings
        queue = task_queue(settings)
        for declared in (queue, response_queue(settings)):
            declared(channel).declare()
        self._consumer = Consumer(
            channel,
            queues=[queue],
            on_message=self.on_message,
            prefetch_count=settings.task_prefetch,
            no_ack=False,
        )
        self._set_paused(False)  # a new connection consumes until the limit says otherwise
        return [self._consumer]

    def on_message(self, message: Message) -> None:
        immediate = self.runtime.settings.task_ack_mode == "immediate"
        self.runtime.metrics.tasks_received.inc()
        outcome = take(message.body, message.properties, self.runtime.settings)
        if isinstance(outcome, Accepted) and self.runtime.admission.room() <= 0:
            try:
                self._hold(message)
            except Exception:  # the channel broke: the broker redelivers the unacked message
                log.exception("could not put a task message back; it will be delivered again")
            return
        if immediate:
            message.ack()
        if isinstance(outcome, Rejected) and self._answers is not None:
            self._answer(outcome, message, immediate)
            return
        if not isinstance(outcome, Rejected) and self._handover is not None:
            self._hand_over_from_thread(outcome, message, immediate)
            return
        try:
            self.handle(outcome)
        except Exception:
            log.exception("could not hand over a task message; it will be delivered again")
            if not immediate:
                message.requeue()
            return
        if not immediate:
            message.ack()

    def _answer(self, rejected: Rejected, message: Message, immediate: bool) -> None:
        """Answer an invalid message; ack it once the broker confirmed the answer (put it back
        when it did not: it is read and answered again)."""
        self.runtime.metrics.tasks_invalid.inc()
        log.info("rejected a task message: %s", rejected.response.error)

        def settle(confirmed: bool) -> None:
            _settle(message, immediate, confirmed, "the answer to an invalid message")

        assert self._answers is not None
        self._answers.publish(rejected.response, rejected.route, rejected.message_id, settle)

    def _hand_over_from_thread(
        self, outcome: Accepted | CancelRequested, message: Message, immediate: bool
    ) -> None:
        """Send the Celery task from the hand-over thread; ack the message once it is confirmed
        (put it back, and stop counting it against MAX_ACTIVE_JOBS, when the send failed)."""
        if isinstance(outcome, Accepted):
            self.runtime.admission.handed_over(outcome.task.id)

            def send() -> None:
                self._send_submit(outcome)
        else:

            def send() -> None:
                self._hand_over_cancel(outcome)

        def settle(sent: bool) -> None:
            if not sent and isinstance(outcome, Accepted):
                self.runtime.admission.settled(outcome.task.id)
            _settle(message, immediate, sent, "a task message")

        assert self._handover is not None
        self._handover.submit(send, settle)

    def handle(self, outcome: Accepted | CancelRequested | Rejected) -> None:
        if isinstance(outcome, Rejected):
            self.runtime.metrics.tasks_invalid.inc()
            log.info("rejected a task message: %s", outcome.response.error)
            self.runtime.publisher.publish(outcome.response, outcome.route, outcome.message_id)
            return
        if isinstance(outcome, CancelRequested):
            self._hand_over_cancel(outcome)
            return
        self._hand_over(outcome)

    def _hand_over_cancel(self, request: CancelRequested) -> None:
        task_id, route = request.cancel.id, request.route
        self.app.tasks[CANCEL_TASK].apply_async(
            args=[task_id, route.to_json()], task_id=f"cancel.{task_id}.{uuid.uuid4().hex[:12]}"
        )
        log.info("cancel of task %s handed to %s", task_id, CANCEL_TASK)

    def _hand_over(self, accepted: Accepted) -> None:
        self.runtime.admission.handed_over(accepted.task.id)
        self._send_submit(accepted)

    def _send_submit(self, accepted: Accepted) -> None:
        task, route = accepted.task, accepted.route
        self.app.tasks[SUBMIT_TASK].apply_async(
            args=[task.to_json(), route.to_json()], task_id=f"submit.{task.id}.{task.digest()[:12]}"
        )
        log.info("task %s handed to %s", task.id, SUBMIT_TASK)

    # -- back-pressure ----------------------------------------------------------------------------

    def _hold(self, message: Message) -> None:
        """MAX_ACTIVE_JOBS is reached: the task goes back to the head of its queue, and this
        consumer stops taking more until Jobs end. The queue, not this process, holds the
        backlog (durable, and visible to operators as the queue's depth)."""
        message.requeue()
        if not self._paused and self._timers:
            settings = self.runtime.settings
            why = (
                "the active Jobs are not known (the Job watch has not listed them)"
                if self.runtime.active_jobs() is None
                else f"MAX_ACTIVE_JOBS ({settings.max_active_jobs}) is reached"
            )
            log.info("%s; tasks wait in queue %s", why, settings.task_queue_name)
            self._set_paused(True)

    def _resume_if_room(self) -> None:
        if self._paused and self._consumer is not None and self.runtime.admission.room() > 0:
            log.info("room for more Jobs: taking tasks again")
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        changed = paused != self._paused
        # Set first: cancelling waits for the broker's cancel-ok, and messages already on their
        # way are delivered meanwhile (to `_hold`, which must then see the consumer paused).
        self._paused = paused
        self.runtime.metrics.intake_paused.set(1 if paused else 0)
        if self._consumer is not None and changed:
            if paused:
                self._consumer.cancel()
            else:
                self._consumer.consume()

    def _measure_queue(self) -> None:
        if self._consumer is None:
            return
        try:
            _, ready, _ = self._consumer.channel.queue_declare(
                self.runtime.settings.task_queue_name, passive=True
            )
        except Exception as exc:  # noqa: BLE001 - a metric must never break the consumer
            log.debug("could not read the task queue's depth: %s", exc)
            return
        self.runtime.metrics.task_queue_messages.set(ready)


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
