"""Where a response goes: the AMQP properties of the task message that asked for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReplyRoute:
    """Where the response goes: the AMQP ``correlation_id`` and ``reply_to`` of the task."""

    correlation_id: str | None = None
    reply_to: str | None = None

    def to_json(self) -> dict[str, str | None]:
        """How the route travels inside our internal Celery tasks."""
        return {"correlation_id": self.correlation_id, "reply_to": self.reply_to}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ReplyRoute:
        """The route from :meth:`to_json`; values that are not non-empty strings count as unset."""
        values = [document.get(key) for key in ("correlation_id", "reply_to")]
        correlation_id, reply_to = (v if isinstance(v, str) and v else None for v in values)
        return cls(correlation_id=correlation_id, reply_to=reply_to)
