"""Where a response goes: the AMQP properties of the task message that asked for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplyRoute:
    """Where the response goes: the AMQP ``correlation_id`` and ``reply_to`` of the task."""

    correlation_id: str | None = None
    reply_to: str | None = None
