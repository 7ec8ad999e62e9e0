"""Tombstones: tasks cancelled before they reached the cluster.

A cancel request may overtake its task: the task still waits in RabbitMQ behind a backlog, while
the cancel travels on the control queue. There is no Job to stop yet, so the cancel leaves a
tombstone — a small ConfigMap in the Jobs' namespace, named after the installation and the task
id — and is answered ``cancelled`` at once. When the task is read later, submit finds the
tombstone and answers the task ``cancelled`` without creating a Job.

Kubernetes is the one place every replica sees, and it survives restarts. The order of writes
closes the race between a cancel and a submit running at the same moment: cancel writes the
tombstone and then looks for the Job; submit looks for a tombstone, creates the Job, and then
looks once more. Whichever comes second sees the other's write, so a Job created in that moment
is stopped at once and answered ``cancelled`` like any cancelled Job.

A tombstone is honoured for CANCEL_TOMBSTONE_SECONDS after the cancel, then forgotten: a later
task under the same id runs. Expired tombstones are deleted by a periodic sweep.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.config import Settings
from dispatcher.core.ports import KubeGateway
from dispatcher.errors import KubeError, TransientKubeError
from dispatcher.kube.conventions import (
    CANCELLED_AT_KEY,
    TOMBSTONE_LABEL,
    owned_labels,
    timestamp,
    tombstone_name,
    tombstones_of,
)

log = logging.getLogger(__name__)


def tombstone_manifest(task_id: str, settings: Settings, now: datetime) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": tombstone_name(settings.dispatcher_name, task_id),
            "labels": {**owned_labels(settings.dispatcher_name, task_id), TOMBSTONE_LABEL: "true"},
        },
        "data": {CANCELLED_AT_KEY: timestamp(now)},
    }


def bury(task_id: str, kube: KubeGateway, settings: Settings, now: datetime) -> None:
    """Leave the tombstone of `task_id`. One already there stays as it is, unless it has
    expired: it is then made anew, so this cancel counts from now."""
    manifest = tombstone_manifest(task_id, settings, now)
    for _ in range(3):
        if kube.create_tombstone(manifest) is not None:
            return
        found = kube.get_tombstone(manifest["metadata"]["name"])
        if found is not None and not _expired(found, settings, now):
            return
        if found is not None:
            kube.delete_tombstone(found["metadata"]["name"], uid=found["metadata"].get("uid"))
    raise TransientKubeError(f"tombstone of task {task_id} kept changing")


def is_buried(task_id: str, kube: KubeGateway, settings: Settings, now: datetime) -> bool:
    """True while a tombstone of `task_id` is there and has not expired. Raises KubeError."""
    found = kube.get_tombstone(tombstone_name(settings.dispatcher_name, task_id))
    if found is None:
        return False
    return not _expired(found, settings, now)


def sweep(kube: KubeGateway, settings: Settings, now: datetime | None = None) -> int:
    """Delete the installation's expired tombstones; how many. Never raises on API errors."""
    now = now or datetime.now(UTC)
    try:
        found = kube.list_tombstones(tombstones_of(settings.dispatcher_name))
    except KubeError as exc:
        log.warning("could not list the tombstones of cancelled tasks: %s", exc)
        return 0
    gone = 0
    for item in found:
        if _expired(item, settings, now):
            name = str(item["metadata"]["name"])
            try:  # only the one listed: a cancel may have just made it anew
                kube.delete_tombstone(name, uid=item["metadata"].get("uid"))
            except KubeError as exc:
                log.warning("could not delete tombstone %s: %s", name, exc)
                continue
            gone += 1
    return gone


def _expired(item: dict[str, Any], settings: Settings, now: datetime) -> bool:
    raw = (item.get("data") or {}).get(CANCELLED_AT_KEY) or item.get("metadata", {}).get(
        "creationTimestamp"
    )
    try:
        cancelled = datetime.fromisoformat(str(raw))
    except ValueError:
        return True  # not one of ours as written: do not let it stop tasks
    return now - cancelled > timedelta(seconds=settings.cancel_tombstone_seconds)
