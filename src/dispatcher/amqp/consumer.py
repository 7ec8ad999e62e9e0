"""The custom consumer bootstep: reads raw task messages and hands valid ones to Celery.

It declares the task and response topology, consumes the task queue with bounded prefetch, and
for each message either publishes an error response (invalid input) or sends the
`dispatcher.submit` Celery task — both confirmed by the broker — and only then acks the raw
message (`TASK_ACK_MODE=confirmed`). With `TASK_ACK_MODE=immediate` it acks first, as the
original service did. Message bodies are never decoded by kombu: we parse bytes ourselves.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from kombu import Consumer
from kombu.message import Message

from dispatcher.amqp.topology import SUBMIT_TASK, response_queue, task_queue
from dispatcher.core.intake import Accepted, Rejected, take

log = logging.getLogger(__name__)


class TaskConsumerStep(bootsteps.ConsumerStep):
    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.app = parent.app
        self.runtime = parent.app.dispatcher
        self._tick: Any = None

    def start(self, parent: Any) -> None:
        super().start(parent)
        self.runtime.broker_ready.set()
        # Wake the event loop every second so a SIGTERM is acted on at once (it otherwise sleeps
        # until its next timer, up to ten seconds).
        if parent.timer is not None:
            self._tick = parent.timer.call_repeatedly(1.0, _noop)

    def stop(self, parent: Any) -> None:
        self.runtime.broker_ready.clear()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        super().stop(parent)

    def shutdown(self, parent: Any) -> None:
        self.runtime.broker_ready.clear()
        super().shutdown(parent)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        settings = self.runtime.settings
        queue = task_queue(settings)
        for declared in (queue, response_queue(settings)):
            declared(channel).declare()
        consumer = Consumer(
            channel,
            queues=[queue],
            on_message=self.on_message,
            prefetch_count=settings.task_prefetch,
            no_ack=False,
        )
        return [consumer]

    def on_message(self, message: Message) -> None:
        immediate = self.runtime.settings.task_ack_mode == "immediate"
        if immediate:
            message.ack()
        try:
            self.handle(message)
        except Exception:
            log.exception("could not hand over a task message; it will be delivered again")
            if not immediate:
                message.requeue()
            return
        if not immediate:
            message.ack()

    def handle(self, message: Message) -> None:
        self.runtime.metrics.tasks_received.inc()
        outcome = take(message.body, message.properties, self.runtime.settings)
        if isinstance(outcome, Rejected):
            self.runtime.metrics.tasks_invalid.inc()
            log.info("rejected a task message: %s", outcome.response.error)
            self.runtime.publisher.publish(outcome.response, outcome.route, outcome.message_id)
            return
        self._hand_over(outcome)

    def _hand_over(self, accepted: Accepted) -> None:
        task, route = accepted.task, accepted.route
        route_json = {"correlation_id": route.correlation_id, "reply_to": route.reply_to}
        self.app.tasks[SUBMIT_TASK].apply_async(
            args=[task.to_json(), route_json], task_id=f"submit.{task.id}.{task.digest()[:12]}"
        )
        log.info("task %s handed to %s", task.id, SUBMIT_TASK)


def _noop() -> None:
    """Timer callback whose only effect is waking the event loop."""
