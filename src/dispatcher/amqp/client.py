"""A small producer for people and scripts: publish a task, optionally wait for its response.

Used by `dispatcher submit`. The response is awaited on an exclusive, server-named reply queue
(RPC style: `reply_to` + `correlation_id`), so several callers never see each other's answers.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any

from kombu import Connection, Consumer, Producer, Queue

from dispatcher.amqp.topology import task_exchange, task_queue
from dispatcher.config import Settings


class TaskClient:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection = Connection(
            settings.broker_url, transport_options={"confirm_publish": True}, connect_timeout=10
        )

    def __enter__(self) -> TaskClient:
        self._connection.ensure_connection(max_retries=3)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._connection.release()

    def publish(
        self, body: bytes, *, correlation_id: str | None = None, reply_to: str | None = None
    ) -> None:
        channel = self._connection.default_channel
        task_queue(self._settings)(channel).declare()
        properties: dict[str, Any] = {}
        if correlation_id:
            properties["correlation_id"] = correlation_id
        if reply_to:
            properties["reply_to"] = reply_to
        Producer(channel).publish(
            body,
            exchange=task_exchange(self._settings),
            routing_key=self._settings.task_routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            **properties,
        )

    def call(self, body: bytes, *, correlation_id: str, timeout: float) -> dict[str, Any] | None:
        """Publish with a private reply queue and return the decoded response, or None."""
        channel = self._connection.channel()
        reply = Queue("", exclusive=True, auto_delete=True, durable=False)(channel)
        name = reply.declare()
        received: list[dict[str, Any]] = []

        def on_message(message: Any) -> None:
            if message.properties.get("correlation_id") == correlation_id:
                received.append(json.loads(message.body))
            message.ack()

        with Consumer(channel, queues=[Queue(name, no_declare=True)], on_message=on_message):
            self.publish(body, correlation_id=correlation_id, reply_to=name)
            deadline = time.monotonic() + timeout
            while not received and time.monotonic() < deadline:
                try:
                    self._connection.drain_events(timeout=min(1.0, timeout))
                except TimeoutError:
                    continue
        channel.close()
        return received[0] if received else None
