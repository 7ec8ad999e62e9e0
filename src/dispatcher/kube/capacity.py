"""Is a pod that has not started waiting for room, or can it never run?

A busy cluster is not a broken one. A pod the scheduler could not place only because the nodes
are full (insufficient cpu, memory, ephemeral storage or an extended resource, too many pods) or
because a node is cordoned, tainted or not ready, and a pod the Job controller could not create
only because a ResourceQuota is used up, will run once room frees up: it is *queued*. Anything
else — a request larger than any node offers, a quota whose hard limit is below the request, no
nodes at all, a missing claim — will never run without someone changing something: it *cannot
run*.

The deciding facts come from the scheduler and the quota admission themselves, in the messages
they record; no cluster-scoped read (of Nodes) is needed. After filtering, the scheduler runs its
preemption pass, which sorts every node into "preemption is not helpful" (the failure cannot be
cured by freeing room: the request exceeds the node's allocatable, a taint, an affinity, a
missing claim) and the rest (it could be cured by room), and it reports that sorting in the
``preemption:`` part of the PodScheduled condition message (as Kubernetes 1.37 writes it; 1.35
and earlier put ``no new claims to deallocate,`` before ``preemption:``)::

    0/1 nodes are available: 1 Insufficient cpu. preemption:
    0/1 nodes are available: 1 No preemption victims found for incoming pod.   -> queued
    0/1 nodes are available: 1 Insufficient cpu. preemption:
    0/1 nodes are available: 1 Preemption is not helpful for scheduling.       -> cannot run

Where no ``preemption:`` part is given (a pod that may not preempt, a scheduler without
preemption), the filter reasons decide: any capacity reason means queued. Text the rules do not
recognise counts as queued, so an unknown scheduler message delays an answer (bounded by
``QUEUE_TIMEOUT_SECONDS``) rather than failing a task that would have run.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from dispatcher.parsers import amount

_CAPACITY_REASONS: Final = (
    re.compile(r"^Insufficient \S+$"),
    re.compile(r"^Too many pods$"),
    re.compile(r"^node\(s\) didn't have free ports for the requested pod ports$"),
)
"""Filter reasons that more room cures."""
_NODE_STATE_REASONS: Final = (
    re.compile(r"^node\(s\) were unschedulable$"),  # cordoned, e.g. while it is drained
    re.compile(r"^node\(s\) had untolerated taint"),  # not ready, pressure, or a dedicated node
    re.compile(r"^node\(s\) had taints that the pod didn't tolerate$"),
    re.compile(r"^node\(s\) had unknown conditions$"),
)
"""Filter reasons that pass with the node's state (cordoned, not ready, under pressure). Task
pods never carry tolerations of their own, so the scheduler's taint message (which no longer
names the taint) cannot tell a node that is not ready from one dedicated to other work; both are
treated as "not now", bounded by ``QUEUE_TIMEOUT_SECONDS``."""
_NOT_HELPFUL: Final = "Preemption is not helpful for scheduling"
_NO_NODES: Final = "no nodes available to schedule pods"
_REASON_COUNT: Final = re.compile(r"^(\d+) (.+)$")
_SUMMARY: Final = re.compile(r"^0/(\d+) nodes are available:?\s*(.*)$", re.DOTALL)
_PREEMPTION: Final = re.compile(r"preemption: 0/\d+ nodes are available:\s*(.*)$", re.DOTALL)
_QUOTA: Final = re.compile(
    r"exceeded quota: [^,]+, requested: (?P<requested>[^ ]+), used: [^ ]+, "
    r"limited: (?P<limited>\S+)"
)


def waiting_for_room(message: str) -> bool:
    """True when the scheduler's Unschedulable message says the pod only waits for room."""
    if message.strip().rstrip(".") == _NO_NODES:
        return False  # (a cluster autoscaler's scale-up from zero is checked apart)
    summary = _SUMMARY.match(message.strip())
    if summary is None:
        return True  # not the scheduler's usual summary: do not fail the task on a guess
    if int(summary[1]) == 0:
        return False  # no nodes at all (a cluster autoscaler's scale-up is checked apart)
    # "<filter reasons>. <post-filter messages>", the latter e.g. "preemption: 0/1 nodes are
    # available: 1 No preemption victims found for incoming pod." (in 1.35 and earlier after
    # "no new claims to deallocate, ")
    filtered, _, post_filter = summary[2].partition(". ")
    reasons = _reasons(filtered)
    if any(_matches(reason, _NODE_STATE_REASONS) for reason in reasons):
        return True
    preemption = _PREEMPTION.search(post_filter)
    if preemption is not None:
        return any(verdict != _NOT_HELPFUL for verdict in _reasons(preemption[1]))
    return any(_matches(reason, _CAPACITY_REASONS) for reason in reasons)


def quota_waiting(message: str) -> bool:
    """True when a FailedCreate message says only that a ResourceQuota is used up for now.

    ``exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2`` waits; a request
    above the quota's hard limit (``requested: requests.cpu=64, ..., limited: requests.cpu=2``)
    can never be admitted, and a message that is no quota refusal at all does not wait either.
    """
    match = _QUOTA.search(message)
    if match is None:
        return False
    requested, limited = _quantities(match["requested"]), _quantities(match["limited"])
    if requested is None or limited is None:
        return True
    return all(value <= limited.get(name, value) for name, value in requested.items())


def _reasons(text: str) -> list[str]:
    """The reasons of a ``1 Insufficient cpu, 2 node(s) ...`` histogram, without counts."""
    reasons = []
    for part in re.split(r",\s+(?=\d+ )", text.strip().rstrip(".")):
        match = _REASON_COUNT.match(part.strip())
        reasons.append(match[2].strip() if match else part.strip())
    return [reason for reason in reasons if reason]


def _matches(reason: str, patterns: tuple[re.Pattern[str], ...]) -> bool:
    return any(pattern.match(reason) for pattern in patterns)


def _quantities(text: str) -> dict[str, Decimal] | None:
    """``pods=1,requests.cpu=500m`` as numbers, or None when any part does not parse."""
    values = {}
    for part in text.rstrip(",").split(","):
        name, _, value = part.partition("=")
        try:
            values[name] = amount(value)
        except ValueError:
            return None
    return values
