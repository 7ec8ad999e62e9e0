"""Names on the wire in Kubernetes: label and annotation keys, container and volume names.

Everything the dispatcher writes onto a Job, and later selects or reads back, is named here and
nowhere else, so the Job builder, the watcher and the finalizer cannot disagree. A Job belongs to
one installation when it carries both :data:`MANAGED_BY_LABEL` and :data:`INSTANCE_LABEL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "k8s-job-dispatcher"
INSTANCE_LABEL: Final = "job-dispatcher.io/instance"
"""Its value is the installation's ``DISPATCHER_NAME``."""
TASK_ID_LABEL: Final = "job-dispatcher.io/task-id"

TASK_HASH_ANNOTATION: Final = "job-dispatcher.io/task-hash"
"""SHA-256 of the canonical task: tells a duplicate delivery from a different task."""
CORRELATION_ID_ANNOTATION: Final = "job-dispatcher.io/correlation-id"
REPLY_TO_ANNOTATION: Final = "job-dispatcher.io/reply-to"
MORE_ROUTES_ANNOTATION: Final = "job-dispatcher.io/more-routes"
"""JSON list of ``{"correlation_id", "reply_to"}``: identical tasks that joined the Job later."""
RESPONDED_ANNOTATION: Final = "job-dispatcher.io/responded"
"""RFC 3339 time at which the response was published."""
CANCELLED_ANNOTATION: Final = "job-dispatcher.io/cancelled"
"""RFC 3339 time at which a cancel request stopped the Job: it is answered ``cancelled``."""
RETRIES_ANNOTATION: Final = "job-dispatcher.io/retries"
"""On the pods of a task that asked for retries (only then): how many. A pod of such a task
that runs past its deadline ends the task (it is not run again)."""
CLAIM_ANNOTATION: Final = "job-dispatcher.io/finalizing"
"""``"<holder> <RFC 3339 time>"``: who is finalizing the Job, since when."""

ANSWER_FINALIZER: Final = "job-dispatcher.io/answer"
"""On every Job from its creation until its response is published: a Job deleted before it was
answered (by a person, its TTL, a namespace clean-up) waits, as terminating, for its answer."""

JOB_NAME_LABEL: Final = "batch.kubernetes.io/job-name"
"""Set by the Job controller on every pod of a Job: the Job's name."""
CONTROLLER_UID_LABEL: Final = "batch.kubernetes.io/controller-uid"
"""Set by the Job controller on every pod of a Job: the Job's uid."""

KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
"""Kueue's label naming the LocalQueue a Job waits in (``KUEUE_LOCAL_QUEUE``)."""
KUEUE_PRIORITY_LABEL: Final = "kueue.x-k8s.io/priority-class"
"""Kueue's label naming the WorkloadPriorityClass of a Job (``KUEUE_PRIORITY_CLASS``)."""
KUEUE_JOB_UID_LABEL: Final = "kueue.x-k8s.io/job-uid"
"""Set by Kueue on the Workload it makes for a Job: the Job's uid."""

TOMBSTONE_LABEL: Final = "job-dispatcher.io/tombstone"
"""On the ConfigMap that remembers a task cancelled before it reached the cluster."""
CANCELLED_AT_KEY: Final = "cancelled-at"
"""Key, in a tombstone's data, of the RFC 3339 time of the cancel."""

CONTAINER_NAME: Final = "task"
VOLUME_NAME: Final = "work"


def job_name(task_id: str) -> str:
    """The Job's name: the task id itself (a valid RFC 1035 label by construction)."""
    return task_id


def label_selector(dispatcher_name: str) -> str:
    """The selector matching every Job of one installation."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{INSTANCE_LABEL}={dispatcher_name}"


def owned_labels(dispatcher_name: str, task_id: str) -> dict[str, str]:
    """The labels of a Job (and its pods) run for ``task_id`` by one installation."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        INSTANCE_LABEL: dispatcher_name,
        TASK_ID_LABEL: task_id,
    }


def owns(job: dict[str, object], dispatcher_name: str) -> bool:
    """True when the Job (a JSON dict) was made by the installation ``dispatcher_name``: it
    carries that installation's labels for its own name."""
    meta = job.get("metadata")
    if not isinstance(meta, dict):
        return False
    labels = meta.get("labels") or {}
    expected = owned_labels(dispatcher_name, str(meta.get("name", "")))
    return isinstance(labels, dict) and all(labels.get(k) == v for k, v in expected.items())


def tombstone_name(dispatcher_name: str, task_id: str) -> str:
    """The ConfigMap remembering that task ``task_id`` of one installation was cancelled."""
    return f"cancelled.{dispatcher_name}.{task_id}"


def tombstones_of(dispatcher_name: str) -> str:
    """The selector matching every tombstone of one installation."""
    return f"{label_selector(dispatcher_name)},{TOMBSTONE_LABEL}=true"


def pods_of_job(job_uid: str) -> str:
    """The selector matching every pod the Job controller made for one Job."""
    return f"{CONTROLLER_UID_LABEL}={job_uid}"


def workloads_of_job(job_uid: str) -> str:
    """The selector matching the Kueue Workload made for one Job."""
    return f"{KUEUE_JOB_UID_LABEL}={job_uid}"


def timestamp(when: datetime) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes times (and as our annotations do)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def annotation_patch(
    annotations: Mapping[str, str | None], resource_version: str
) -> dict[str, Any]:
    """The JSON merge patch that sets (None: removes) `annotations` of an object only while it
    is at `resource_version`: the API server answers 409 Conflict when it changed meanwhile."""
    return {"metadata": {"resourceVersion": resource_version, "annotations": dict(annotations)}}
