"""The two short Celery tasks. Thin adapters: decode, call one core function, map errors.

`dispatcher.submit` creates (or joins) the Job; `dispatcher.finalize` answers an ended or stuck
Job. Neither waits for a Job to run. Transient Kubernetes errors are retried with the one policy
in `dispatcher.worker.retry`; permanent ones, and retries running out, are answered at once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery, Task

from dispatcher.amqp.topology import FINALIZE_TASK, SUBMIT_TASK
from dispatcher.core.finalize import Finalized, finalize, message_id
from dispatcher.core.submit import submit
from dispatcher.errors import KubeError, TaskConflictError, TransientKubeError
from dispatcher.kube.jobspec import ReplyRoute
from dispatcher.messages.response import Response
from dispatcher.messages.task import parse_task
from dispatcher.worker.retry import MAX_ATTEMPTS, backoff

log = logging.getLogger(__name__)


def register_tasks(app: Celery) -> None:
    options: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}
    app.task(name=SUBMIT_TASK, max_retries=MAX_ATTEMPTS, **options)(submit_task)
    app.task(name=FINALIZE_TASK, max_retries=None, **options)(finalize_task)


def submit_task(self: Task, task: dict[str, Any], route: dict[str, Any]) -> str:
    runtime = self.app.dispatcher
    metrics = runtime.metrics
    parsed = parse_task(json.dumps(task), max_bytes=2**31)  # re-checked: queues can be written to
    reply = ReplyRoute(route.get("correlation_id"), route.get("reply_to"))
    started = time.perf_counter()
    try:
        result = submit(parsed, reply, kube=runtime.kube, settings=runtime.settings).value
        metrics.submit_seconds.observe(time.perf_counter() - started)
        metrics.tasks_submitted.labels(result).inc()
        return result
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
            raise self.retry(exc=exc, countdown=delay) from exc
        error = f"Kubernetes API unavailable: {exc}"
    except TaskConflictError as exc:
        error = str(exc)
    except KubeError as exc:
        metrics.kube_errors.labels("permanent").inc()
        error = str(exc)
    log.warning("task %s answered with an error: %s", parsed.id, error)
    message = message_id(parsed.id, parsed.digest())
    runtime.publisher.publish(Response(id=parsed.id, error=error), reply, message)
    metrics.tasks_submitted.labels("rejected").inc()
    return "rejected"


def finalize_task(self: Task, job_name: str, job_uid: str) -> str:
    runtime = self.app.dispatcher
    try:
        result = finalize(job_name, job_uid, runtime.finalize_context())
    except TransientKubeError as exc:
        runtime.metrics.kube_errors.labels("transient").inc()
        log.warning("finalizing Job %s failed: %s; will retry", job_name, exc)
        raise self.retry(exc=exc, countdown=backoff(min(self.request.retries, 6))) from exc
    if result.state is Finalized.ANSWERED and result.verdict is not None:
        runtime.metrics.jobs_finished.labels(result.verdict.outcome.value).inc()
        if result.age_seconds is not None:
            runtime.metrics.end_to_end_seconds.observe(result.age_seconds)
    if result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
    return result.state.value
