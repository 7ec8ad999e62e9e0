"""Kueue's view of a Job, read from the Job and its Workload alone (pure functions, no I/O).

With ``KUEUE_LOCAL_QUEUE`` every Job is created suspended and Kueue admits it by unsuspending it
once its ClusterQueue has quota; a preempted Job is suspended again (its pod is removed) and
waits to be admitted anew. A suspended Job is *queued*: it is never stuck and never answered for
waiting. Only a Job that Kueue can never admit as things stand is answered, with Kueue's own
reason, after the grace period (``IMAGE_PULL_GRACE_SECONDS``):

- its LocalQueue or ClusterQueue does not exist
  (``LocalQueue team-a doesn't exist``, ``ClusterQueue cq doesn't exist``);
- it asks for more than the ClusterQueue could ever give, borrowing included, in every flavor
  (``couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default,
  previously considered podsets requests (0) + current podset request (4) > maximum capacity
  (2)``), or for a resource the ClusterQueue has no quota for at all (``resource memory
  unavailable in ClusterQueue``);
- Kueue deactivated its Workload (an administrator set ``active: false``, or it was evicted
  more often than the ClusterQueue's requeueing allows).

Anything else Kueue says while a Workload waits — quota used up for now (``insufficient unused
quota``), a stopped or inactive queue, admission checks pending — is waiting. Text the rules do
not recognise counts as waiting too: an unknown message delays an answer, it never fails a task
that would have run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.kube.conventions import KUEUE_QUEUE_LABEL
from dispatcher.kube.objects import condition, one_line

_NO_QUEUE: Final = re.compile(r"^(LocalQueue|ClusterQueue) \S+ doesn't exist$")
_FLAVORS: Final = re.compile(r"^couldn't assign flavors to pod set [^:]+: (?P<reasons>.+)$")
_REASON_START: Final = re.compile(
    r", (?=insufficient |resource |flavor |untolerated |could not |couldn't )"
)
"""Where one flavor's reason ends and the next begins (Kueue joins them with ", ", and a reason
may hold ", " itself: ``..., previously considered podsets requests (0) + ...``)."""
_NEVER_REASONS: Final = (
    re.compile(r"^insufficient quota for \S+ in flavor \S+, .*> maximum capacity \(.*\)$"),
    re.compile(r"^resource \S+ unavailable in ClusterQueue$"),
)
"""A flavor's reason that no amount of waiting cures: the request is above what the flavor could
ever give (borrowing included), or the ClusterQueue has no quota for the resource at all."""


def suspended(job: Mapping[str, Any]) -> bool:
    """True while the Job is suspended: not admitted yet, or preempted and waiting again."""
    return bool((job.get("spec") or {}).get("suspend"))


def managed(job: Mapping[str, Any]) -> bool:
    """True for a Job created for Kueue (it carries the queue-name label)."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    return KUEUE_QUEUE_LABEL in labels


def just_admitted(job: Mapping[str, Any]) -> bool:
    """True for a Kueue Job that was admitted (unsuspended) but whose ``startTime`` the Job
    controller has not set yet: its queue timeout has not begun."""
    return managed(job) and not suspended(job) and admitted_at(job) is None


def admitted_at(job: Mapping[str, Any]) -> str | None:
    """When the Job last started running (it is reset at each admission), as RFC 3339."""
    started = (job.get("status") or {}).get("startTime")
    return started if isinstance(started, str) else None


def owner_job(workload: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (name, uid) of the Job a Workload was made for, or None for any other Workload."""
    for owner in (workload.get("metadata") or {}).get("ownerReferences") or ():
        if owner.get("kind") == "Job" and str(owner.get("apiVersion", "")).startswith("batch/"):
            name, uid = owner.get("name"), owner.get("uid")
            if isinstance(name, str) and isinstance(uid, str):
                return name, uid
    return None


def never_admitted(workload: Mapping[str, Any]) -> str | None:
    """Kueue's reason (one line) when the Workload cannot be admitted as things stand, else
    None (admitted, or waiting for quota, or nothing said yet)."""
    if (workload.get("spec") or {}).get("active") is False:
        evicted = condition(workload, "Evicted")
        detail = one_line(str((evicted or {}).get("message") or "")) or "spec.active is false"
        return f"Kueue deactivated the workload: {detail}"
    if condition(workload, "QuotaReserved") is not None:
        return None
    pending = condition(workload, "QuotaReserved", status="False")
    if pending is None or pending.get("reason") not in ("Inadmissible", "Pending"):
        return None
    message = one_line(str(pending.get("message") or ""))
    return message if _never(message) else None


def _never(message: str) -> bool:
    """True when the message says the Workload cannot be admitted however long it waits: its
    queue does not exist, or every flavor's reason is one that waiting cannot cure (a single
    flavor that could admit it later means it waits)."""
    if _NO_QUEUE.match(message):
        return True
    flavors = _FLAVORS.match(message)
    if flavors is None:
        return False
    reasons = _REASON_START.split(flavors["reasons"])
    return all(any(rule.match(reason) for rule in _NEVER_REASONS) for reason in reasons)


def evicted(workload: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) while Kueue has evicted the Workload (preempted, its queue stopped, …)
    and it waits to be admitted again; None otherwise."""
    found = condition(workload, "Evicted")
    if found is None:
        return None
    return str(found.get("reason") or "Evicted"), one_line(str(found.get("message") or ""))


def evicted_at(workload: Mapping[str, Any]) -> str:
    """When the Workload's current eviction happened (its condition's transition time), to
    tell one eviction from the next."""
    found = condition(workload, "Evicted") or {}
    return str(found.get("lastTransitionTime") or "")
