"""Publishes responses: persistent JSON, confirmed by the broker before `publish` returns.

A response goes to the task's `reply_to` queue (through the default exchange) when the task
message set one, otherwise to the response exchange with the response routing key.
"""

from __future__ import annotations

import logging
from typing import Any

from dispatcher.amqp.topology import response_exchange, response_queue
from dispatcher.config import Settings
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS = 20.0
RETRY_POLICY = {"max_retries": 5, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5}


class AmqpResponsePublisher:
    """Publishes through a kombu producer pool whose connections confirm every publish."""

    def __init__(self, pool: Any, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._exchange = response_exchange(settings)
        self._queue = response_queue(settings)

    def publish(self, response: Response, route: ReplyRoute, message_id: str) -> None:
        if route.reply_to:
            exchange, routing_key, declare = "", route.reply_to, []
        else:
            exchange = self._settings.response_exchange_name
            routing_key = self._settings.response_routing_key
            declare = [self._queue]
        properties: dict[str, Any] = {"message_id": message_id}
        if route.correlation_id:
            properties["correlation_id"] = route.correlation_id
        with self._pool.acquire(block=True, timeout=30) as producer:
            producer.publish(
                response.encode(),
                exchange=exchange,
                routing_key=routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                declare=declare,
                retry=True,
                retry_policy=RETRY_POLICY,
                # A broker in a resource alarm never confirms: give up (and retry the task)
                # instead of blocking the consumer's event loop past its heartbeats.
                confirm_timeout=CONFIRM_TIMEOUT_SECONDS,
                **properties,
            )
        log.info("published response for %s to %s", response.id, routing_key)
