"""Publishes responses: persistent JSON, confirmed by the broker before `publish` returns; and,
when PROGRESS_EXCHANGE_NAME is set, progress events (transient, not retried: best effort).

A response goes to the task's `reply_to` queue (through the default exchange, `mandatory`) when
the task message set one, otherwise to the response exchange with the response routing key. A
response the broker returns because the `reply_to` queue no longer exists (a client that gave up
waiting) goes to the response exchange instead: it is never dropped silently.
"""

from __future__ import annotations

import logging
from typing import Any

from dispatcher.amqp.topology import progress_exchange, response_exchange, response_queue
from dispatcher.config import Settings
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS = 20.0
EVENT_CONFIRM_TIMEOUT_SECONDS = 5.0
RETRY_POLICY = {"max_retries": 5, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5}


def response_message(
    response: Response, route: ReplyRoute, message_id: str
) -> tuple[bytes, dict[str, Any]]:
    """A response's body and AMQP properties: persistent JSON with its stable `message_id` and
    the task's correlation id (what every publisher of responses sends)."""
    properties: dict[str, Any] = {
        "message_id": message_id,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
    }
    if route.correlation_id:
        properties["correlation_id"] = route.correlation_id
    return response.encode(), properties


def log_reply_queue_gone(response: Response, route: ReplyRoute, settings: Settings) -> None:
    log.warning(
        "reply queue %s of %s no longer exists; the response goes to %s",
        route.reply_to,
        response.id,
        settings.response_exchange_name,
    )


class AmqpResponsePublisher:
    """Publishes through a kombu producer pool whose connections confirm every publish."""

    def __init__(self, pool: Any, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._exchange = response_exchange(settings)
        self._queue = response_queue(settings)
        self._progress = progress_exchange(settings)

    def publish(self, response: Response, route: ReplyRoute, message_id: str) -> None:
        body, properties = response_message(response, route, message_id)
        if route.reply_to and self._send(body, "", route.reply_to, properties, mandatory=True):
            log.info("published response for %s to %s", response.id, route.reply_to)
            return
        if route.reply_to:  # returned: the reply queue is gone (its client left); keep it
            log_reply_queue_gone(response, route, self._settings)
        exchange, key = self._settings.response_exchange_name, self._settings.response_routing_key
        self._send(body, exchange, key, properties, declare=[self._queue])
        log.info("published response for %s to %s", response.id, key)

    def _send(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any],
        *,
        mandatory: bool = False,
        declare: list[Any] | None = None,
    ) -> bool:
        """Publish and wait for the broker's confirm; False when the broker returned the
        message as unroutable (only asked for with `mandatory`)."""
        returned: list[str] = []

        def on_return(exc: Any, exchange: str, key: str, message: Any) -> None:
            returned.append(key)

        with self._pool.acquire(block=True, timeout=30) as producer:
            # With confirms on, a return arrives before the confirm of the same message, so it
            # is seen here before publish() returns.
            events = producer.channel.events["basic_return"]
            events.add(on_return)
            try:
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    declare=declare or [],
                    retry=True,
                    retry_policy=RETRY_POLICY,
                    # A broker in a resource alarm never confirms: give up (and retry the task)
                    # instead of blocking the consumer's event loop past its heartbeats.
                    confirm_timeout=CONFIRM_TIMEOUT_SECONDS,
                    **properties,
                )
            finally:
                events.discard(on_return)
        return routing_key not in returned

    def publish_event(
        self, event: ProgressEvent, correlation_id: str | None, message_id: str
    ) -> None:
        """One progress event to the progress exchange, routing key = the task id. Not retried
        and not persistent: a lost event costs a line of progress, never an answer."""
        if self._progress is None:
            return
        properties: dict[str, Any] = {"message_id": message_id}
        if correlation_id:
            properties["correlation_id"] = correlation_id
        with self._pool.acquire(block=True, timeout=10) as producer:
            producer.publish(
                event.encode(),
                exchange=self._progress,
                routing_key=event.id,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=1,
                declare=[self._progress],
                confirm_timeout=EVENT_CONFIRM_TIMEOUT_SECONDS,
                **properties,
            )
