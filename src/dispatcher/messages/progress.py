"""Progress events: one small JSON message per state change of a task, for UIs and the CLI.

Published (when ``PROGRESS_EXCHANGE_NAME`` is set) to a topic exchange with the task id as the
routing key, so a listener binds either its task's id or ``#`` for all tasks. States, in order:
``queued`` (its Job exists and waits for its pod to get a node), ``running`` (the pod has a node,
named in ``node``), for a task that asked for retries ``retrying`` each time an attempt failed
and the Job runs another (``attempt``: the number of the attempt that failed, from 1; ``exit``:
its exit code when known), then one of ``succeeded`` or ``failed`` once the answer was published
(``exit`` and ``error`` as in the response; a cancelled task is ``failed`` with error
``cancelled``). Events are best effort and at least once: a listener drops repeats by their
``message_id`` (``<task id>.<Job uid>.<state>``, and ``.<attempt>`` after ``retrying``) and
never needs them to get the answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

QUEUED: Final = "queued"
RUNNING: Final = "running"
RETRYING: Final = "retrying"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
STATES: Final = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED)
FINAL_STATES: Final = frozenset({SUCCEEDED, FAILED})


@dataclass(frozen=True)
class ProgressEvent:
    """One state change of the task ``id`` at ``time`` (RFC 3339, UTC)."""

    id: str
    state: str
    time: str
    node: str | None = None
    exit: int | None = None
    error: str | None = None
    attempt: int | None = None

    def to_json(self) -> dict[str, Any]:
        document = {
            "id": self.id,
            "state": self.state,
            "time": self.time,
            "node": self.node,
            "attempt": self.attempt,
            "exit": self.exit,
            "error": self.error,
        }
        return {key: value for key, value in document.items() if value is not None}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ProgressEvent:
        """An event from its JSON object; ValueError when ``id``, ``state`` or ``time`` is
        missing or not a string, or the state is unknown."""
        values = {key: document.get(key) for key in ("id", "state", "time")}
        if not all(isinstance(value, str) for value in values.values()):
            raise ValueError("a progress event needs string id, state and time")
        if values["state"] not in STATES:
            raise ValueError(f"unknown progress state {values['state']!r}")
        node, exit_code, error = document.get("node"), document.get("exit"), document.get("error")
        attempt = document.get("attempt")
        return cls(
            id=str(values["id"]),
            state=str(values["state"]),
            time=str(values["time"]),
            node=node if isinstance(node, str) else None,
            exit=exit_code
            if isinstance(exit_code, int) and not isinstance(exit_code, bool)
            else None,
            error=error if isinstance(error, str) else None,
            attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        )

    @classmethod
    def decode(cls, body: bytes | str) -> ProgressEvent:
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("a progress event must be a JSON object")
        return cls.from_json(document)
