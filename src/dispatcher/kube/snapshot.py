"""Small copies of Jobs and Pods: only the fields the dispatcher decides on.

A Job as the API server sends it is several kilobytes (managed fields, the whole pod template);
what finalize reads of it — identity, version, our annotations and labels, the conditions — is a
few hundred bytes. The watches hand these copies to finalize (so that answering an ended Job
needs no second read of it, nor a list of its pods), and nothing larger is kept per Job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KubeObject = dict[str, Any]

_JOB_METADATA = (
    "name",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "annotations",
    "labels",
    "finalizers",
)
_POD_METADATA = ("name", "uid", "creationTimestamp", "annotations", "labels")
_CONDITION = ("type", "status", "reason", "message")


def job_snapshot(job: Mapping[str, Any]) -> KubeObject:
    """What finalize and the reactor read of a Job (see `kube.outcome`): a plain JSON dict."""
    spec = job.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    status = job.get("status") or {}
    slim_spec: KubeObject = {
        key: spec[key]
        for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished", "suspend", "backoffLimit")
        if key in spec
    }
    if "activeDeadlineSeconds" in pod_spec:
        slim_spec["template"] = {
            "spec": {"activeDeadlineSeconds": pod_spec["activeDeadlineSeconds"]}
        }
    slim_status: KubeObject = _pick(status, ("startTime", "failed", "succeeded"))
    if status.get("conditions"):
        slim_status["conditions"] = _conditions(status)
    return {
        "metadata": _pick(job.get("metadata") or {}, _JOB_METADATA),
        "spec": slim_spec,
        "status": slim_status,
    }


def pod_snapshot(pod: Mapping[str, Any]) -> KubeObject:
    """What the verdict on a pod reads (phase, reasons, the containers' states, node, images)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = [
        {"name": c.get("name"), "image": c.get("image")} for c in spec.get("containers") or ()
    ]
    slim_status: KubeObject = _pick(status, ("phase", "reason", "message"))
    if status.get("conditions"):
        slim_status["conditions"] = _conditions(status)
    if status.get("containerStatuses"):
        slim_status["containerStatuses"] = [
            _pick(c, ("name", "image", "state")) for c in status["containerStatuses"]
        ]
    slim_spec: KubeObject = {"containers": containers}
    if spec.get("nodeName"):
        slim_spec["nodeName"] = spec["nodeName"]
    return {
        "metadata": _pick(pod.get("metadata") or {}, _POD_METADATA),
        "spec": slim_spec,
        "status": slim_status,
    }


def _conditions(status: Mapping[str, Any]) -> list[KubeObject]:
    return [_pick(c, _CONDITION) for c in status.get("conditions") or ()]


def _pick(source: Mapping[str, Any], keys: tuple[str, ...]) -> KubeObject:
    return {key: source[key] for key in keys if source.get(key) is not None}
