"""Finalize: read the deciding pod's result, publish the one response, release the Job.

Steps, each safe to repeat: (1) decide — the Job ended, its pod is still stuck after the grace
period, it waited longer than its queue timeout for room (a pod that only waits for room is
never answered before that), or someone deleted it (our finalizer holds it until answered);
(2) claim the Job with a conditional annotation patch so that only one worker answers even when
several replicas saw the same event; (3) read the logs, renew the claim when the read took long
(again conditionally: a claim taken over meanwhile stops here) and publish the response to every
route that asked, each with a broker confirm; (4) in one patch, mark the Job responded and drop
our finalizer — a Job that ran to its end is left to its TTL (the idempotency window, or at
once), any other is deleted. A crash between (3) and (4) can repeat the response after a restart
(at-least-once; `message_id` is stable).

The happy path costs three requests: the watch already delivered the ended Job and its pod
(`seen`, `pod`: small copies), so there is no read before the claim; the claim, the log, and
the release. A copy that is out of date only makes the conditional claim fail, and then the Job
is read again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.config import Settings
from dispatcher.core.conflicts import update_job
from dispatcher.core.ports import KubeGateway, ResponsePublisher
from dispatcher.core.progress import Progress
from dispatcher.errors import ConflictError, PermanentKubeError, TransientKubeError
from dispatcher.kube import kueue
from dispatcher.kube.conventions import (
    ANSWER_FINALIZER,
    CANCELLED_ANNOTATION,
    CLAIM_ANNOTATION,
    CONTAINER_NAME,
    RESPONDED_ANNOTATION,
    owns,
    pods_of_job,
    timestamp,
    workloads_of_job,
)
from dispatcher.kube.outcome import (
    DELETED_ERROR,
    Outcome,
    Stuck,
    Verdict,
    job_finished,
    judge_attempt_deadline,
    judge_cancelled,
    judge_deleted,
    judge_finished,
    judge_not_admitted,
    judge_not_created,
    judge_queue_timeout,
    judge_stuck,
    not_created_message,
    pod_started,
    pod_stuck,
    retries_of,
    runs,
    unschedulable_message,
)
from dispatcher.kube.routes import routes_of
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute

log = logging.getLogger(__name__)

CLAIM_TTL = timedelta(minutes=2)
RENEW_AFTER = CLAIM_TTL / 4
"""A claim older than this is renewed before publishing: until then no other worker may take
it over (it does so only once the claim is CLAIM_TTL old)."""
RELEASE_ATTEMPTS = 5
LOGS_UNAVAILABLE = "the task's logs could not be read: the Kubernetes API kept failing"


class Finalized(enum.Enum):
    ANSWERED = "answered"
    ALREADY_ANSWERED = "already answered"
    GONE = "gone"  # the Job no longer exists (or is another Job with the same name)
    RUNNING = "running"  # nothing to do yet: the Job runs and is not stuck
    CLAIMED = "claimed elsewhere"  # another worker is answering it; check again later


@dataclass(frozen=True)
class Result:
    state: Finalized
    verdict: Verdict | None = None
    retry_in: float | None = None  # seconds; set when the caller should look again
    age_seconds: float | None = None  # from Job creation to the response, when answered


@dataclass(frozen=True)
class Context:
    kube: KubeGateway
    publisher: ResponsePublisher
    settings: Settings
    holder: str  # identifies this finalize task (worker and task id) in the claim annotation
    logs_optional: bool = False  # answer without the logs if they still cannot be read
    attempt: int = 0  # which execution of the finalize task this is (0 first, then retries)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    progress: Progress = field(
        default_factory=Progress
    )  # announces the answered task (does nothing when off)

    @property
    def claimant(self) -> str:
        """This execution in a claim: a redelivered copy of the same attempt is a rival."""
        return f"{self.holder}#{self.attempt}"


def message_id(job_name: str, run: str) -> str:
    """The same for every copy of one run's response (`run` is the Job uid, or the task hash
    for answers given before any Job existed), so consumers can drop a repeat."""
    return f"{job_name}.{run}"


def finalize(
    job_name: str,
    job_uid: str,
    ctx: Context,
    now: datetime | None = None,
    *,
    seen: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
) -> Result:
    """Answer the Job if it is time. `seen` is the Job as the watch last showed it and `pod` its
    pod that ended (both optional, possibly out of date): with them, no read comes first."""
    now = now or datetime.now(UTC)
    job = seen if seen is not None and _uid(seen) == job_uid else None
    reads = 0
    while job is not None or reads < 2:  # a claim lost to an unrelated update: once more
        fresh = job is None
        if fresh:
            reads += 1
            job = ctx.kube.get_job(job_name)
        if job is None or _uid(job) != job_uid or not _ours(job, ctx):
            return Result(Finalized.GONE)
        answered = RESPONDED_ANNOTATION in (job["metadata"].get("annotations") or {})
        verdict = None if answered else _decide(job, ctx, now, pod)
        if verdict is None and not fresh:  # the copy may be behind: look at the Job as it is
            job = None
            continue
        if answered:  # answered before a crash: finish the job
            _let_go(job, {}, ctx)
            return Result(Finalized.ALREADY_ANSWERED)
        if verdict is None:
            return Result(Finalized.RUNNING)
        claim = _claim(job, ctx, now)
        if isinstance(claim, dict):
            try:
                return _answer_and_release(claim, verdict, ctx, now)
            except Exception:
                _drop_claim(job_name, ctx)  # a retry, or a redelivered copy, need not wait
                raise
        if claim is _Claim.HELD_ELSEWHERE and fresh:
            break
        job = None  # read it again as it is now
    return Result(Finalized.CLAIMED, retry_in=CLAIM_TTL.total_seconds())


def _uid(job: dict[str, Any]) -> str | None:
    uid = (job.get("metadata") or {}).get("uid")
    return uid if isinstance(uid, str) else None


def answer_deleted(job_name: str, job_uid: str, annotations: dict[str, str], ctx: Context) -> None:
    """A Job that vanished unanswered — our finalizer was removed by hand, or the Job was made
    before the finalizer existed — still gets a response, without its last state."""
    response = Response(id=job_name, error=DELETED_ERROR)
    _publish(response, annotations, message_id(job_name, job_uid), ctx, set())
    log.info("answered Job %s: deleted before it finished", job_name)


def _answer_and_release(
    job: dict[str, Any], verdict: Verdict, ctx: Context, now: datetime
) -> Result:
    job_name = job["metadata"]["name"]
    claimed = ctx.clock()
    response = _response(job, verdict, ctx)
    renewed = _renewed(job, ctx) if ctx.clock() - claimed >= RENEW_AFTER else job
    if renewed is None:  # the log read outlived the claim and another worker took it over
        log.warning("claim on Job %s was taken over; leaving the answer to its holder", job_name)
        return Result(Finalized.CLAIMED, retry_in=CLAIM_TTL.total_seconds())
    base = message_id(job_name, job["metadata"]["uid"])
    answered: set[ReplyRoute] = set()
    _publish(response, _annotations(renewed), base, ctx, answered)
    _release_answered(renewed, ctx, now, response=response, base_id=base, answered=answered)
    ctx.progress.finished(renewed, response)
    log.info("answered Job %s: %s", job_name, verdict.outcome.name)
    return Result(Finalized.ANSWERED, verdict, age_seconds=_age(job, now))


def _publish(
    response: Response,
    annotations: dict[str, str],
    base_id: str,
    ctx: Context,
    answered: set[ReplyRoute],
) -> None:
    """Publish `response` to every route of the Job not `answered` yet (and note them there).
    Each route has its own stable message_id: the first route's is `base_id`."""
    for index, route in enumerate(routes_of(annotations)):
        if route not in answered:
            ctx.publisher.publish(response, route, base_id if index == 0 else f"{base_id}.{index}")
            answered.add(route)


def _release_answered(
    job: dict[str, Any],
    ctx: Context,
    now: datetime,
    *,
    response: Response,
    base_id: str,
    answered: set[ReplyRoute],
) -> None:
    """Mark the Job answered and let go of it, conditionally on the version whose routes were
    answered: a copy of the task that joined meanwhile is answered too, then it is tried again.
    While the Job is not being deleted, marking and dropping the finalizer is one patch; a
    terminating Job is marked first (dropping its last finalizer deletes it as it was *before*
    that patch, and its DELETED event must show it answered, or it would be answered again)."""
    responded = {RESPONDED_ANNOTATION: timestamp(now)}
    first = job

    def release(job: dict[str, Any] | None) -> None:
        if job is None:
            return
        if job is not first:  # it changed: a copy of the task may have joined meanwhile
            _publish(response, _annotations(job), base_id, ctx, answered)
        meta = job["metadata"]
        version = meta["resourceVersion"]
        if meta.get("deletionTimestamp"):
            ctx.kube.annotate_job(meta["name"], responded, resource_version=version)
            _let_go(job, {}, ctx)
        else:
            _let_go(job, responded, ctx, resource_version=version)

    update_job(
        ctx.kube,
        job["metadata"]["name"],
        release,
        attempts=RELEASE_ATTEMPTS,
        doing="it was released",
        job=job,
        uid=job["metadata"]["uid"],
    )


def _let_go(
    job: dict[str, Any],
    annotations: dict[str, str],
    ctx: Context,
    *,
    resource_version: str | None = None,
) -> None:
    """Set `annotations` and drop our finalizer. A Job that ran to its end is then left to its
    TTL — the idempotency window, during which the same task sent again is answered from it,
    or none — so Kubernetes deletes it without another request; any other Job is deleted."""
    name, window = job["metadata"]["name"], ctx.settings.idempotency_window_seconds
    ended = job_finished(job) and not job["metadata"].get("deletionTimestamp")
    released = ctx.kube.release_job(
        name,
        ANSWER_FINALIZER,
        annotations,
        resource_version=resource_version,
        ttl_seconds=window if ended else None,
    )
    if released is not None and not ended:
        ctx.kube.delete_job(name)


def answer_again(job_name: str, route: ReplyRoute, ctx: Context) -> bool:
    """Publish the answer of a Job that ran to its end and was answered (it is kept for the
    idempotency window) once more, to `route`, with the same message_id and without a second
    run. False when the Job is not, or no longer, such a Job."""
    job = ctx.kube.get_job(job_name)
    if job is None or not _ours(job, ctx) or not job_finished(job):
        return False
    meta = job["metadata"]
    if RESPONDED_ANNOTATION not in (meta.get("annotations") or {}) or meta.get("deletionTimestamp"):
        return False
    pods = ctx.kube.list_pods(pods_of_job(meta["uid"]))
    verdict = judge_finished(job, pods, max_run_seconds=ctx.settings.job_max_run_seconds)
    response = _response(job, verdict, ctx)
    ctx.publisher.publish(response, route, message_id(meta["name"], meta["uid"]))
    log.info("answered Job %s again (the same task, sent again after its answer)", job_name)
    return True


def _decide(
    job: dict[str, Any], ctx: Context, now: datetime, ended_pod: dict[str, Any] | None = None
) -> Verdict | None:
    """The verdict on the Job now, or None while it runs or waits for room (within its
    queue timeout). `ended_pod` (its pod that ended, as the watch showed it) spares the list
    of its pods when the Job simply ran to its end."""
    uid = job["metadata"]["uid"]
    meta = job["metadata"]
    plain_end = (
        job_finished(job)
        and not meta.get("deletionTimestamp")
        and CANCELLED_ANNOTATION not in (meta.get("annotations") or {})
    )
    if ended_pod is not None and plain_end and runs(job) <= 1:
        pods = [ended_pod]
    else:
        pods = ctx.kube.list_pods(pods_of_job(uid))
    ended = _judge_ended(job, pods, ctx)
    if ended is not None:
        return ended
    for pod in pods:
        stuck = pod_stuck(pod)
        if stuck is not None and not _scaling_up(pod, stuck, ctx):
            return judge_stuck(pod, stuck)
    if any(pod_started(pod) for pod in pods):
        return None
    if kueue.suspended(job):  # queued in Kueue: answered only when it can never be admitted
        return _not_admitted(job, ctx)
    events: list[dict[str, Any]] = []
    if not pods:
        failed_create = f"involvedObject.uid={uid},reason=FailedCreate"
        events, _ = ctx.kube.list_objects("events", "", failed_create)
        verdict = judge_not_created(events)
        if verdict is not None:
            why = not_created_message(events)
            log.warning("Job %s: the Job controller cannot create its pod: %s", uid, why)
            return verdict
    return _queue_timeout(job, pods, events, ctx, now)


def _not_admitted(job: dict[str, Any], ctx: Context) -> Verdict | None:
    """The verdict on a suspended Job that Kueue cannot admit as things stand (its Workload
    says why), else None: it waits, however long."""
    if not ctx.settings.kueue_local_queue:
        return None  # suspended by someone else: it waits for them
    uid = job["metadata"]["uid"]
    workloads, _ = ctx.kube.list_objects("workloads", workloads_of_job(uid))
    problem = next(filter(None, map(kueue.never_admitted, workloads)), None)
    if problem is None:
        return None
    log.warning("Job %s: Kueue cannot admit it: %s", job["metadata"]["name"], problem)
    return judge_not_admitted(problem)


def _judge_ended(job: dict[str, Any], pods: list[dict[str, Any]], ctx: Context) -> Verdict | None:
    """The verdict on a Job that ended, was cancelled, or was deleted by someone else (held by
    our finalizer); None while it has not ended."""
    meta, max_run = job["metadata"], ctx.settings.job_max_run_seconds
    deleting, finished = bool(meta.get("deletionTimestamp")), job_finished(job)
    if CANCELLED_ANNOTATION in (meta.get("annotations") or {}) and (deleting or finished):
        return judge_cancelled(pods, job)  # stopped by a cancel request: its logs so far
    if deleting:
        return judge_deleted(job, pods, max_run_seconds=max_run)
    if finished:
        return judge_finished(job, pods, max_run_seconds=max_run)
    if retries_of(job):  # a pod past its deadline is not run again: it ends the task
        return judge_attempt_deadline(job, pods, max_run_seconds=max_run)
    return None


def _scaling_up(pod: dict[str, Any], stuck: Stuck, ctx: Context) -> bool:
    """A cluster autoscaler adding a node for this pod turns "cannot be scheduled" into a wait."""
    if stuck.outcome is not Outcome.UNSCHEDULABLE:
        return False
    selector = f"involvedObject.uid={pod['metadata'].get('uid', '')},reason=TriggeredScaleUp"
    events, _ = ctx.kube.list_objects("events", "", selector)
    return bool(events)


def _queue_timeout(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    events: list[dict[str, Any]],
    ctx: Context,
    now: datetime,
) -> Verdict | None:
    """Answer a Job whose pod never got a node within QUEUE_TIMEOUT_SECONDS, else None."""
    limit = ctx.settings.queue_timeout_seconds
    if kueue.just_admitted(job):  # admitted by Kueue a moment ago: its timeout has not begun
        return None
    age = _age(job, now, since=kueue.admitted_at(job))
    if limit <= 0 or age is None or age < limit:
        return None
    why = next(filter(None, map(unschedulable_message, pods)), None) or not_created_message(events)
    return judge_queue_timeout(limit, why)


def _ours(job: dict[str, Any], ctx: Context) -> bool:
    """Only Jobs of this installation are answered (events can name any Job in the namespace)."""
    return owns(job, ctx.settings.dispatcher_name)


class _Claim(enum.Enum):
    HELD_ELSEWHERE = "held elsewhere"
    CONFLICT = "conflict"  # the Job changed since we read it


def _claim(job: dict[str, Any], ctx: Context, now: datetime) -> dict[str, Any] | _Claim:
    """Conditional patch on resourceVersion: exactly one concurrent finalizer wins, and gets
    the claimed Job back (its resourceVersion fences the answer)."""
    meta = job["metadata"]
    current = (meta.get("annotations") or {}).get(CLAIM_ANNOTATION)
    if current and not _claim_expired(current, now) and not _ours_earlier(current, ctx):
        return _Claim.HELD_ELSEWHERE
    try:
        return _patch_claim(job, ctx, now)
    except ConflictError:
        return _Claim.CONFLICT


def _renewed(job: dict[str, Any], ctx: Context) -> dict[str, Any] | None:
    """Renew the claim just before publishing; the Job as renewed, or None when anyone else
    claimed it meanwhile (an update that is not a claim is read past)."""

    def renew(latest: dict[str, Any] | None) -> dict[str, Any] | None:
        if latest is None or _claimant(latest) != ctx.claimant:
            return None
        return _patch_claim(latest, ctx, ctx.clock())

    name, uid = job["metadata"]["name"], job["metadata"]["uid"]
    return update_job(ctx.kube, name, renew, attempts=3, doing="", job=job, uid=uid, exhausted=None)


def _patch_claim(job: dict[str, Any], ctx: Context, now: datetime) -> dict[str, Any]:
    meta = job["metadata"]
    claim = {CLAIM_ANNOTATION: f"{ctx.claimant} {timestamp(now)}"}
    return ctx.kube.annotate_job(meta["name"], claim, resource_version=meta["resourceVersion"])


def _claimant(job: dict[str, Any]) -> str:
    """Who holds the claim on the Job ("" when nobody does)."""
    claim = (job["metadata"].get("annotations") or {}).get(CLAIM_ANNOTATION, "")
    return str(claim).rsplit(" ", 1)[0]


def _drop_claim(job_name: str, ctx: Context) -> None:
    """After a failure (the broker went away mid-answer), let go of our claim if it is still
    ours and the Job unanswered, so the next try need not wait for it to expire. Best effort:
    a claim left behind only expires after CLAIM_TTL."""
    try:
        job = ctx.kube.get_job(job_name)
        if job is None or RESPONDED_ANNOTATION in _annotations(job):
            return
        if _claimant(job) == ctx.claimant:
            version = job["metadata"]["resourceVersion"]
            ctx.kube.annotate_job(job_name, {CLAIM_ANNOTATION: None}, resource_version=version)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the caller must see
        log.debug("could not let go of the claim on Job %s: %s", job_name, exc)


def _ours_earlier(claim: str, ctx: Context) -> bool:
    """A claim left by an earlier execution of this same finalize task (which has ended: it
    is retried only once it gave up)."""
    base, _, attempt = claim.rsplit(" ", 1)[0].rpartition("#")
    return base == ctx.holder and attempt.isdigit() and int(attempt) < ctx.attempt


def _claim_expired(claim: str, now: datetime) -> bool:
    try:
        taken = datetime.fromisoformat(claim.rsplit(" ", 1)[-1])
    except ValueError:
        return True
    return now - taken > CLAIM_TTL


def _response(job: dict[str, Any], verdict: Verdict, ctx: Context) -> Response:
    meta = job["metadata"]
    output = None
    error = verdict.error
    if verdict.pod_name is not None:
        cap = ctx.settings.max_output_bytes
        try:
            output = ctx.kube.read_log(verdict.pod_name, CONTAINER_NAME, cap)
        except PermanentKubeError as exc:  # e.g. the container never started: no logs exist
            log.info("no logs for Pod %s: %s", verdict.pod_name, exc)
        except TransientKubeError as exc:
            if not ctx.logs_optional:
                raise
            log.warning("giving up on the logs of Pod %s: %s", verdict.pod_name, exc)
            error = error or LOGS_UNAVAILABLE
    return Response(
        id=meta["name"],
        output=output,
        exit=verdict.exit_code,
        error=error,
        attempts=verdict.attempts,
    )


def _annotations(job: dict[str, Any]) -> dict[str, str]:
    return dict(job["metadata"].get("annotations") or {})


def _age(job: dict[str, Any], now: datetime, *, since: str | None = None) -> float | None:
    """Seconds from `since` (RFC 3339), else from the Job's creation, to `now`."""
    start = since or job["metadata"].get("creationTimestamp")
    try:
        return (now - datetime.fromisoformat(start)).total_seconds() if start else None
    except ValueError:
        return None
