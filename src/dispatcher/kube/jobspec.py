"""The Kubernetes Job manifest for a task, as a plain JSON-able dict.

:func:`build_job` is the only place that decides what a task's pod looks like. The task chooses
the image, command, arguments, working directory and mount path, and may set environment
variables (never ``TASK_ID``), its own time limit (within ``JOB_MAX_RUN_SECONDS``) and its CPU
and memory requests (within the per-task maxima), all bounded by
:func:`~dispatcher.messages.task.parse_task`. Everything that matters for safety (namespace,
service account, privileges, volumes, limits) comes from operator settings. The Job runs one
pod at a time, never restarted in place; a pod lost to a disruption (eviction, preemption, node
drain) is retried without counting, a container that fails is not run again (``backoffLimit:
0`` plus a pod failure policy) unless the task asked for ``retries``: then ``backoffLimit`` is
its ``retries``, and the pod failure policy fails the Job at once on an exit code outside its
``retry_on_exit_codes`` (when it gave them) and counts the others, so the Job controller runs a
new pod after its own backoff (10 s, doubling). The workload learns its task id from
``TASK_ID``. With ``KUEUE_LOCAL_QUEUE`` the Job is created suspended, labelled for that
LocalQueue: Kueue decides when it runs.
"""

from __future__ import annotations

from typing import Any, Final

from dispatcher import parsers
from dispatcher.config import Settings
from dispatcher.kube.conventions import (
    ANSWER_FINALIZER,
    CONTAINER_NAME,
    CORRELATION_ID_ANNOTATION,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    RETRIES_ANNOTATION,
    TASK_HASH_ANNOTATION,
    VOLUME_NAME,
    job_name,
    owned_labels,
)
from dispatcher.kube.routes import route_annotations
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task

JOB_DEADLINE_MARGIN_SECONDS: Final = 300
"""The Job-level deadline exceeds the queue timeout plus the pod's deadline by this much; it is
only a backstop. The pod's own deadline counts from its start, the Job's from its creation."""
TERMINATION_GRACE_SECONDS: Final = 10


def build_job(task: Task, route: ReplyRoute, settings: Settings) -> dict[str, Any]:
    """The batch/v1 Job manifest for ``task``, in the API server's camelCase form."""
    labels = owned_labels(settings.dispatcher_name, task.id)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(task.id),
            "namespace": settings.job_namespace,
            "labels": {**labels, **_kueue_labels(settings)},
            "annotations": _annotations(task, route),
            "finalizers": [ANSWER_FINALIZER],
        },
        "spec": {
            **({"suspend": True} if settings.kueue_local_queue else {}),
            "backoffLimit": task.retries,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            **_job_deadline(task, settings),
            "podFailurePolicy": {"rules": _pod_failure_rules(task)},
            "template": {
                "metadata": _pod_metadata(labels, route, task.retries),
                "spec": _pod_spec(task, settings),
            },
        },
    }


def _kueue_labels(settings: Settings) -> dict[str, str]:
    """With Kueue, the LocalQueue the Job waits in (created suspended: Kueue admits it) and its
    priority class."""
    if not settings.kueue_local_queue:
        return {}
    labels = {KUEUE_QUEUE_LABEL: settings.kueue_local_queue}
    if settings.kueue_priority_class:
        labels[KUEUE_PRIORITY_LABEL] = settings.kueue_priority_class
    return labels


def _run_seconds(task: Task, settings: Settings) -> int:
    """The pod's deadline: the task's own timeout (already bounded by the maximum), or the
    maximum."""
    return task.timeout_seconds or settings.job_max_run_seconds


def _job_deadline(task: Task, settings: Settings) -> dict[str, int]:
    """A backstop past the queue timeout and the run time of every attempt with the Job
    controller's backoff between them; none when queueing is unbounded (a Job that waits for
    room must not fail for the time it waited)."""
    if settings.queue_timeout_seconds <= 0:
        return {}
    runs = _run_seconds(task, settings) * (task.retries + 1)
    backoff = sum(min(10 * 2**retry, 360) for retry in range(task.retries))
    total = settings.queue_timeout_seconds + runs + backoff
    return {"activeDeadlineSeconds": total + JOB_DEADLINE_MARGIN_SECONDS}


def _pod_metadata(labels: dict[str, str], route: ReplyRoute, retries: int) -> dict[str, Any]:
    """The pod's labels, the task's correlation id (its progress events carry it), and, when
    the task may be run again, its retries (a pod past its deadline must then end the task:
    the reactor sees so on the pod)."""
    metadata: dict[str, Any] = {"labels": dict(labels)}
    annotations: dict[str, str] = {}
    if route.correlation_id is not None:
        annotations[CORRELATION_ID_ANNOTATION] = route.correlation_id
    if retries:
        annotations[RETRIES_ANNOTATION] = str(retries)
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def _annotations(task: Task, route: ReplyRoute) -> dict[str, str]:
    return {TASK_HASH_ANNOTATION: task.digest(), **route_annotations(route)}


def _pod_failure_rules(task: Task) -> list[dict[str, Any]]:
    """Retry pods lost to disruptions without counting them. Without retries, fail the Job as
    soon as the container fails; with retries, fail it at once on an exit code the task did not
    list and count the others (any non-zero code when it listed none) against backoffLimit.
    OOMKilled is exit code 137 here. The API wants the values sorted."""
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    ]
    if not task.retries:
        return [*rules, _on_exit_codes("FailJob", "NotIn", [0])]
    if task.retry_on_exit_codes is None:
        return [*rules, _on_exit_codes("Count", "NotIn", [0])]
    codes = sorted(task.retry_on_exit_codes)
    return [*rules, _on_exit_codes("FailJob", "NotIn", codes), _on_exit_codes("Count", "In", codes)]


def _on_exit_codes(action: str, operator: str, values: list[int]) -> dict[str, Any]:
    return {
        "action": action,
        "onExitCodes": {"containerName": CONTAINER_NAME, "operator": operator, "values": values},
    }


def _pod_spec(task: Task, settings: Settings) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "serviceAccountName": settings.internal_service_account_name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": _run_seconds(task, settings),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": _pod_security(settings),
        **_placement(settings),
        "containers": [_container(task, settings)],
        "volumes": [
            {"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": settings.pvc_name}}
        ],
    }


def _pod_security(settings: Settings) -> dict[str, Any]:
    """A fixed non-root user unless the operator allows root images (JOB_ALLOW_ROOT)."""
    context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if not settings.job_allow_root:
        context.update(
            runAsNonRoot=True,
            runAsUser=settings.job_run_as_user,
            runAsGroup=settings.job_run_as_group,
            fsGroup=settings.job_run_as_group,
        )
    return context


def _container(task: Task, settings: Settings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": task.image,
        "imagePullPolicy": settings.job_image_pull_policy,
    }
    if task.cmd is not None:
        container["command"] = list(task.cmd)
    if task.args is not None:
        container["args"] = list(task.args)
    if task.working_dir is not None:
        container["workingDir"] = task.working_dir
    container.update(
        {
            "env": _env(task),
            "volumeMounts": [{"name": VOLUME_NAME, "mountPath": task.volume_mount_path}],
            "stdin": False,
            "stdinOnce": False,
            "tty": False,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "resources": _resources(task, settings),
        }
    )
    return container


def _placement(settings: Settings) -> dict[str, Any]:
    """Where the pods may run, from settings only (a task cannot choose its node)."""
    placement: dict[str, Any] = {}
    if settings.job_node_selector:
        placement["nodeSelector"] = dict(settings.job_node_selector)
    if settings.job_tolerations:
        placement["tolerations"] = [
            {"key": key, "operator": "Equal", "value": value, "effect": effect}
            if value is not None
            else {"key": key, "operator": "Exists", "effect": effect}
            for key, value, effect in settings.job_tolerations
        ]
    return placement


def _env(task: Task) -> list[dict[str, str]]:
    """``TASK_ID`` first, then the task's own variables by name (they cannot override it)."""
    own = sorted((task.env or {}).items())
    return [{"name": "TASK_ID", "value": task.id}] + [
        {"name": name, "value": value} for name, value in own
    ]


def _resources(task: Task, settings: Settings) -> dict[str, dict[str, str]]:
    """Requests from the task, else from settings; limits from settings, raised to the task's
    request where it asked for more (a limit below its request is invalid). A quantity left
    empty is not set."""
    asked = task.resources
    requests = {
        "cpu": (asked and asked.cpu) or settings.job_cpu_request,
        "memory": (asked and asked.memory) or settings.job_memory_request,
    }
    limits = {
        name: _at_least(limit, requests[name])
        for name, limit in (("cpu", settings.job_cpu_limit), ("memory", settings.job_memory_limit))
    }
    resources = {
        "requests": {name: value for name, value in requests.items() if value},
        "limits": {name: value for name, value in limits.items() if value},
    }
    return {kind: values for kind, values in resources.items() if values}


def _at_least(limit: str, request: str) -> str:
    if limit and request and parsers.amount(limit) < parsers.amount(request):
        return request
    return limit
