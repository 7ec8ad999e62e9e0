"""Start-up checks: what would make tasks fail, said once in the log when the worker starts.

The claim every Job mounts (`PVC_NAME`) should exist in `JOB_NAMESPACE`, be bound, and be bound
to `PV_NAME`. None of this stops the worker (the claim may be created after it, and with dynamic
provisioning the volume's name is generated), but each is a warning an operator sees at once
instead of in every task's answer.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from dispatcher.config import Settings
from dispatcher.errors import KubeError

log = logging.getLogger(__name__)


class ClaimReader(Protocol):
    def get_claim(self, name: str) -> dict[str, Any] | None: ...


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
