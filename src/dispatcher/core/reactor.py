"""Turns watch events into finalize requests, once per Job.

The watchers call `on_job`, `on_pod` and `on_event` for every event; the reactor decides when a
Job needs finalizing — it ended, its pod is stuck (image pull, scheduling, container config), or
its pod cannot even be created (FailedCreate), the last two after the grace period — and asks for
it exactly once per Job uid (per stuck pod) in this process. Finalize itself is idempotent and
guarded by a claim on the Job, so other replicas or a restarted process asking again is harmless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatcher.kube.conventions import (
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    RESPONDED_ANNOTATION,
)
from dispatcher.kube.outcome import job_finished, pod_stuck

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalizeRequest:
    job_name: str
    job_uid: str
    delay_seconds: float
    why: str
    deleted_annotations: dict[str, str] | None = None  # set when the Job vanished unanswered


Schedule = Callable[[FinalizeRequest], None]


class Reactor:
    """Event handlers for the Job and Pod watchers. Thread-safe."""

    def __init__(self, schedule: Schedule, *, stuck_grace_seconds: float) -> None:
        self._schedule = schedule
        self._grace = stuck_grace_seconds
        self._lock = threading.Lock()
        self._finishing: set[str] = set()  # Job uids already handed to finalize
        self._stuck: set[str] = set()  # Pod uids whose grace period is running
        self._not_created: set[str] = set()  # Job uids whose pod creation failed
        self.in_flight: set[str] = set()  # Job uids seen and not yet ended

    def on_job(self, event_type: str, job: dict[str, Any]) -> None:
        meta = job.get("metadata", {})
        uid, name = meta.get("uid", ""), meta.get("name", "")
        annotations = meta.get("annotations") or {}
        if event_type == "DELETED":
            with self._lock:
                self._finishing.discard(uid)
                self._not_created.discard(uid)
                self.in_flight.discard(uid)
            if RESPONDED_ANNOTATION not in annotations:  # deleted by someone else, unanswered
                why = "deleted before it was answered"
                self._schedule(FinalizeRequest(name, uid, 0.0, why, dict(annotations)))
            return
        if RESPONDED_ANNOTATION in annotations:
            with self._lock:
                self.in_flight.discard(uid)
            if event_type == "LISTED":  # answered before a crash, never deleted: finish the job
                why = "answered, not yet deleted"
                self._once(self._finishing, uid, FinalizeRequest(name, uid, 0.0, why))
            return
        if not job_finished(job):
            with self._lock:
                self.in_flight.add(uid)
            return
        with self._lock:
            self.in_flight.discard(uid)
        self._once(self._finishing, uid, FinalizeRequest(name, uid, 0.0, "job ended"))

    def _once(self, seen: set[str], key: str, request: FinalizeRequest) -> None:
        """Schedule `request` unless `key` was already scheduled; forget `key` again when
        scheduling fails (the broker is away), so that the next event or re-list retries it."""
        with self._lock:
            if key in seen:
                return
            seen.add(key)
        try:
            self._schedule(request)
        except BaseException:
            with self._lock:
                seen.discard(key)
            raise

    def on_event(self, event_type: str, event: dict[str, Any]) -> None:
        """Events the Job controller records when it cannot create a Job's pod (the watch selects
        FailedCreate on Jobs; finalize checks the Job is ours before answering)."""
        involved = event.get("involvedObject") or {}
        uid, name = involved.get("uid"), involved.get("name")
        if event_type == "DELETED" or event.get("reason") != "FailedCreate" or not uid or not name:
            return
        log.info("Job %s could not create its pod: %s", name, event.get("message"))
        request = FinalizeRequest(name, uid, self._grace, "pod not created")
        self._once(self._not_created, uid, request)

    def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata", {})
        pod_uid = meta.get("uid", "")
        if event_type == "DELETED":
            with self._lock:
                self._stuck.discard(pod_uid)
            return
        stuck = pod_stuck(pod)
        labels = meta.get("labels") or {}
        job_name, job_uid = labels.get(JOB_NAME_LABEL), labels.get(CONTROLLER_UID_LABEL)
        if stuck is None or not job_name or not job_uid:
            return
        log.debug("Pod %s of Job %s is stuck: %s", meta.get("name"), job_name, stuck.message)
        request = FinalizeRequest(job_name, job_uid, self._grace, stuck.outcome.name)
        self._once(self._stuck, pod_uid, request)
