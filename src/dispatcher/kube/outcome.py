"""How a task ended, decided from its Job and Pod objects alone.

Pure functions over the JSON dicts the API server returns (camelCase): no client, no clock, no
I/O. :func:`job_finished` says when a Job is terminal, :func:`pod_stuck` spots a pod that will not
start without help (image pull failure, unschedulable, bad container config), and
:func:`judge_finished` / :func:`judge_stuck` turn what is known into one :class:`Verdict`: the
outcome, the pod whose logs to return, the exit code and the user-facing error text (one line).

Kubernetes may run a Job's pod more than once; pods lost to a disruption (``DisruptionTarget``)
never decide the outcome, the newest pod that ran to its end does. A task that asked for retries
may run several pods to their end, one per attempt: the verdict then lists them all
(:func:`attempts_of`), oldest first, and a Job is ended only by its own ``Complete`` or
``Failed`` condition, never by a failed pod — except a pod past its deadline
(:func:`pod_deadline_exceeded`), which ends the task rather than being run again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

from dispatcher.kube.capacity import quota_waiting, waiting_for_room
from dispatcher.kube.conventions import CONTAINER_NAME
from dispatcher.kube.objects import condition, one_line
from dispatcher.messages.response import Attempt

_IMAGE_PULL_REASONS: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
_CONTAINER_CONFIG_REASONS: Final = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
_TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
_DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
_OOM_ERROR: Final = "the container was killed: out of memory (OOMKilled)"
_OLDEST: Final = datetime.min.replace(tzinfo=UTC)


class Outcome(Enum):
    """How a task ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    IMAGE_PULL_FAILED = "image_pull_failed"
    UNSCHEDULABLE = "unschedulable"
    CONTAINER_CONFIG_ERROR = "container_config_error"
    POD_NOT_CREATED = "pod_not_created"
    NOT_ADMITTED = "not_admitted"
    QUEUE_TIMEOUT = "queue_timeout"
    LOST = "lost"
    DELETED = "deleted"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Verdict:
    """The decided result of a task, ready to become a response."""

    outcome: Outcome
    pod_name: str | None
    """The pod whose logs are the output; None: there is no output."""
    exit_code: int | None
    error: str | None
    attempts: tuple[Attempt, ...] = ()
    """Every run of the container, oldest first, when there was more than one."""


@dataclass(frozen=True)
class Stuck:
    """A pod that cannot start on its own, and why, in words for the user."""

    outcome: Outcome
    message: str


def job_finished(job: Mapping[str, Any]) -> bool:
    """True when the Job has a ``Complete`` or ``Failed`` condition with status True."""
    return any(condition(job, kind) is not None for kind in ("Complete", "Failed"))


def retries_of(job: Mapping[str, Any]) -> int:
    """How often the Job may run its pod again after a failure (its ``backoffLimit``)."""
    limit = (job.get("spec") or {}).get("backoffLimit")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else 0


def runs(job: Mapping[str, Any]) -> int:
    """How many of the Job's pods ended, as its status counts them (failed and succeeded)."""
    status = job.get("status") or {}
    counts = (status.get("failed"), status.get("succeeded"))
    return sum(n for n in counts if isinstance(n, int) and not isinstance(n, bool))


def will_retry(job: Mapping[str, Any]) -> bool:
    """True while a Job that has not ended has failed pods and may still run another: it waits
    out the Job controller's backoff, or runs its next attempt."""
    failed = (job.get("status") or {}).get("failed")
    if not isinstance(failed, int) or isinstance(failed, bool) or failed < 1:
        return False
    ending = any(condition(job, kind) is not None for kind in ("FailureTarget", "Failed"))
    return not ending and failed <= retries_of(job)


def job_ended_at(job: Mapping[str, Any]) -> str | None:
    """When the Job's ``Complete`` or ``Failed`` condition became true (RFC 3339), if it says."""
    for kind in ("Complete", "Failed"):
        ended = condition(job, kind)
        if ended is not None and ended.get("lastTransitionTime"):
            return str(ended["lastTransitionTime"])
    return None


def job_failure_reason(job: Mapping[str, Any]) -> str | None:
    """The reason of the Job's ``Failed`` condition (e.g. DeadlineExceeded, PodFailurePolicy)."""
    failed = condition(job, "Failed")
    return None if failed is None else failed.get("reason")


def pod_stuck(pod: Mapping[str, Any]) -> Stuck | None:
    """Why a pod cannot start without help, or None when it is not stuck (as far as seen)."""
    status = pod.get("status") or {}
    if status.get("phase") in _TERMINAL_PHASES:
        return None
    for container in status.get("containerStatuses") or ():
        stuck = _container_stuck(pod, container)
        if stuck is not None:
            return stuck
    message = unschedulable_message(pod)
    if message is not None and not waiting_for_room(message):
        return Stuck(Outcome.UNSCHEDULABLE, f"the pod cannot be scheduled: {message}")
    return None


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message (one line) while it cannot place the pod, else None."""
    scheduled = condition(pod, "PodScheduled", status="False")
    if scheduled is None or scheduled.get("reason") != "Unschedulable":
        return None
    return one_line(scheduled.get("message") or "Unschedulable")


def pod_started(pod: Mapping[str, Any]) -> bool:
    """True once the pod has a node: it no longer waits for room."""
    return bool((pod.get("spec") or {}).get("nodeName"))


def pod_ended(pod: Mapping[str, Any]) -> bool:
    """True when the pod ran to its end and was not disrupted: it can decide its Job."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in _TERMINAL_PHASES and condition(pod, "DisruptionTarget") is None


def deciding_pod(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest pod that ran to its end and was not disrupted, or None."""
    return max(filter(pod_ended, pods), key=_age_key, default=None)


def pod_deadline_exceeded(pod: Mapping[str, Any]) -> bool:
    """True when the pod was stopped for running past its own deadline (a task's
    ``timeout_seconds``)."""
    status = pod.get("status") or {}
    return status.get("phase") == "Failed" and status.get("reason") == _DEADLINE_EXCEEDED


def attempts_of(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, max_run_seconds: int
) -> tuple[Attempt, ...]:
    """Each run of the container to its end (disruptions aside), oldest first; empty when there
    was at most one: an answer lists its attempts only when there were several."""
    ended = sorted(filter(pod_ended, pods), key=_age_key)
    if len(ended) < 2:
        return ()
    return tuple(_attempt(job, pod, max_run_seconds) for pod in ended)


def _attempt(job: Mapping[str, Any], pod: Mapping[str, Any], max_run_seconds: int) -> Attempt:
    terminated = _terminated(pod) or {}
    exit_code = terminated.get("exitCode")
    error = None
    if pod_deadline_exceeded(pod):
        error, exit_code = _deadline_error(job, max_run_seconds), None
    elif terminated.get("reason") == "OOMKilled":
        error = _OOM_ERROR
    elif not terminated:
        error = "the attempt ended without a container result"
    status = pod.get("status") or {}
    return Attempt(
        exit=exit_code if isinstance(exit_code, int) else None,
        error=error,
        node=(pod.get("spec") or {}).get("nodeName"),
        start=terminated.get("startedAt") or status.get("startTime"),
        end=terminated.get("finishedAt"),
    )


def judge_finished(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, max_run_seconds: int
) -> Verdict:
    """The verdict on a finished Job, from the pod that decided it (with every attempt, when
    there were several)."""
    attempts = attempts_of(job, pods, max_run_seconds=max_run_seconds)
    return replace(_judge_finished(job, pods, max_run_seconds), attempts=attempts)


def _judge_finished(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], max_run_seconds: int
) -> Verdict:
    pod = deciding_pod(pods)
    if _deadline_exceeded(job, pod):
        shown = pod or max(pods, key=_age_key, default=None)
        error = _deadline_error(job, max_run_seconds)
        return Verdict(Outcome.DEADLINE_EXCEEDED, _name(shown), None, error)
    terminated = _terminated(pod)
    if pod is None or terminated is None:
        return Verdict(Outcome.LOST, None, None, _lost_error(job))
    exit_code = terminated.get("exitCode")
    if terminated.get("reason") == "OOMKilled":
        return Verdict(Outcome.FAILED, _name(pod), exit_code, _OOM_ERROR)
    outcome = Outcome.SUCCEEDED if exit_code == 0 else Outcome.FAILED
    return Verdict(outcome, _name(pod), exit_code, None)


def judge_attempt_deadline(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, max_run_seconds: int
) -> Verdict | None:
    """The verdict on a Job that may still run its pod again, whose newest ended pod ran past
    its deadline: a deadline ends the task, it is not retried. None otherwise."""
    pod = deciding_pod(pods)
    if pod is None or not pod_deadline_exceeded(pod):
        return None
    return judge_finished(job, pods, max_run_seconds=max_run_seconds)


def _deadline_error(job: Mapping[str, Any], max_run_seconds: int) -> str:
    return f"deadline exceeded: the task ran longer than {run_limit(job, max_run_seconds)} s"


def run_limit(job: Mapping[str, Any], default: int) -> int:
    """How long the Job's pod may run: its own ``activeDeadlineSeconds`` (a task's
    ``timeout_seconds``, or the operator's maximum when the task set none), else ``default``."""
    pod_spec = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    limit = pod_spec.get("activeDeadlineSeconds")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else default


DELETED_ERROR = "the Job was deleted before it finished"
CANCELLED_ERROR = "cancelled"


def judge_cancelled(
    pods: Sequence[Mapping[str, Any]], job: Mapping[str, Any] | None = None
) -> Verdict:
    """The verdict on a Job stopped by a cancel request: the logs so far of its newest pod whose
    container started (none when it never did), no exit code; the attempts that ran to their
    end, when there were several."""
    started = [pod for pod in pods if pod_started(pod) and _container_ran(pod)]
    pod = max(started, key=_age_key, default=None)
    attempts = attempts_of(job or {}, pods, max_run_seconds=0)
    return Verdict(Outcome.CANCELLED, _name(pod), None, CANCELLED_ERROR, attempts)


RESULT_DELETED_ERROR = (
    "the Job ended but was deleted before it was answered, its pod with it: the output and "
    "exit code are lost"
)


def judge_deleted(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, max_run_seconds: int
) -> Verdict:
    """The verdict on a Job someone deleted before it was answered: its result when it had
    ended and its pod is still there, else how far it got."""
    if job_finished(job):
        verdict = judge_finished(job, pods, max_run_seconds=max_run_seconds)
        if verdict.outcome is not Outcome.LOST:
            return verdict
        return Verdict(Outcome.DELETED, None, None, RESULT_DELETED_ERROR)  # a foreground delete
    state = "its pod had started" if any(pod_started(pod) for pod in pods) else "it had not started"
    return Verdict(Outcome.DELETED, None, None, f"{DELETED_ERROR} ({state})")


def not_created_message(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest FailedCreate message among a Job's events (one line), or None."""
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    newest = max(failed, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return one_line(str(newest.get("message") or "FailedCreate"))


def judge_not_created(events: Sequence[Mapping[str, Any]]) -> Verdict | None:
    """The verdict on a Job whose pod the Job controller could not create, from its
    FailedCreate events (a missing service account, an admission rejection, a request above a
    quota's hard limit); None while there is none, or while a quota is only used up for now."""
    message = not_created_message(events)
    if message is None or quota_waiting(message):
        return None
    return Verdict(Outcome.POD_NOT_CREATED, None, None, not_created_error(message))


_NOT_CREATED_CAUSES = (
    (
        ("serviceaccount", "not found"),
        "its service account (INTERNAL_SERVICE_ACCOUNT_NAME) is missing",
    ),
    (("exceeded quota",), "it asks for more than a ResourceQuota of the namespace ever allows"),
    (("podsecurity",), "it violates the namespace's Pod Security level"),
    (("admission webhook",), "an admission webhook of the cluster refused it"),
    (("validatingadmissionpolicy",), "an admission policy of the cluster refused it"),
)


def not_created_error(message: str) -> str:
    """The producer's text for a pod the Job controller could not create: the cause in a few
    fixed words, without the names and numbers of the cluster's internals (the controller's own
    message is in the worker's log and in the Job's events)."""
    lowered = message.lower()
    for needles, cause in _NOT_CREATED_CAUSES:
        if all(needle in lowered for needle in needles):
            return f"the pod could not be created: {cause}"
    return "the pod could not be created: the cluster refused it (the Job's events say why)"


def judge_not_admitted(reason: str) -> Verdict:
    """The verdict on a task Kueue can never admit as things stand, with Kueue's reason."""
    return Verdict(Outcome.NOT_ADMITTED, None, None, f"Kueue cannot admit the task: {reason}")


def judge_queue_timeout(waited_seconds: int, why: str | None) -> Verdict:
    """The verdict on a task that waited its whole QUEUE_TIMEOUT_SECONDS for room."""
    detail = f": {why}" if why else ""
    error = f"the task waited {waited_seconds} s for room in the cluster and never started{detail}"
    return Verdict(Outcome.QUEUE_TIMEOUT, None, None, error)


def judge_stuck(pod: Mapping[str, Any], stuck: Stuck) -> Verdict:
    """The verdict on a task whose pod never started: no output, no exit code."""
    return Verdict(stuck.outcome, None, None, stuck.message)


# --- helpers -----------------------------------------------------------------------------------


def _container_stuck(pod: Mapping[str, Any], container: Mapping[str, Any]) -> Stuck | None:
    waiting = (container.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    detail = one_line(waiting.get("message") or reason or "")
    if reason in _IMAGE_PULL_REASONS:
        image = container.get("image") or _spec_image(pod, container.get("name"))
        return Stuck(Outcome.IMAGE_PULL_FAILED, f"image '{image}' could not be pulled: {detail}")
    if reason in _CONTAINER_CONFIG_REASONS:
        return Stuck(
            Outcome.CONTAINER_CONFIG_ERROR, f"the container could not be started: {detail}"
        )
    return None


def _spec_image(pod: Mapping[str, Any], container_name: object) -> str:
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") == container_name:
            return str(container.get("image", ""))
    return ""


def _deadline_exceeded(job: Mapping[str, Any], pod: Mapping[str, Any] | None) -> bool:
    pod_reason = None if pod is None else (pod.get("status") or {}).get("reason")
    return _DEADLINE_EXCEEDED in (pod_reason, job_failure_reason(job))


def _container_ran(pod: Mapping[str, Any]) -> bool:
    """True once the task container is running or has run: it may have written logs."""
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        state = container.get("state") or {}
        if container.get("name") == CONTAINER_NAME and (
            "running" in state or "terminated" in state
        ):
            return True
    return False


def _terminated(pod: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The terminated state of the task container of ``pod``, if it has one."""
    if pod is None:
        return None
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == CONTAINER_NAME and isinstance(terminated, Mapping):
            return terminated
    return None


def _lost_error(job: Mapping[str, Any]) -> str:
    ended = condition(job, "Failed") or condition(job, "Complete") or {}
    detail = ": ".join(
        one_line(str(part)) for part in (ended.get("reason"), ended.get("message")) if part
    )
    suffix = f" ({detail})" if detail else ""
    return f"the job ended without a container result{suffix}"


def _age_key(pod: Mapping[str, Any]) -> tuple[datetime, str]:
    """Sort key: creation time, then name (creationTimestamp has one-second resolution)."""
    metadata = pod.get("metadata") or {}
    created = metadata.get("creationTimestamp")
    try:
        when = datetime.fromisoformat(created) if isinstance(created, str) else _OLDEST
    except ValueError:
        when = _OLDEST
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when, str(metadata.get("name", ""))


def _name(pod: Mapping[str, Any] | None) -> str | None:
    return None if pod is None else (pod.get("metadata") or {}).get("name")
