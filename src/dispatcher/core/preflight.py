"""Start-up checks: what would make tasks fail, said once in the log when the worker starts.

The claim every Job mounts (`PVC_NAME`) should exist in `JOB_NAMESPACE`, be bound, and be bound
to `PV_NAME`. None of this stops the worker (the claim may be created after it, and with dynamic
provisioning the volume's name is generated), but each is a warning an operator sees at once
instead of in every task's answer.

With `KUEUE_LOCAL_QUEUE`, the cluster must serve Kueue's API: without Kueue nobody would ever
admit the suspended Jobs, so the worker does not start (a ConfigError naming the setting). A
missing LocalQueue is a warning (its tasks are answered with Kueue's reason after the grace
period).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from dispatcher.config import Settings
from dispatcher.errors import ConfigError, ForbiddenError, KubeError
from dispatcher.kube.conventions import tombstone_name

log = logging.getLogger(__name__)


class ClaimReader(Protocol):
    def get_claim(self, name: str) -> dict[str, Any] | None: ...


class TombstoneReader(Protocol):
    def get_tombstone(self, name: str) -> dict[str, Any] | None: ...


class ObjectReader(ClaimReader, Protocol):
    def get_object(self, kind: str, name: str) -> dict[str, Any] | None: ...

    def serves(self, kind: str) -> bool: ...


def check_claim(claim: dict[str, Any] | None, settings: Settings) -> str | None:
    """What is wrong with the claim as the API server returned it (None: nothing)."""
    name, namespace = settings.pvc_name, settings.job_namespace
    if claim is None:
        return (
            f"PVC_NAME: PersistentVolumeClaim '{name}' does not exist in namespace "
            f"'{namespace}'; every Job mounts it, so no task can start until it does"
        )
    volume = (claim.get("spec") or {}).get("volumeName")
    phase = (claim.get("status") or {}).get("phase")
    if volume and volume != settings.pv_name:
        return (
            f"PV_NAME: PersistentVolumeClaim '{name}' is bound to PersistentVolume '{volume}', "
            f"not '{settings.pv_name}'"
        )
    if phase != "Bound":
        return (
            f"PVC_NAME: PersistentVolumeClaim '{name}' is {phase or 'not bound'}; tasks wait "
            "until it is bound"
        )
    return None


def preflight(kube: ClaimReader, settings: Settings) -> str | None:
    """Check the claim and log what is wrong with it (returned too); never raises."""
    try:
        problem = check_claim(kube.get_claim(settings.pvc_name), settings)
    except KubeError as exc:  # e.g. a Role without the rule, or the API is not there yet
        problem = f"PVC_NAME: cannot check PersistentVolumeClaim '{settings.pvc_name}': {exc}"
    if problem is not None:
        log.warning("%s", problem)
    return problem


def check_kueue(kube: ObjectReader, settings: Settings) -> str | None:
    """With KUEUE_LOCAL_QUEUE: raise ConfigError when the cluster serves no Kueue API;
    log and return what is wrong with the LocalQueue (None: nothing, or Kueue not used)."""
    name, namespace = settings.kueue_local_queue, settings.job_namespace
    if not name:
        return None
    try:
        if not kube.serves("workloads"):
            raise ConfigError(
                "KUEUE_LOCAL_QUEUE",
                f"is '{name}' but the cluster serves no Kueue API (kueue.x-k8s.io/v1beta2): "
                "install Kueue, or leave KUEUE_LOCAL_QUEUE empty",
            )
        queue = kube.get_object("localqueues", name)
    except KubeError as exc:  # e.g. a Role without the Kueue rules (manifests/kueue)
        problem: str | None = f"KUEUE_LOCAL_QUEUE: cannot check LocalQueue '{name}': {exc}"
    else:
        problem = None
        if queue is None:
            problem = (
                f"KUEUE_LOCAL_QUEUE: LocalQueue '{name}' does not exist in namespace "
                f"'{namespace}'; Kueue admits none of its Jobs, and each task is answered with "
                "Kueue's reason after IMAGE_PULL_GRACE_SECONDS"
            )
    if problem is not None:
        log.warning("%s", problem)
    return problem


def check_tombstones(kube: TombstoneReader, settings: Settings) -> None:
    """Raise ConfigError when the dispatcher may not read ConfigMaps in JOB_NAMESPACE: every
    task would be answered with the API server's refusal (submit looks for a tombstone)."""
    probe = tombstone_name(settings.dispatcher_name, "start-up-check")
    try:
        kube.get_tombstone(probe)
    except ForbiddenError as exc:
        raise ConfigError(
            "JOB_NAMESPACE",
            f"the dispatcher may not read ConfigMaps in namespace '{settings.job_namespace}' "
            "(the tombstones of cancelled tasks): its Role needs create, get, list and delete on "
            f"configmaps there, as in manifests/base/rbac.yaml ({exc})",
        ) from None
    except KubeError as exc:  # the API may not be there yet: the tasks will say so
        log.warning("could not check access to the tombstones of cancelled tasks: %s", exc)
