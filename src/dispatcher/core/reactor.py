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
with what the API server holds, so a missed deletion cannot keep a Job counted forever. A Job that
ended (or is being deleted) is remembered with when it ended until its answer shows on it, so that
operators can see answers that are late (`unanswered`).

Per Job one record (`JobMemory`, keyed by the Job's uid) holds all the reactor knows of it: its
name and when it was let start, whether its pod has a node, which finalize requests were made,
when it ended while it waits for its answer, and, for a Job whose pod ended but whose own end was
not seen yet, a small copy of that pod (the request to finalize an ended Job carries the Job and
its pod as the watches showed them, so answering it reads neither again). A few hundred bytes;
forgetting a Job is one deletion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatcher.core.request import FinalizeRequest
from dispatcher.kube import kueue
from dispatcher.kube.conventions import (
    ANSWER_FINALIZER,
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    RESPONDED_ANNOTATION,
    RETRIES_ANNOTATION,
)
from dispatcher.kube.outcome import (
    Outcome,
    Stuck,
    job_ended_at,
    job_finished,
    pod_deadline_exceeded,
    pod_ended,
    pod_started,
    pod_stuck,
    will_retry,
)
from dispatcher.kube.snapshot import job_snapshot, pod_snapshot

log = logging.getLogger(__name__)

REASK_SECONDS = 300.0
"""A Job Kueue still cannot admit this long after finalize was asked is asked about again (or
after the grace period, when that is longer)."""


Schedule = Callable[[FinalizeRequest], None]


@dataclass(slots=True)
class JobMemory:
    """What the reactor knows of one Job, by its uid. Forgetting the Job is one deletion; a
    record whose Job is not active (ended, or not seen yet) keeps only what stops a second
    finalize request, until a re-list shows the Job gone."""

    name: str
    since: float | None = None  # active (seen, not ended): when it was last let start, POSIX s
    started: bool = False  # its pod has a node
    suspended: bool = False  # its queue timeout has not begun (waiting for Kueue, just admitted)
    finishing: bool = False  # handed to finalize: ended, deleted, or answered and not let go
    not_created: bool = False  # handed to finalize: its pod could not be created
    timed_out: bool = False  # handed to finalize for its queue timeout (since this admission)
    stuck_pods: set[str] = field(default_factory=set)  # Pod uids whose grace period runs
    ended_pod: dict[str, Any] | None = None  # its pod that ended, until its own end is seen
    # when finalize was last asked because Kueue can never admit it (asked again now and then)
    not_admitted_at: float | None = None
    evicted_at: str | None = None  # when its last eviction by Kueue was told
    # Kueue can never admit it but the Job was not seen yet (the watches are separate streams):
    # the Workload's uid; handed to finalize when the Job is seen
    early_workload: str | None = None
    ended_at: float | None = None  # ended or being deleted, its answer not seen yet: when, POSIX s
    # A task that asked for retries: how many failed attempts the Job counts while it will run
    # another, how many of those were told, and the failed pods seen (the exit of the newest is
    # told with its retry, so a retry is told once both the Job and that pod were seen)
    failed_counted: int = 0
    failed_told: int = 0
    failed_pods: set[str] = field(default_factory=set)
    retrying_job: dict[str, Any] | None = None  # its name, uid and annotations, until told

    @property
    def active(self) -> bool:
        return self.since is not None

    def end(self) -> None:
        """The Job ended or will: not active; what stops a second request stays."""
        self.since = None
        self.started = self.suspended = False
        self.ended_pod = self.not_admitted_at = self.evicted_at = self.early_workload = None
        self.retrying_job = None

    def empty(self) -> bool:
        return self == JobMemory(self.name)


@dataclass(frozen=True, slots=True)
class JobView:
    """One active Job as the reactor sees it (for status views)."""

    uid: str
    name: str
    since: float
    started: bool
    suspended: bool


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
        on_retrying: Callable[[dict[str, Any], int, int | None], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._schedule = schedule
        self._grace = stuck_grace_seconds
        self._queue_timeout = queue_timeout_seconds
        self._on_job_seen = on_job_seen or (lambda name: None)
        self._on_started = on_started or (lambda pod: None)  # a Job's pod got a node
        # Kueue evicted a Job's Workload: (Job name, reason, message)
        self._on_evicted = on_evicted or (lambda name, reason, message: None)
        # a Job's attempt failed and it runs another: (Job, number of the failed attempt, exit)
        self._on_retrying = on_retrying or (lambda job, attempt, exit_code: None)
        self._clock = clock
        self._reask = max(stuck_grace_seconds, REASK_SECONDS)
        self._lock = threading.Lock()
        self._jobs: dict[str, JobMemory] = {}  # Job uid -> what is known of it

    def _memory(self, uid: str, name: str) -> JobMemory:
        """The record of Job `uid`, made when there is none (call with the lock held)."""
        memory = self._jobs.get(uid)
        if memory is None:
            memory = self._jobs[uid] = JobMemory(name)
        return memory

    # -- what is active -------------------------------------------------------------------------

    def active_jobs(self) -> int:
        """Jobs of this installation that exist and have not ended (running or queued)."""
        with self._lock:
            return sum(1 for memory in self._jobs.values() if memory.active)

    def waiting_jobs(self) -> int:
        """Active Jobs whose pod has no node yet: queued for room in the cluster, or for Kueue
        to admit them."""
        with self._lock:
            return sum(1 for m in self._jobs.values() if m.active and not m.started)

    def jobs(self) -> list[JobView]:
        """The active Jobs, oldest first."""
        with self._lock:
            views = [
                JobView(uid, m.name, m.since, m.started, m.suspended)
                for uid, m in self._jobs.items()
                if m.since is not None
            ]
        return sorted(views, key=lambda view: view.since)

    def unanswered(self) -> list[float]:
        """When each Job that ended, or is being deleted, without its answer showing on it yet
        ended (POSIX seconds), oldest first. Finalize answers within seconds; a Job that stays
        here long is one whose answer cannot be published or recorded."""
        with self._lock:
            return sorted(m.ended_at for m in self._jobs.values() if m.ended_at is not None)

    def jobs_listed(self, present: set[str]) -> None:
        """After a (re-)list, with the uids of the Jobs it held: forget every other Job, so a
        missed deletion neither keeps a Job counted as active nor its uid remembered forever.
        A Job Kueue cannot admit whose own Job was not seen yet stays: a Workloads list prunes
        those."""
        with self._lock:
            for uid in self._jobs.keys() - present:
                memory = self._jobs.pop(uid)
                if memory.early_workload is not None:
                    self._jobs[uid] = JobMemory(memory.name, early_workload=memory.early_workload)

    def remembered(self) -> int:
        """How many Job uids the reactor holds any state for: bounded by the Jobs that exist."""
        with self._lock:
            return len(self._jobs)

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
            with self._lock:
                self._jobs.pop(uid, None)
            # Gone unanswered: its finalizer was removed by hand, or it predates the finalizer.
            if RESPONDED_ANNOTATION not in annotations:
                why = "deleted before it was answered"
                self._schedule(FinalizeRequest(name, uid, 0.0, why, dict(annotations)))
            return
        if RESPONDED_ANNOTATION in annotations:
            self._end(uid, name, None)
            kept = job_finished(job)  # left to its TTL (the idempotency window, or none)
            held = ANSWER_FINALIZER in (meta.get("finalizers") or [])
            if event_type == "LISTED" and (held or not kept):  # a crash cut its release short
                why = "answered, not yet let go of"
                self._once(uid, name, "finishing", FinalizeRequest(name, uid, 0.0, why))
            return
        if meta.get("deletionTimestamp"):  # deleted unanswered: our finalizer holds it for us
            self._end(uid, name, self._posix(meta["deletionTimestamp"]))
            why = "deleted before it was answered"
            request = FinalizeRequest(name, uid, 0.0, why, job=job_snapshot(job))
            self._once(uid, name, "finishing", request)
            return
        if not job_finished(job):
            self._track(uid, name, job)
            return
        pod = self._end(uid, name, self._posix(job_ended_at(job)))
        request = FinalizeRequest(name, uid, 0.0, "job ended", job=job_snapshot(job), pod=pod)
        self._once(uid, name, "finishing", request)

    def _track(self, uid: str, name: str, job: dict[str, Any]) -> None:
        """Count a Job that has not ended as active, and note whether it waits for Kueue: a
        suspended Job is queued (its queue timeout counts from its admission, not before), and
        a Job suspended again was evicted — preempted — and has no pod on a node any more."""
        since = _since(job)
        suspended = kueue.suspended(job)
        with self._lock:
            memory = self._memory(uid, name)
            if memory.since != since:
                if memory.since is not None:  # admitted again (after a preemption): a new timeout
                    memory.timed_out = False
                memory.since, memory.name = since, name
            early, memory.early_workload = memory.early_workload, None
            memory.suspended = suspended or kueue.just_admitted(job)
            if suspended:
                memory.started = False
            else:
                memory.not_admitted_at = None
        if early is not None and suspended:
            self._not_admissible(name, uid)
        self._retrying(uid, name, job)

    def _retrying(self, uid: str, name: str, job: dict[str, Any]) -> None:
        """Note how many attempts failed while the Job will run another (its own `failed`
        count), and tell the retries not told yet. Derived from the Job, so a restarted worker
        tells the same attempt again under the same message id."""
        if not will_retry(job):
            return
        failed = int(job["status"]["failed"])
        with self._lock:
            memory = self._memory(uid, name)
            if failed > memory.failed_counted:
                memory.failed_counted = failed
                meta = job.get("metadata") or {}
                keep = ("name", "uid", "annotations")
                memory.retrying_job = {"metadata": {k: meta[k] for k in keep if k in meta}}
        self._tell_retry(uid)

    def _tell_retry(self, uid: str) -> None:
        """Tell a retry once the Job counted the failed attempt and its pod was seen too (the
        two watches are separate streams: either may come first)."""
        with self._lock:
            memory = self._jobs.get(uid)
            if memory is None or memory.retrying_job is None:
                return
            if len(memory.failed_pods) < memory.failed_counted:
                return
            job, memory.retrying_job = memory.retrying_job, None
            attempt = memory.failed_told = memory.failed_counted
            exit_code = _exit_code(memory.ended_pod)
        log.info(
            "Job %s: attempt %d failed (exit %s); it runs again", memory.name, attempt, exit_code
        )
        self._on_retrying(job, attempt, exit_code)

    def _end(self, uid: str, name: str, ended_at: float | None) -> dict[str, Any] | None:
        """The Job ended (or is going): no longer active; its ended pod, if one was kept. Until
        its answer shows (`ended_at` None) it is remembered with when it ended (the first time
        told: a later event of the same end does not make it younger)."""
        with self._lock:
            memory = self._jobs.get(uid)
            if memory is None:
                if ended_at is None:
                    return None
                memory = self._jobs[uid] = JobMemory(name)
            pod = memory.ended_pod
            memory.end()
            memory.ended_at = None if ended_at is None else (memory.ended_at or ended_at)
            return pod

    def _posix(self, when: str | None) -> float:
        """An RFC 3339 time of the API server in POSIX seconds; now when it gave none."""
        try:
            return datetime.fromisoformat(str(when)).timestamp()
        except ValueError:
            return self._clock()

    def _once(
        self, uid: str, name: str, mark: str, request: FinalizeRequest, pod_uid: str = ""
    ) -> None:
        """Schedule `request` unless the Job's `mark` says it was (for "stuck_pods", its pod
        `pod_uid`); take the mark back when scheduling fails (the broker is away), so that the
        next event or re-list retries it."""
        with self._lock:
            if not _mark(self._memory(uid, name), mark, pod_uid, self._clock()):
                return
        try:
            self._schedule(request)
        except BaseException:
            with self._lock:
                memory = self._jobs.get(uid)
                if memory is not None:
                    _unmark(memory, mark, pod_uid)
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
                (uid, memory.name)
                for uid, memory in self._jobs.items()
                if memory.since is not None
                and not (memory.started or memory.timed_out or memory.suspended)
                and now - memory.since >= self._queue_timeout
            ]
        for uid, name in overdue:
            self._once(uid, name, "timed_out", FinalizeRequest(name, uid, 0.0, "queue timeout"))

    def _reask_not_admitted(self, now: float) -> None:
        with self._lock:
            due = [
                (uid, memory.name)
                for uid, memory in self._jobs.items()
                if memory.not_admitted_at is not None
                and now - memory.not_admitted_at >= self._reask
                and memory.active
                and memory.suspended
            ]
        for uid, name in due:
            self._schedule(FinalizeRequest(name, uid, 0.0, "not admitted by Kueue"))
            with self._lock:
                memory = self._jobs.get(uid)
                if memory is not None and memory.not_admitted_at is not None:
                    memory.not_admitted_at = now

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
            memory = self._jobs.get(uid)
            if memory is None or not memory.active:  # not ours, ended, or its Job not seen yet
                if problem is not None:
                    workload_uid = workload.get("metadata", {}).get("uid", "")
                    self._memory(uid, name).early_workload = workload_uid
                elif memory is not None:
                    memory.early_workload = None
                    if memory.empty():
                        del self._jobs[uid]
                return
        if event_type == "DELETED":
            return
        evicted = kueue.evicted(workload)
        if evicted is not None:
            self._evicted(name, uid, workload, *evicted)
        if problem is None:
            with self._lock:
                memory.not_admitted_at = None
            return
        log.info("Kueue cannot admit Job %s: %s", name, problem)
        self._not_admissible(name, uid)

    def workloads_listed(self, present: set[str]) -> None:
        """After a (re-)list of the Workloads, with their uids: forget the early ones that are
        gone (Jobs of other installations; ours are taken when their Job is seen)."""
        with self._lock:
            for uid, memory in list(self._jobs.items()):
                if memory.early_workload is not None and memory.early_workload not in present:
                    memory.early_workload = None
                    if memory.empty():
                        del self._jobs[uid]

    def _not_admissible(self, name: str, uid: str) -> None:
        """Ask for a finalize after the grace period, once (the sweep asks again later while
        Kueue still cannot admit the Job)."""
        request = FinalizeRequest(name, uid, self._grace, "not admitted by Kueue")
        self._once(uid, name, "not_admitted_at", request)

    def _evicted(
        self, name: str, uid: str, workload: dict[str, Any], reason: str, message: str
    ) -> None:
        when = kueue.evicted_at(workload)
        with self._lock:
            memory = self._memory(uid, name)
            if memory.evicted_at == when:
                return
            memory.evicted_at = when
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
        self._once(uid, name, "not_created", request)

    def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata", {})
        pod_uid = meta.get("uid", "")
        labels = meta.get("labels") or {}
        job_name, job_uid = labels.get(JOB_NAME_LABEL), labels.get(CONTROLLER_UID_LABEL)
        if not job_name or not job_uid:
            return
        if event_type == "DELETED":
            with self._lock:
                memory = self._jobs.get(job_uid)
                if memory is not None:
                    memory.stuck_pods.discard(pod_uid)
                    kept = memory.ended_pod
                    if kept is not None and kept.get("metadata", {}).get("uid") == pod_uid:
                        memory.ended_pod = None  # (not a newer pod of the same Job)
            return
        if pod_ended(pod):
            self._pod_ended(job_uid, job_name, pod)
        if pod_started(pod) and not meta.get("deletionTimestamp"):  # (a preempted pod going)
            with self._lock:
                memory = self._memory(job_uid, job_name)
                first, memory.started = not memory.started, True
            if first:
                self._on_started(pod)
        stuck = _stuck(pod)
        if stuck is None:
            return
        log.debug("Pod %s of Job %s is stuck: %s", meta.get("name"), job_name, stuck.message)
        at_once = stuck.outcome is Outcome.DEADLINE_EXCEEDED  # before the Job runs it again
        delay = 0.0 if at_once else self._grace
        request = FinalizeRequest(job_name, job_uid, delay, stuck.outcome.name)
        self._once(job_uid, job_name, "stuck_pods", request, pod_uid)

    def _pod_ended(self, job_uid: str, job_name: str, pod: dict[str, Any]) -> None:
        """Keep the pod until its Job's end is seen (which then needs no pod list); a failed
        attempt of a task with retries may complete a retry to tell."""
        meta = pod.get("metadata") or {}
        with self._lock:
            memory = self._memory(job_uid, job_name)
            if not memory.finishing and not _older(pod, memory.ended_pod):
                memory.ended_pod = pod_snapshot(pod)  # (the newest, however the list is ordered)
            failed = (pod.get("status") or {}).get("phase") == "Failed"
            retried = RETRIES_ANNOTATION in (meta.get("annotations") or {})
            if failed and retried and not pod_deadline_exceeded(pod):  # (that ends the task)
                memory.failed_pods.add(str(meta.get("uid", "")))
        self._tell_retry(job_uid)


def _mark(memory: JobMemory, mark: str, pod_uid: str, now: float) -> bool:
    """Set one of the marks that stop a second finalize request; False when it was set."""
    if mark == "stuck_pods":
        if pod_uid in memory.stuck_pods:
            return False
        memory.stuck_pods.add(pod_uid)
        return True
    if getattr(memory, mark) not in (None, False):
        return False
    setattr(memory, mark, now if mark == "not_admitted_at" else True)
    return True


def _unmark(memory: JobMemory, mark: str, pod_uid: str) -> None:
    if mark == "stuck_pods":
        memory.stuck_pods.discard(pod_uid)
    else:
        setattr(memory, mark, None if mark == "not_admitted_at" else False)


def _stuck(pod: dict[str, Any]) -> Stuck | None:
    """Why the pod cannot go on without help: stuck before it starts, or (for a task that may
    run again) stopped past its deadline, which ends the task rather than being retried."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    if pod_deadline_exceeded(pod) and RETRIES_ANNOTATION in annotations:
        return Stuck(Outcome.DEADLINE_EXCEEDED, "the pod ran past its deadline")
    return pod_stuck(pod)


def _older(pod: dict[str, Any], kept: dict[str, Any] | None) -> bool:
    """True when `pod` is another pod than `kept`, made before it (a re-list shows a retried
    Job's pods in any order)."""
    if kept is None or kept.get("metadata", {}).get("uid") == pod.get("metadata", {}).get("uid"):
        return False
    made, kept_made = (_created(p) for p in (pod, kept))
    return made is not None and kept_made is not None and made < kept_made


def _created(pod: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(pod.get("metadata", {}).get("creationTimestamp")))
    except ValueError:
        return None


def _exit_code(pod: dict[str, Any] | None) -> int | None:
    """The exit code of a pod's container that failed, if the pod (a snapshot) shows one."""
    if pod is None or (pod.get("status") or {}).get("phase") != "Failed":
        return None
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        code = ((container.get("state") or {}).get("terminated") or {}).get("exitCode")
        if isinstance(code, int):
            return code
    return None


def _since(job: dict[str, Any]) -> float:
    """When the Job was last let start, in POSIX seconds: its ``startTime`` (set when the Job
    controller starts it, reset each time Kueue admits it again), else its creation (now, when
    the API server said neither)."""
    started = kueue.admitted_at(job) or job.get("metadata", {}).get("creationTimestamp")
    try:
        return datetime.fromisoformat(str(started)).timestamp()
    except ValueError:
        return datetime.now(UTC).timestamp()
