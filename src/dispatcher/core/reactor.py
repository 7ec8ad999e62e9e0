"""Turns watch events into finalize requests, once per Job, and counts the Jobs that are active.

The watchers call `on_job`, `on_pod` and `on_event` for every event; the reactor decides when a
Job needs finalizing — it ended, someone deleted it (our finalizer keeps it until answered), its
pod is stuck (image pull, container config, or a pod that can never be scheduled), or its pod
cannot even be created (FailedCreate), the last two after the grace period — and asks for it
exactly once per Job uid (per stuck pod) in this process. A pod that only waits for room is not
stuck: `sweep` asks for a finalize when a Job has waited `queue_timeout_seconds` without its pod
getting a node. Finalize itself is idempotent and guarded
by a claim on the Job, so other replicas or a restarted process asking again is harmless.

With Kueue, a suspended Job waits for admission: it is queued, never swept for its queue timeout
(which counts from its admission), and `on_workload` hands a Job that Kueue can never admit to
finalize after the grace period.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatcher.kube import kueue
from dispatcher.kube.conventions import (
    ANSWER_FINALIZER,
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    RESPONDED_ANNOTATION,
)
from dispatcher.kube.outcome import job_finished, pod_ended, pod_started, pod_stuck
from dispatcher.kube.snapshot import job_snapshot, pod_snapshot

log = logging.getLogger(__name__)

REASK_SECONDS = 300.0
"""A Job Kueue still cannot admit this long after finalize was asked is asked about again (or
after the grace period, when that is longer)."""


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
    since: float  # POSIX seconds: when the Job was last let start (startTime, else creation)


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
        on_evicted: Callable[[str, str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._schedule = schedule
        self._grace = stuck_grace_seconds
        self._queue_timeout = queue_timeout_seconds
        self._on_job_seen = on_job_seen or (lambda name: None)
        self._on_started = on_started or (lambda pod: None)  # a Job's pod got a node
        # Kueue evicted a Job's Workload: (Job name, reason, message)
        self._on_evicted = on_evicted or (lambda name, reason, message: None)
        self._clock = clock
        self._reask = max(stuck_grace_seconds, REASK_SECONDS)
        self._lock = threading.Lock()
        self._finishing: set[str] = set()  # Job uids already handed to finalize
        self._stuck: set[str] = set()  # Pod uids whose grace period is running
        self._not_created: set[str] = set()  # Job uids whose pod creation failed
        self._timed_out: set[str] = set()  # Job uids handed to finalize for their queue timeout
        self._active: dict[str, _Active] = {}  # Job uid -> Job seen and not yet ended
        self._started: set[str] = set()  # Job uids with a pod that has a node
        self._ended_pods: dict[str, dict[str, Any]] = {}  # Job uid -> its pod that ended
        # Job uids whose queue timeout has not begun: suspended (waiting for Kueue), or just
        # admitted with no startTime yet
        self._suspended: set[str] = set()
        # Job uid -> when finalize was last asked: Kueue can never admit it (asked again now
        # and then while that holds, in case an answer did not come of it)
        self._not_admitted: dict[str, float] = {}
        self._evictions: dict[str, str] = {}  # Job uid -> when its last eviction was told
        # Job uid -> (name, Workload uid): Kueue can never admit it, but its Job was not seen
        # yet (the watches are separate streams); handed to finalize when the Job is
        self._early: dict[str, tuple[str, str]] = {}

    # -- what is active -------------------------------------------------------------------------

    def active_jobs(self) -> int:
        """Jobs of this installation that exist and have not ended (running or queued)."""
        with self._lock:
            return len(self._active)

    def waiting_jobs(self) -> int:
        """Active Jobs whose pod has no node yet: queued for room in the cluster, or for Kueue
        to admit them."""
        with self._lock:
            return len(self._active.keys() - self._started)

    def jobs_listed(self, present: set[str]) -> None:
        """After a (re-)list, with the uids of the Jobs it held: forget every other Job, so a
        missed deletion neither keeps a Job counted as active nor its uid remembered forever."""
        with self._lock:
            for uid in self._active.keys() - present:
                del self._active[uid]
            for held in self._job_maps():
                if held is self._early:  # Jobs not seen yet: a Workloads list prunes them
                    continue
                for uid in held.keys() - present:
                    del held[uid]
            for seen in self._job_sets():
                seen.intersection_update(present)

    def remembered(self) -> int:
        """How many Job uids the reactor holds any state for: bounded by the Jobs that exist."""
        with self._lock:
            return len(set(self._active).union(*self._job_sets(), *self._job_maps()))

    def _job_maps(self) -> tuple[dict[str, Any], ...]:
        """Every map keyed by Job uid (call with the lock held)."""
        return (self._ended_pods, self._evictions, self._not_admitted, self._early)

    def _job_sets(self) -> tuple[set[str], ...]:
        """Every set of Job uids (call with the lock held)."""
        return (
            self._finishing,
            self._not_created,
            self._timed_out,
            self._started,
            self._suspended,
        )

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
            self._track(uid, name, job)
            return
        with self._lock:
            pod = self._ended_pods.get(uid)
        self._end(uid)
        request = FinalizeRequest(name, uid, 0.0, "job ended", job=job_snapshot(job), pod=pod)
        self._once(self._finishing, uid, request)

    def _track(self, uid: str, name: str, job: dict[str, Any]) -> None:
        """Count a Job that has not ended as active, and note whether it waits for Kueue: a
        suspended Job is queued (its queue timeout counts from its admission, not before), and
        a Job suspended again was evicted — preempted — and has no pod on a node any more."""
        since = _since(job)
        suspended = kueue.suspended(job)
        held = suspended or kueue.just_admitted(job)
        with self._lock:
            known = self._active.get(uid)
            if known is None or known.since != since:
                self._active[uid] = _Active(name, since)
                if known is not None:  # admitted again (after a preemption): a new timeout
                    self._timed_out.discard(uid)
            early = self._early.pop(uid, None)
            if held:
                self._suspended.add(uid)
            else:
                self._suspended.discard(uid)
            if suspended:
                self._started.discard(uid)
            else:
                self._not_admitted.pop(uid, None)
        if early is not None and suspended:
            self._not_admissible(name, uid)

    def _end(self, uid: str) -> None:
        with self._lock:
            self._active.pop(uid, None)
            for seen in (self._started, self._suspended):
                seen.discard(uid)
            for held in self._job_maps():
                held.pop(uid, None)

    def _forget(self, uid: str) -> None:
        with self._lock:
            for seen in self._job_sets():
                seen.discard(uid)
            self._active.pop(uid, None)
            for held in self._job_maps():
                held.pop(uid, None)

    def _once(self, seen: set[str] | dict[str, float], key: str, request: FinalizeRequest) -> None:
        """Schedule `request` unless `key` was already scheduled (a dict notes when); forget
        `key` again when scheduling fails (the broker is away), so that the next event or
        re-list retries it."""
        with self._lock:
            if key in seen:
                return
            if isinstance(seen, dict):
                seen[key] = self._clock()
            else:
                seen.add(key)
        try:
            self._schedule(request)
        except BaseException:
            with self._lock:
                if isinstance(seen, dict):
                    seen.pop(key, None)
                else:
                    seen.discard(key)
            raise

    # -- queue timeout --------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Ask for a finalize of every Job that waited its queue timeout without a node, and
        again for the Jobs Kueue still cannot admit that were asked for long ago."""
        self._reask_not_admitted(now)
        if self._queue_timeout <= 0:
            return
        with self._lock:
            overdue = [
                (uid, active)
                for uid, active in self._active.items()
                if uid not in self._started
                and uid not in self._timed_out
                and uid not in self._suspended
                and now - active.since >= self._queue_timeout
            ]
        for uid, active in overdue:
            request = FinalizeRequest(active.name, uid, 0.0, "queue timeout")
            self._once(self._timed_out, uid, request)

    def _reask_not_admitted(self, now: float) -> None:
        with self._lock:
            due = [
                (uid, self._active[uid].name)
                for uid, asked in self._not_admitted.items()
                if now - asked >= self._reask and uid in self._active and uid in self._suspended
            ]
        for uid, name in due:
            self._schedule(FinalizeRequest(name, uid, 0.0, "not admitted by Kueue"))
            with self._lock:
                if uid in self._not_admitted:
                    self._not_admitted[uid] = now

    # -- Kueue Workloads ------------------------------------------------------------------------

    def on_workload(self, event_type: str, workload: dict[str, Any]) -> None:
        """Workloads Kueue made for the installation's Jobs (others are ignored): a Job Kueue
        cannot admit as things stand is handed to finalize after the grace period (finalize
        looks again before answering); an eviction (a preemption) is told once."""
        owner = kueue.owner_job(workload)
        if owner is None:
            return
        name, uid = owner
        problem = None if event_type == "DELETED" else kueue.never_admitted(workload)
        with self._lock:
            if uid not in self._active:  # not one of ours, ended, or its Job not seen yet
                if problem is None:
                    self._early.pop(uid, None)
                else:
                    self._early[uid] = (name, workload.get("metadata", {}).get("uid", ""))
                return
        if event_type == "DELETED":
            return
        evicted = kueue.evicted(workload)
        if evicted is not None:
            self._evicted(name, uid, workload, *evicted)
        if problem is None:
            with self._lock:
                self._not_admitted.pop(uid, None)
            return
        log.info("Kueue cannot admit Job %s: %s", name, problem)
        self._not_admissible(name, uid)

    def workloads_listed(self, present: set[str]) -> None:
        """After a (re-)list of the Workloads, with their uids: forget the early ones that are
        gone (Jobs of other installations; ours are taken when their Job is seen)."""
        with self._lock:
            for uid, (_, workload_uid) in list(self._early.items()):
                if workload_uid not in present:
                    del self._early[uid]

    def _not_admissible(self, name: str, uid: str) -> None:
        """Ask for a finalize after the grace period, once (the sweep asks again later while
        Kueue still cannot admit the Job)."""
        request = FinalizeRequest(name, uid, self._grace, "not admitted by Kueue")
        self._once(self._not_admitted, uid, request)

    def _evicted(
        self, name: str, uid: str, workload: dict[str, Any], reason: str, message: str
    ) -> None:
        when = kueue.evicted_at(workload)
        with self._lock:
            if self._evictions.get(uid) == when:
                return
            self._evictions[uid] = when
        log.info(
            "Kueue evicted Job %s (%s): %s; it waits to be admitted again", name, reason, message
        )
        self._on_evicted(name, reason, message)

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
                kept = self._ended_pods.get(job_uid or "")
                if kept is not None and kept.get("metadata", {}).get("uid") == pod_uid:
                    del self._ended_pods[job_uid or ""]  # (not a newer pod of the same Job)
            return
        if not job_name or not job_uid:
            return
        if pod_ended(pod):  # kept until its Job's end is seen, which then needs no pod list
            with self._lock:
                if job_uid not in self._finishing:
                    self._ended_pods[job_uid] = pod_snapshot(pod)
        if pod_started(pod) and not meta.get("deletionTimestamp"):  # (a preempted pod going)
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


def _since(job: dict[str, Any]) -> float:
    """When the Job was last let start, in POSIX seconds: its ``startTime`` (set when the Job
    controller starts it, reset each time Kueue admits it again), else its creation (now, when
    the API server said neither)."""
    started = kueue.admitted_at(job) or job.get("metadata", {}).get("creationTimestamp")
    try:
        return datetime.fromisoformat(str(started)).timestamp()
    except ValueError:
        return datetime.now(UTC).timestamp()
