"""The three short Celery tasks. Thin adapters: decode, call one core function, map errors.

`dispatcher.submit` creates (or joins) the Job; `dispatcher.finalize` carries a
`FinalizeRequest` from the reactor to `core.request.answer` (an ended, stuck, cancelled or
deleted Job); `dispatcher.cancel` stops a task in progress (or answers the cancel
request that there is none). None of them waits for a Job to run. Every way out of a task is a
confirmed response or a retry, never a silent end: broker errors are retried for as long as
they last; in submit and cancel, transient Kubernetes errors are retried with the one policy in
`dispatcher.worker.retry` and then answered, and permanent ones (and defects) are answered at
once; finalize retries every failure, since the Job, and so the answer, waits in the cluster. A
retry that cannot even be published puts the message back on its queue instead of dropping it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery
from celery.exceptions import Reject, Retry
from kombu.exceptions import KombuError, OperationalError

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
from dispatcher.errors import (
    InvalidTaskError,
    KubeError,
    TaskConflictError,
    TransientKubeError,
)
from dispatcher.kube.outcome import CANCELLED_ERROR
from dispatcher.messages.response import error_response
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task as ParsedTask
from dispatcher.messages.task import TaskPolicy, parse_task, peek_task_id
from dispatcher.worker.retry import LOG_ATTEMPTS, MAX_ATTEMPTS, backoff, retry_window
from dispatcher.worker.seal import SealedTask

log = logging.getLogger(__name__)

BROKER_ERRORS = (KombuError, OperationalError, MessageNacked, ConnectionError, OSError)
INTERNAL_ERROR = "internal error of the dispatcher; its log has the details"
API_UNAVAILABLE = (
    f"the Kubernetes API stayed unavailable for {retry_window()} of retries; the task did not run"
)


def register_tasks(app: Celery) -> None:
    options: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}
    # No retry limit of Celery's own: submit counts its Kubernetes attempts itself, and broker
    # trouble is waited out however long it lasts (the message is never dropped).
    app.task(name=SUBMIT_TASK, max_retries=None, **options)(submit_task)
    app.task(name=FINALIZE_TASK, max_retries=None, **options)(finalize_task)
    app.task(name=CANCEL_TASK, max_retries=None, **options)(cancel_task)


def submit_task(self: SealedTask, task: dict[str, Any], route: dict[str, Any]) -> str:
    return _guarded(self, lambda: _submit(self, task, route))


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
    request = FinalizeRequest.from_task(job_name, job_uid, deleted_annotations, job=job, pod=pod)
    return _guarded(self, lambda: _finalize(self, request))


def cancel_task(self: SealedTask, task_id: str, route: dict[str, Any]) -> str:
    return _guarded(self, lambda: _cancel(self, task_id, route))


def _guarded(self: SealedTask, work: Callable[[], str]) -> str:
    """Only a message this dispatcher sent is run; broker trouble while answering: try again
    later rather than lose the task."""
    if not self.sealed():
        self.app.dispatcher.metrics.internal_refused.labels(self.name).inc()
        log.warning(
            "dropped internal message %r (%s): its seal is missing or wrong, so no worker of "
            "this dispatcher sent it",
            self.request.id,
            self.name,
        )
        return "refused"
    try:
        return work()
    except (Retry, Reject):
        raise
    except BROKER_ERRORS as exc:
        log.warning("%s: broker error %s; will retry", self.name, exc)
        _retry(self, exc, backoff(min(self.request.retries, 6)))
        raise  # unreachable: _retry always raises


def _retry(self: SealedTask, exc: Exception, countdown: float) -> None:
    try:
        raise self.retry(exc=exc, countdown=countdown, max_retries=None)
    except Reject as rejected:  # the retry itself could not be published
        raise Reject(rejected.reason, requeue=True) from exc


def _submit(self: SealedTask, task: dict[str, Any], route: dict[str, Any]) -> str:
    runtime = self.app.dispatcher
    settings, metrics = runtime.settings, runtime.metrics
    reply = ReplyRoute.from_json(route)
    body = json.dumps(task)
    try:  # checked again with the same policy: anyone who can write to the queue may send this
        parsed = parse_task(body, TaskPolicy.from_settings(settings))
    except InvalidTaskError as exc:
        task_id = exc.task_id or peek_task_id(body)
        runtime.publisher.publish(error_response(exc, task_id), reply, f"invalid.{self.request.id}")
        return "rejected"
    started = time.perf_counter()
    try:
        result = _submit_or_answer_again(self, parsed, reply)
        metrics.submit_seconds.observe(time.perf_counter() - started)
        metrics.tasks_submitted.labels(result.value).inc()
        if result is not Submitted.CREATED:  # no new Job will show up in the watch
            runtime.admission.settled(parsed.id)
        return result.value
    except TransientKubeError as exc:
        metrics.kube_errors.labels("transient").inc()
        if self.request.retries < MAX_ATTEMPTS:
            delay = backoff(self.request.retries)
            log.warning(
                "creating Job %s failed: %s; retrying in %.0f s (attempt %d/%d)",
                parsed.id,
                exc,
                delay,
                self.request.retries + 1,
                MAX_ATTEMPTS,
            )
            _retry(self, exc, delay)
        log.warning("creating Job %s failed for good: %s", parsed.id, exc)
        error = API_UNAVAILABLE  # the transport details stay in the log
    except TaskConflictError as exc:
        error = str(exc)
    except KubeError as exc:
        metrics.kube_errors.labels("permanent").inc()
        error = str(exc)
    except BROKER_ERRORS:
        raise
    except Exception:  # a defect: answer rather than drop the task
        log.exception("submitting task %s failed unexpectedly", parsed.id)
        error = INTERNAL_ERROR
    log.warning("task %s answered with an error: %s", parsed.id, error)
    message = message_id(parsed.id, parsed.digest()[:16])
    runtime.publisher.publish(error_response(error, parsed.id), reply, message)
    runtime.admission.settled(parsed.id)
    metrics.tasks_submitted.labels("rejected").inc()
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
    job_name = request.job_name
    context = runtime.finalize_context(
        self.request.id, retries, logs_optional=retries >= LOG_ATTEMPTS
    )
    try:
        result = answer(request, context)
    except BROKER_ERRORS:
        raise
    except TransientKubeError as exc:
        runtime.metrics.kube_errors.labels("transient").inc()
        log.warning("finalizing Job %s failed: %s; will retry", job_name, exc)
        _retry(self, exc, backoff(min(retries, 6)))
        raise  # unreachable
    except Exception as exc:  # e.g. a webhook denying the claim: only a person can fix it
        if isinstance(exc, KubeError):
            runtime.metrics.kube_errors.labels("permanent").inc()
        log.exception("finalizing Job %s failed: %s; will retry", job_name, exc)
        _retry(self, exc, backoff(min(retries, 6)))
        raise  # unreachable
    if result.state is Finalized.ANSWERED and result.verdict is not None:
        runtime.metrics.jobs_finished.labels(result.verdict.outcome.value).inc()
        if result.age_seconds is not None:
            runtime.metrics.end_to_end_seconds.observe(result.age_seconds)
    if result.retry_in is not None:
        _retry(self, Exception(result.state.value), result.retry_in)
    return result.state.value


def _cancel(self: SealedTask, task_id: str, route: dict[str, Any]) -> str:
    runtime = self.app.dispatcher
    reply = ReplyRoute.from_json(route)
    try:
        result = cancel(task_id, reply, kube=runtime.kube, settings=runtime.settings)
    except TransientKubeError as exc:
        runtime.metrics.kube_errors.labels("transient").inc()
        if self.request.retries < MAX_ATTEMPTS:
            log.warning("cancelling task %s failed: %s; will retry", task_id, exc)
            _retry(self, exc, backoff(self.request.retries))
        error = not_stopped_error(task_id, API_UNAVAILABLE)
        runtime.metrics.cancel_requests.labels("error").inc()
    except KubeError as exc:  # e.g. forbidden: the operator must fix the RBAC
        runtime.metrics.kube_errors.labels("permanent").inc()
        log.error("cancelling task %s failed: %s", task_id, exc)
        error = not_stopped_error(task_id, INTERNAL_ERROR)
        runtime.metrics.cancel_requests.labels("error").inc()
    else:
        runtime.metrics.cancel_requests.labels(result.value).inc()
        if result is Cancelled.STOPPING:
            return "stopping"
        if result is Cancelled.BEFORE_START:
            error = cancelled_before_start(task_id, runtime.settings)
        else:
            error = not_in_progress_error(task_id, result)
    runtime.publisher.publish(error_response(error, task_id), reply, f"{task_id}.{self.request.id}")
    return "answered"
