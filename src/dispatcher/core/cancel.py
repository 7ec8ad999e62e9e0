"""Cancel: stop a task that is in progress, or keep it from ever running, so that it is
answered ``cancelled``.

A task that has no Job yet (it waits in RabbitMQ, or was never sent) gets a tombstone
(`core.tombstones`): the cancel is answered ``cancelled`` at once, and the task, when it is read,
is answered ``cancelled`` without a Job.

A task is in progress while its Job exists unanswered and has not ended: queued for room in the
cluster, running, or stuck. Cancelling marks the Job (``job-dispatcher.io/cancelled``), adds the
cancel request's own route to the Job's routes when it differs from the task's, and deletes the
Job; our finalizer holds it until finalize has read the pod's logs so far and published the one
answer (``"error": "cancelled"``) to every route. Then the Job goes, and its pod with it. Each
step is safe to repeat (the mark and the route are a conditional patch, the delete idempotent).
"""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from typing import Any

from dispatcher.config import Settings
from dispatcher.core.conflicts import update_job
from dispatcher.core.ports import KubeGateway
from dispatcher.core.tombstones import bury
from dispatcher.errors import ConflictError
from dispatcher.kube.conventions import (
    CANCELLED_ANNOTATION,
    RESPONDED_ANNOTATION,
    owns,
    timestamp,
)
from dispatcher.kube.outcome import job_finished
from dispatcher.kube.routes import with_route
from dispatcher.messages.route import ReplyRoute

log = logging.getLogger(__name__)

ATTEMPTS = 5


class Cancelled(enum.Enum):
    STOPPING = "stopping"  # the Job is being stopped; its answer follows on every route
    BEFORE_START = "before start"  # no Job yet: a tombstone keeps the task from ever running
    NO_SUCH_TASK = "no such task"  # the id is another installation's Job
    ENDED = "ended"  # the Job ended or was answered: its own answer stands


def cancel(
    task_id: str,
    route: ReplyRoute,
    *,
    kube: KubeGateway,
    settings: Settings,
    now: datetime | None = None,
) -> Cancelled:
    """Stop the task `task_id` if it is in progress. Raises KubeError when the API fails."""
    now = now or datetime.now(UTC)
    buried = False

    def stop(job: dict[str, Any] | None) -> Cancelled:
        nonlocal buried
        if job is None and not buried:
            bury(task_id, kube, settings, now)
            buried = True  # then look again, as after a conflict: a submit may have just run
            raise ConflictError(f"Job {task_id} not found before its tombstone was written")
        if job is None:
            log.info("task %s cancelled before it reached the cluster", task_id)
            return Cancelled.BEFORE_START
        if not owns(job, settings.dispatcher_name):
            return Cancelled.NO_SUCH_TASK
        meta = job["metadata"]
        annotations = meta.get("annotations") or {}
        already = CANCELLED_ANNOTATION in annotations
        if RESPONDED_ANNOTATION in annotations or (job_finished(job) and not already):
            return Cancelled.ENDED
        change: dict[str, str | None] = {} if already else {CANCELLED_ANNOTATION: timestamp(now)}
        change.update(with_route(annotations, route) or {})
        if change:  # a conflict: the Job changed (it ended, or was joined): look again
            kube.annotate_job(task_id, change, resource_version=meta["resourceVersion"])
        kube.delete_job(task_id)
        log.info("task %s cancelled: its Job is being stopped", task_id)
        return Cancelled.STOPPING

    return update_job(kube, task_id, stop, attempts=ATTEMPTS, doing="it was cancelled")


def cancelled_before_start(task_id: str, settings: Settings) -> str:
    """The cancel request's answer when the task had no Job yet (a tombstone now waits for it):
    it starts with ``cancelled`` like the answer of a stopped task."""
    return (
        f"cancelled: task '{task_id}' had no Job yet; if it arrives within "
        f"{settings.cancel_tombstone_seconds} s (CANCEL_TOMBSTONE_SECONDS) it is answered "
        "'cancelled' without running"
    )


def not_in_progress_error(task_id: str, why: Cancelled) -> str:
    """The cancel request's answer when there was nothing to stop."""
    if why is Cancelled.ENDED:
        return f"cancel: task '{task_id}' is not in progress: it has already ended"
    return (
        f"cancel: task '{task_id}' is not in progress: the id names a Job of another installation"
    )


def not_stopped_error(task_id: str, why: str) -> str:
    """The cancel request's answer when stopping the task failed (`why`): the task goes on."""
    return f"cancel: task '{task_id}' was not stopped: {why}"
