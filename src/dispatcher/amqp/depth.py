"""How many messages wait in our queues, by a passive declare of each.

A passive declare tells a queue's ready messages and its consumers, nothing more: messages
delivered and not acknowledged yet are not counted (RabbitMQ's management API would tell them;
the dispatcher does not depend on it). A queue that does not exist, or that the user may not
see, is reported as unknown with why, and the others are still read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError

from dispatcher.config import Settings
from dispatcher.core.overview import QueueDepth


def our_depth_names(settings: Settings) -> list[tuple[str, str]]:
    """(role, queue name) of the queues the overview shows."""
    return [
        ("tasks", settings.task_queue_name),
        ("internal", settings.celery_queue_name),
        ("responses", settings.response_queue_name),
    ]


class AmqpQueueProbe:
    """Reads the depths over a kombu connection that `connect` returns (used, then released)."""

    def __init__(self, connect: Callable[[], Any], settings: Settings) -> None:
        self._connect = connect
        self._names = our_depth_names(settings)

    def depths(self) -> list[QueueDepth]:
        try:
            connection = self._connect()
        except (OSError, AMQPError, KombuError) as exc:
            return [QueueDepth(role, name, None, None, _why(exc)) for role, name in self._names]
        try:
            return [self._one(connection, role, name) for role, name in self._names]
        finally:
            with contextlib.suppress(Exception):
                connection.release()

    def _one(self, connection: Any, role: str, name: str) -> QueueDepth:
        try:
            channel = connection.channel()  # a failed passive declare closes its channel
        except (OSError, AMQPError, KombuError) as exc:
            return QueueDepth(role, name, None, None, _why(exc))
        try:
            _, ready, consumers = channel.queue_declare(queue=name, passive=True)
            return QueueDepth(role, name, int(ready), int(consumers))
        except (OSError, AMQPError, KombuError) as exc:
            return QueueDepth(role, name, None, None, _why(exc))
        finally:
            with contextlib.suppress(Exception):
                channel.close()


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]
