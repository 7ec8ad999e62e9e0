"""Submit: turn a valid task into exactly one Kubernetes Job.

Creating a Job whose name (the task id) is taken either joins it — the same task delivered
twice, recognised by the task hash annotation; a copy with a reply route of its own adds it to
the Job's routes with a conditional patch; a copy sent again after the Job ran and was
answered (it is kept for the idempotency window) is to be answered again — or is a conflict
with a different task that the caller must answer with an error. Kubernetes errors propagate
as `KubeError`s; whether to retry is the caller's decision (transient vs permanent).

A task cancelled before it got here (its tombstone is there, `core.tombstones`) gets no Job; one
whose cancel came while its Job was being created is stopped at once.
"""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from typing import Any

from dispatcher.config import Settings
from dispatcher.core.cancel import Cancelled, cancel
from dispatcher.core.conflicts import update_job
from dispatcher.core.ports import KubeGateway
from dispatcher.core.progress import Progress
from dispatcher.core.tombstones import is_buried
from dispatcher.errors import ConflictError, TaskConflictError, TransientKubeError
from dispatcher.kube.conventions import RESPONDED_ANNOTATION, TASK_HASH_ANNOTATION, owns
from dispatcher.kube.jobspec import build_job
from dispatcher.kube.outcome import job_finished
from dispatcher.kube.routes import with_route
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task

log = logging.getLogger(__name__)

JOIN_ATTEMPTS = 5


class Submitted(enum.Enum):
    CREATED = "created"
    JOINED = "joined"  # the same task was already running as this Job
    ANSWERED = "answered before"  # the same task already ran and was answered: answer again
    CANCELLED = "cancelled"  # cancelled before it reached the cluster: answer, no Job


def submit(
    task: Task,
    route: ReplyRoute,
    *,
    kube: KubeGateway,
    settings: Settings,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> Submitted:
    """Create the Job for `task`, or join the identical one that already exists (and have its
    answer sent to this task's route too). A created Job is announced as queued.

    Raises TaskConflictError when a different task holds the id, and KubeError otherwise.
    """
    now = now or datetime.now(UTC)
    if is_buried(task.id, kube, settings, now):
        # Cancelled. Usually no Job exists; one made by an earlier attempt of this submit (whose
        # answer from the API was lost) is stopped like any cancelled Job, and answers.
        stopped = cancel(task.id, route, kube=kube, settings=settings, now=now)
        if stopped is Cancelled.NO_SUCH_TASK:
            raise TaskConflictError(task.id)
        if stopped is not Cancelled.BEFORE_START:
            return Submitted.JOINED
        log.info("task %s was cancelled before it reached the cluster; no Job", task.id)
        return Submitted.CANCELLED
    manifest = build_job(task, route, settings)
    try:
        created = kube.create_job(manifest)
    except ConflictError:
        return _join(task, route, kube, settings)
    log.info("created Job %s for image %s", task.id, task.image)
    if progress is not None:  # first: the watch may announce it running a moment later
        progress.queued(created)
    if is_buried(task.id, kube, settings, now):  # a cancel came while the Job was created
        cancel(task.id, route, kube=kube, settings=settings)
    return Submitted.CREATED


def _join(task: Task, route: ReplyRoute, kube: KubeGateway, settings: Settings) -> Submitted:
    installation, window = settings.dispatcher_name, settings.idempotency_window_seconds

    def join(existing: dict[str, Any] | None) -> Submitted:
        if existing is None:  # deleted between our create and get: try the create again
            raise TransientKubeError(f"Job {task.id} was deleted while it was being created")
        meta = existing.get("metadata", {})
        annotations = meta.get("annotations") or {}
        if not owns(existing, installation):  # another installation's Job (or nobody's)
            raise TaskConflictError(task.id)
        if annotations.get(TASK_HASH_ANNOTATION) != task.digest():
            raise TaskConflictError(task.id)
        if RESPONDED_ANNOTATION in annotations:
            if window > 0 and job_finished(existing) and not meta.get("deletionTimestamp"):
                return Submitted.ANSWERED  # kept for the idempotency window
            # Answered and on its way out (no window, or answered with an error and being
            # deleted): run it anew once it is gone.
            raise TransientKubeError(f"Job {task.id} was answered while this copy joined it")
        more = with_route(annotations, route)
        if more is None:  # this route is answered already (or the Job has all it may have)
            log.info("Job %s already exists for the same task; joining it", task.id)
            return Submitted.JOINED
        # a conflict: the Job changed (another copy joined, or it was answered): look again
        kube.annotate_job(task.id, more, resource_version=meta["resourceVersion"])
        log.info("Job %s already exists for the same task; joining it with a route", task.id)
        return Submitted.JOINED

    return update_job(kube, task.id, join, attempts=JOIN_ATTEMPTS, doing="this copy joined it")
