"""The three short Celery tasks. Thin adapters: decode, call one core function, map errors.

`dispatcher.submit` creates (or joins) the Job; `dispatcher.finalize` carries a
`FinalizeRequest` from the reactor to `core.request.answer` (an ended, stuck, cancelled or
deleted Job); `dispatcher.cancel` stops a task in progress (or answers the cancel request that
there is none). None of them waits for a Job to run. Every way out of a task is a confirmed
response or a retry, never a silent end: what each failure means — retry after a delay, answer
with an error, or raise — is decided in one place, `dispatcher.worker.retry.classify`, by the
task's policy there. A retry that cannot even be published puts the message back on its queue
instead of dropping it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from dispatcher.amqp.topology import CANCEL_TASK, FINALIZE_TASK, SUBMIT_TASK
from dispatcher.core.cancel import (
    Cancelled,
    cancel,
    cancelled_before_start,
    not_in_progress_error,
    not_stopped_error,
)
from dispatcher.core.finalize import Finalized, message_id
from dispatcher.core.request import FinalizeRequest, answer
from dispatcher.core.submit import Submitted, submit
from dispatcher.errors import InvalidTaskError, TransientKubeError
from dispatcher.kube.outcome import CANCELLED_ERROR
from dispatcher.messages.response import error_response
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task as ParsedTask
from dispatcher.messages.task import TaskPolicy, parse_task, peek_task_id
from dispatcher.worker.retry import (
    API_UNAVAILABLE,
    BROKER_ERRORS,
    CANCEL,
    FINALIZE,
    INTERNAL_ERROR,
    LOG_ATTEMPTS,
    SUBMIT,
    Action,
    Cause,
    Handling,
    Policy,
    classify,
)
from dispatcher.worker.seal import SealedTask

log = logging.getLogger(__name__)

__all__ = ["API_UNAVAILABLE", "INTERNAL_ERROR", "register_tasks"]


def register_tasks(app: Celery) -> None:
    options: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}
    # No retry limit of Celery's own: the policies in dispatcher.worker.retry count the
    # Kubernetes attempts, and broker trouble is waited out however long it lasts.
    app.task(name=SUBMIT_TASK, max_retries=None, **options)(submit_task)
    app.task(name=FINALIZE_TASK, max_retries=None, **options)(finalize_task)
    app.task(name=CANCEL_TASK, max_retries=None, **options)(cancel_task)


def submit_task(self: SealedTask, task: dict[str, Any], route: dict[str, Any]) -> str:
    if not _sealed(self):
        return "refused"
    reply = ReplyRoute.from_json(route)
    body = json.dumps(task)
    try:  # checked again with the same policy: anyone who can write to the queue may send this
        parsed = parse_task(body, TaskPolicy.from_settings(self.app.dispatcher.settings))
    except InvalidTaskError as exc:
        task_id = exc.task_id or peek_task_id(body)
        return _run(self, SUBMIT, "", partial(_publish_invalid, self, exc, task_id, reply), None)
    return _run(
        self,
        SUBMIT,
        f"creating Job {parsed.id}",
        lambda: _submit(self, parsed, reply),
        lambda error: _answer_submit(self, parsed, reply, error),
    )


def finalize_task(
    self: SealedTask,
    job_name: str,
    job_uid: str,
    deleted_annotations: dict[str, str] | None = None,
    *,
    job: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
) -> str:
    """The arguments are a `FinalizeRequest` as the reactor wrote it (`task_kwargs`)."""
    if not _sealed(self):
        return "refused"
    request = FinalizeRequest.from_task(job_name, job_uid, deleted_annotations, job=job, pod=pod)
    return _run(
        self, FINALIZE, f"finalizing Job {job_name}", lambda: _finalize(self, request), None
    )


def cancel_task(self: SealedTask, task_id: str, route: dict[str, Any]) -> str:
    if not _sealed(self):
        return "refused"
    reply = ReplyRoute.from_json(route)
    return _run(
        self,
        CANCEL,
        f"cancelling task {task_id}",
        lambda: _cancel(self, task_id, reply),
        lambda error: _answer_cancel(self, task_id, reply, not_stopped_error(task_id, error)),
    )


def _sealed(self: SealedTask) -> bool:
    """Only a message this dispatcher sent is run (the others are dropped, and counted)."""
    if self.sealed():
        return True
    self.app.dispatcher.metrics.internal_refused.labels(self.name).inc()
    log.warning(
        "dropped internal message %r (%s): its seal is missing or wrong, so no worker of "
        "this dispatcher sent it",
        self.request.id,
        self.name,
    )
    return False


def _run(
    self: SealedTask,
    policy: Policy,
    doing: str,
    work: Callable[[], str],
    answer_error: Callable[[str], str] | None,
) -> str:
    """Run `work`, and go on after a failure as `classify` says: retry it later, answer it
    with `answer_error`, or let it out (also when there is no `answer_error`: finalize's policy
    never answers, and the answer of an invalid task is itself what failed)."""
    try:
        return work()
    except Exception as exc:
        handling = classify(exc, self.request.retries, policy)
        if handling.cause in (Cause.TRANSIENT, Cause.PERMANENT):
            self.app.dispatcher.metrics.kube_errors.labels(handling.cause.value).inc()
        if handling.action is Action.RETRY:
            _log_retry(self, policy, doing or self.name, exc, handling)
            _retry(self, exc, handling.delay)
        if handling.action is Action.RAISE or answer_error is None:
            raise
        if handling.cause is Cause.DEFECT:
            log.exception("%s failed unexpectedly", doing)
        else:
            log.warning("%s failed for good: %s", doing, exc)
        error = handling.error or INTERNAL_ERROR
    try:
        return answer_error(error)
    except BROKER_ERRORS as exc:
        log.warning("%s: broker error %s; will retry", self.name, exc)
        _retry(self, exc, classify(exc, self.request.retries, policy).delay)
        raise  # unreachable: _retry always raises


def _log_retry(
    self: SealedTask, policy: Policy, doing: str, exc: Exception, handling: Handling
) -> None:
    attempt = self.request.retries + 1
    of = f"/{policy.attempts}" if handling.cause is Cause.TRANSIENT and policy.attempts else ""
    if handling.cause is Cause.BROKER:
        log.warning("%s: broker error %s; will retry", doing, exc)
    elif handling.cause is Cause.DEFECT:
        log.exception("%s failed: %s; will retry", doing, exc)
    else:
        log.warning(
            "%s failed: %s; retrying in %.0f s (attempt %d%s)",
            doing,
            exc,
            handling.delay,
            attempt,
            of,
        )


def _retry(self: SealedTask, exc: Exception, countdown: float) -> None:
    try:
        raise self.retry(exc=exc, countdown=countdown, max_retries=None)
    except Reject as rejected:  # the retry itself could not be published
        raise Reject(rejected.reason, requeue=True) from exc


def _publish_invalid(
    self: SealedTask, exc: InvalidTaskError, task_id: str | None, reply: ReplyRoute
) -> str:
    runtime = self.app.dispatcher
    runtime.publisher.publish(error_response(exc, task_id), reply, f"invalid.{self.request.id}")
    return "rejected"


def _submit(self: SealedTask, parsed: ParsedTask, reply: ReplyRoute) -> str:
    runtime = self.app.dispatcher
    started = time.perf_counter()
    result = _submit_or_answer_again(self, parsed, reply)
    runtime.metrics.submit_seconds.observe(time.perf_counter() - started)
    runtime.metrics.tasks_submitted.labels(result.value).inc()
    if result is not Submitted.CREATED:  # no new Job will show up in the watch
        runtime.admission.settled(parsed.id)
    return result.value


def _answer_submit(self: SealedTask, parsed: ParsedTask, reply: ReplyRoute, error: str) -> str:
    runtime = self.app.dispatcher
    log.warning("task %s answered with an error: %s", parsed.id, error)
    message = message_id(parsed.id, parsed.digest()[:16])
    runtime.publisher.publish(error_response(error, parsed.id), reply, message)
    runtime.admission.settled(parsed.id)
    runtime.metrics.tasks_submitted.labels("rejected").inc()
    return "rejected"


def _submit_or_answer_again(self: SealedTask, task: ParsedTask, reply: ReplyRoute) -> Submitted:
    runtime = self.app.dispatcher
    result = submit(
        task, reply, kube=runtime.kube, settings=runtime.settings, progress=runtime.progress
    )
    if result is Submitted.ANSWERED:
        context = runtime.finalize_context(self.request.id, self.request.retries)
        again = answer(FinalizeRequest.again(task.id, reply), context)
        if again.state is not Finalized.ANSWERED:  # its window closed meanwhile: run anew
            raise TransientKubeError(f"Job {task.id} went while it was answered again")
    if result is Submitted.CANCELLED:
        reply_body = error_response(CANCELLED_ERROR, task.id)
        runtime.publisher.publish(reply_body, reply, message_id(task.id, "cancelled"))
    return result


def _finalize(self: SealedTask, request: FinalizeRequest) -> str:
    runtime = self.app.dispatcher
    retries = self.request.retries
    context = runtime.finalize_context(
        self.request.id, retries, logs_optional=retries >= LOG_ATTEMPTS
    )
    result = answer(request, context)
    if result.state is Finalized.ANSWERED and result.verdict is not None:
        runtime.metrics.jobs_finished.labels(result.verdict.outcome.value).inc()
        if result.age_seconds is not None:
            runtime.metrics.end_to_end_seconds.observe(result.age_seconds)
    if result.retry_in is not None:
        _retry(self, Exception(result.state.value), result.retry_in)
    return result.state.value


def _cancel(self: SealedTask, task_id: str, reply: ReplyRoute) -> str:
    runtime = self.app.dispatcher
    result = cancel(task_id, reply, kube=runtime.kube, settings=runtime.settings)
    runtime.metrics.cancel_requests.labels(result.value).inc()
    if result is Cancelled.STOPPING:
        return "stopping"
    if result is Cancelled.BEFORE_START:
        error = cancelled_before_start(task_id, runtime.settings)
    else:
        error = not_in_progress_error(task_id, result)
    return _answer_cancel(self, task_id, reply, error, counted=True)


def _answer_cancel(
    self: SealedTask, task_id: str, reply: ReplyRoute, error: str, *, counted: bool = False
) -> str:
    runtime = self.app.dispatcher
    if not counted:  # stopping the task failed
        runtime.metrics.cancel_requests.labels("error").inc()
    runtime.publisher.publish(error_response(error, task_id), reply, f"{task_id}.{self.request.id}")
    return "answered"
