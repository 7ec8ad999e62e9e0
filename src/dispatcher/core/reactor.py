"""Turns watch events into finalize requests, once per Job, and counts the Jobs that are active.

The watchers call `on_job`, `on_pod` and `on_event` for every event; the reactor decides when a
Job needs finalizing — it ended, someone deleted it (our finalizer keeps it until answered), its
pod is stuck (image pull, container config, or a pod that can never be scheduled), or its pod
cannot even be created (FailedCreate), the last two after the grace period — and asks for it
exactly once per Job uid (per stuck pod) in this process. A pod that only waits for room is not
stuck: `sweep` asks for a finalize when a Job has waited `queue_timeout_seconds` without its pod
getting a node. Finalize itself is idempotent and guarded
by a claim on the Job, so other replicas or a restarted process asking again is harmless.

The active Jobs (seen, not yet ended) are what `MAX_ACTIVE_JOBS` counts; a re-list replaces them
with what the API server holds, so a missed deletion cannot keep a Job counted forever.

Per Job only its uid, name and creation time are kept (a few hundred bytes), and for a Job whose
pod ended but whose own end was not seen yet, a small copy of that pod: the request to finalize
an ended Job carries the Job and its pod as the watches showed them, so answering it reads
neither again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatcher.kube.conventions import (
    ANSWER_FINALIZER,
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    RESPONDED_ANNOTATION,
)
from dispatcher.kube.outcome import job_finished, pod_ended, pod_started, pod_stuck
from dispatcher.kube.snapshot import job_snapshot, pod_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalizeRequest:
    job_name: str
    job_uid: str
    delay_seconds: float
    why: str
    deleted_annotations: dict[str, str] | None = None  # set when the Job vanished unanswered
    # Hints, not identity: the Job as the watch showed it, and its pod that ended (small copies)
    job: dict[str, Any] | None = field(default=None, compare=False)
    pod: dict[str, Any] | None = field(default=None, compare=False)


Schedule = Callable[[FinalizeRequest], None]


@dataclass(frozen=True, slots=True)
class _Active:
    name: str
    created: float  # POSIX seconds, from the Job's creationTimestamp


class Reactor:
    """Event handlers for the Job, Pod and Event watchers. Thread-safe."""

    def __init__(
        self,
        schedule: Schedule,
        *,
        stuck_grace_seconds: float,
        queue_timeout_seconds: float = 0,
        on_job_seen: Callable[[str], None] | None = None,
        on_started: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._schedule = schedule
        self._grace = stuck_grace_seconds
        self._queue_timeout = queue_timeout_seconds
        self._on_job_seen = on_job_seen or (lambda name: None)
        self._on_started = on_started or (lambda pod: None)  # a Job's pod got a node
        self._lock = threading.Lock()
        self._finishing: set[str] = set()  # Job uids already handed to finalize
        self._stuck: set[str] = set()  # Pod uids whose grace period is running
        self._not_created: set[str] = set()  # Job uids whose pod creation failed
        self._timed_out: set[str] = set()  # Job uids handed to finalize for their queue timeout
        self._active: dict[str, _Active] = {}  # Job uid -> Job seen and not yet ended
        self._started: set[str] = set()  # Job uids with a pod that has a node
        self._ended_pods: dict[str, dict[str, Any]] = {}  # Job uid -> its pod that ended

    # -- what is active -------------------------------------------------------------------------

    def active_jobs(self) -> int:
        """Jobs of this installation that exist and have not ended (running or queued)."""
        with self._lock:
            return len(self._active)

    def waiting_jobs(self) -> int:
        """Active Jobs whose pod has no node yet: queued for room in the cluster."""
        with self._lock:
            return len(self._active.keys() - self._started)

    def jobs_listed(self, present: set[str]) -> None:
        """After a (re-)list, with the uids of the Jobs it held: forget every other Job, so a
        missed deletion neither keeps a Job counted as active nor its uid remembered forever."""
        with self._lock:
            for uid in self._active.keys() - present:
                del self._active[uid]
            for uid in self._ended_pods.keys() - present:
                del self._ended_pods[uid]
            for seen in (self._finishing, self._not_created, self._timed_out, self._started):
                seen.intersection_update(present)

    def remembered(self) -> int:
        """How many Job uids the reactor holds any state for: bounded by the Jobs that exist."""
        with self._lock:
            sets = (self._finishing, self._not_created, self._timed_out, self._started)
            return len(set(self._active).union(*sets, self._ended_pods))

    # -- Jobs -----------------------------------------------------------------------------------

    def on_job(self, event_type: str, job: dict[str, Any]) -> None:
        try:
            self._on_job(event_type, job)
        finally:  # only once the Job counts as active (or ended) here: never counted by neither
            self._on_job_seen(job.get("metadata", {}).get("name", ""))

    def _on_job(self, event_type: str, job: dict[str, Any]) -> None:
        meta = job.get("metadata", {})
        uid, name = meta.get("uid", ""), meta.get("name", "")
        annotations = meta.get("annotations") or {}
        if event_type == "DELETED":
            self._forget(uid)
            # Gone unanswered: its finalizer was removed by hand, or it predates the finalizer.
            if RESPONDED_ANNOTATION not in annotations:
                why = "deleted before it was answered"
                self._schedule(FinalizeRequest(name, uid, 0.0, why, dict(annotations)))
            return
        if RESPONDED_ANNOTATION in annotations:
            self._end(uid)
            kept = job_finished(job)  # left to its TTL (the idempotency window, or none)
            held = ANSWER_FINALIZER in (meta.get("finalizers") or [])
            if event_type == "LISTED" and (held or not kept):  # a crash cut its release short
                why = "answered, not yet let go of"
                self._once(self._finishing, uid, FinalizeRequest(name, uid, 0.0, why))
            return
        if meta.get("deletionTimestamp"):  # deleted unanswered: our finalizer holds it for us
            self._end(uid)
            why = "deleted before it was answered"
            request = FinalizeRequest(name, uid, 0.0, why, job=job_snapshot(job))
            self._once(self._finishing, uid, request)
            return
        if not job_finished(job):
            with self._lock:
                self._active.setdefault(uid, _Active(name, _created(meta)))
            return
        with self._lock:
            pod = self._ended_pods.get(uid)
        self._end(uid)
        request = FinalizeRequest(name, uid, 0.0, "job ended", job=job_snapshot(job), pod=pod)
        self._once(self._finishing, uid, request)

    def _end(self, uid: str) -> None:
        with self._lock:
            self._active.pop(uid, None)
            self._started.discard(uid)
            self._ended_pods.pop(uid, None)

    def _forget(self, uid: str) -> None:
        with self._lock:
            for seen in (self._finishing, self._not_created, self._timed_out, self._started):
                seen.discard(uid)
            self._active.pop(uid, None)
            self._ended_pods.pop(uid, None)

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

    # -- queue timeout --------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Ask for a finalize of every Job that waited its queue timeout without a node."""
        if self._queue_timeout <= 0:
            return
        with self._lock:
            overdue = [
                (uid, active)
                for uid, active in self._active.items()
                if uid not in self._started
                and uid not in self._timed_out
                and now - active.created >= self._queue_timeout
            ]
        for uid, active in overdue:
            request = FinalizeRequest(active.name, uid, 0.0, "queue timeout")
            self._once(self._timed_out, uid, request)

    # -- Events and Pods ------------------------------------------------------------------------

    def on_event(self, event_type: str, event: dict[str, Any]) -> None:
        """Events the Job controller records when it cannot create a Job's pod (the watch selects
        FailedCreate on Jobs; finalize checks the Job is ours, and whether a quota is only used
        up for now, before answering)."""
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
        labels = meta.get("labels") or {}
        job_name, job_uid = labels.get(JOB_NAME_LABEL), labels.get(CONTROLLER_UID_LABEL)
        if event_type == "DELETED":
            with self._lock:
                self._stuck.discard(pod_uid)
                if job_uid:
                    self._ended_pods.pop(job_uid, None)
            return
        if not job_name or not job_uid:
            return
        if pod_ended(pod):  # kept until its Job's end is seen, which then needs no pod list
            with self._lock:
                if job_uid not in self._finishing:
                    self._ended_pods[job_uid] = pod_snapshot(pod)
        if pod_started(pod):
            with self._lock:
                first = job_uid not in self._started
                self._started.add(job_uid)
            if first:
                self._on_started(pod)
        stuck = pod_stuck(pod)
        if stuck is None:
            return
        log.debug("Pod %s of Job %s is stuck: %s", meta.get("name"), job_name, stuck.message)
        request = FinalizeRequest(job_name, job_uid, self._grace, stuck.outcome.name)
        self._once(self._stuck, pod_uid, request)


def _created(meta: dict[str, Any]) -> float:
    """The Job's creation time in POSIX seconds (now, when the API server did not say)."""
    try:
        return datetime.fromisoformat(str(meta["creationTimestamp"])).timestamp()
    except (KeyError, ValueError):
        return datetime.now(UTC).timestamp()
