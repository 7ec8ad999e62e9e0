"""Response messages: the one JSON answer every task message gets.

A :class:`Response` carries only the fields that apply (``id``, ``output``, ``exit``, ``error``,
``attempts``, always in that order) and encodes to compact UTF-8 JSON. ``attempts`` is there only
when a task that asked for retries ran more than once: one :class:`Attempt` per run, oldest
first; ``output`` and ``exit`` are the last one's. :func:`error_response` turns the
dispatcher's own exceptions into the one-line ``error`` text users see; it never produces a
traceback or a library repr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import InvalidTaskError, KubeError, TaskConflictError


@dataclass(frozen=True)
class Attempt:
    """One run of a task's container: its exit code or why it has none, the node it ran on,
    and when it started and ended (RFC 3339), each None when not known."""

    exit: int | None = None
    error: str | None = None
    node: str | None = None
    start: str | None = None
    end: str | None = None

    def to_json(self) -> dict[str, Any]:
        """All five keys, null when not known."""
        return {
            "exit": self.exit,
            "error": self.error,
            "node": self.node,
            "start": self.start,
            "end": self.end,
        }

    @classmethod
    def from_json(cls, document: object) -> Attempt:
        """Lenient, like :meth:`Response.from_json`."""
        values = document if isinstance(document, Mapping) else {}
        return cls(
            exit=_number(values.get("exit")),
            error=_text(values.get("error")),
            node=_text(values.get("node")),
            start=_text(values.get("start")),
            end=_text(values.get("end")),
        )


@dataclass(frozen=True)
class Response:
    """The answer to one task: its logs and exit code, or an error, or both; and its runs when
    there were several."""

    id: str | None = None
    output: str | None = None
    exit: int | None = None
    error: str | None = None
    attempts: tuple[Attempt, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON object: only the fields that are set, in the order id, output, exit, error,
        attempts (only when there was more than one)."""
        document: dict[str, Any] = {
            "id": self.id,
            "output": self.output,
            "exit": self.exit,
            "error": self.error,
        }
        if len(self.attempts) > 1:
            document["attempts"] = [attempt.to_json() for attempt in self.attempts]
        return {key: value for key, value in document.items() if value is not None}

    def encode(self) -> bytes:
        """Compact UTF-8 JSON, non-ASCII characters kept as they are."""
        text = json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", errors="replace")

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Response:
        """A response from its JSON object, as a producer receives it. Lenient: a field of the
        wrong type counts as absent, unknown fields are ignored."""
        attempts = document.get("attempts")
        return cls(
            id=_text(document.get("id")),
            output=_text(document.get("output")),
            exit=_number(document.get("exit")),
            error=_text(document.get("error")),
            attempts=tuple(map(Attempt.from_json, attempts if isinstance(attempts, list) else ())),
        )

    @classmethod
    def decode(cls, body: bytes | str) -> Response:
        """A response from the bytes of a response message; ValueError when it is not a JSON
        object."""
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("a response must be a JSON object")
        return cls.from_json(document)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_response(
    exc: InvalidTaskError | TaskConflictError | KubeError | str, task_id: str | None
) -> Response:
    """The response for a task that failed before or instead of producing a result.

    When ``task_id`` is None, the id an :class:`InvalidTaskError` or :class:`TaskConflictError`
    carries is used. The error text is ``str(exc)`` folded onto one line.
    """
    if task_id is None and isinstance(exc, InvalidTaskError | TaskConflictError):
        task_id = exc.task_id
    return Response(id=task_id, error=" ".join(str(exc).split()))
