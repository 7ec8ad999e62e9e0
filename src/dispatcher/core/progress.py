"""Progress: the small state-change events of a task, built from what the dispatcher sees.

`queued` when submit created the Job, `running` when the reactor first sees its pod on a node,
`retrying` when the reactor sees one of its attempts failed and the Job runs another (a task that
asked for retries), `succeeded`/`failed` when finalize has published the answer. Events are a
convenience for UIs and the CLI, never the answer itself: a failure to publish one is logged and
forgotten, and nothing waits for them. With no event publisher configured every method does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dispatcher.core.ports import EventPublisher
from dispatcher.kube.conventions import (
    CONTROLLER_UID_LABEL,
    CORRELATION_ID_ANNOTATION,
    TASK_ID_LABEL,
    timestamp,
)
from dispatcher.messages.progress import (
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    ProgressEvent,
)
from dispatcher.messages.response import Response

log = logging.getLogger(__name__)


class Progress:
    def __init__(
        self,
        publisher: EventPublisher | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._publisher = publisher
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._publisher is not None

    def queued(self, job: dict[str, Any]) -> None:
        """The Job was created: it waits for its pod to get a node."""
        meta = job.get("metadata") or {}
        self._send(meta, str(meta.get("uid", "")), QUEUED)

    def running(self, pod: dict[str, Any]) -> None:
        """The pod got a node (the first time this process saw it so)."""
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        task = {"name": labels.get(TASK_ID_LABEL, ""), "annotations": meta.get("annotations")}
        self._send(task, str(labels.get(CONTROLLER_UID_LABEL, "")), RUNNING, node=node)

    def retrying(self, job: dict[str, Any], attempt: int, exit_code: int | None) -> None:
        """Attempt number `attempt` failed (with `exit_code`, when known) and the Job runs its
        pod again after its backoff. One message id per attempt."""
        meta = job.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        self._send(meta, uid, RETRYING, f".{attempt}", attempt=attempt, exit=exit_code)

    def finished(self, job: dict[str, Any], response: Response) -> None:
        """The answer was published."""
        meta = job.get("metadata") or {}
        ok = response.error is None and response.exit == 0
        state = SUCCEEDED if ok else FAILED
        self._send(meta, str(meta.get("uid", "")), state, exit=response.exit, error=response.error)

    def _send(
        self, meta: dict[str, Any], uid: str, state: str, suffix: str = "", **details: Any
    ) -> None:
        if self._publisher is None or not meta.get("name"):
            return
        task_id = str(meta["name"])
        when = timestamp(self._clock())
        event = ProgressEvent(id=task_id, state=state, time=when, **details)
        correlation_id = (meta.get("annotations") or {}).get(CORRELATION_ID_ANNOTATION)
        try:
            self._publisher.publish_event(event, correlation_id, f"{task_id}.{uid}.{state}{suffix}")
        except Exception as exc:  # noqa: BLE001 - an event must never cost an answer
            log.warning("could not publish the %s event of task %s: %s", state, task_id, exc)
