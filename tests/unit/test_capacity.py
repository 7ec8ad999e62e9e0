"""Waiting for room or never: the scheduler's and the quota admission's words, judged."""

from __future__ import annotations

import pytest

from dispatcher.kube.capacity import quota_waiting, waiting_for_room

# Messages as the v1.37 scheduler writes them into the PodScheduled condition, read off the local
# v1.37.2 cluster: a pod asking 1.5 CPUs while another holds them, and one asking 64 CPUs.
FULL_NODE = (
    "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)
TOO_BIG = (
    "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
    "1 Preemption is not helpful for scheduling."
)
# The same two from the v1.34 scheduler (read off the local v1.34.4 cluster; 1.35's source writes
# them so too), whose resource-claims plugin added a post-filter message of its own.
FULL_NODE_OLD = (
    "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: "
    "0/1 nodes are available: 1 No preemption victims found for incoming pod."
)
TOO_BIG_OLD = (
    "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: "
    "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)


@pytest.mark.parametrize(
    ("message", "waiting"),
    [
        pytest.param(FULL_NODE, True, id="full-node"),
        pytest.param(TOO_BIG, False, id="request-above-allocatable"),
        pytest.param(FULL_NODE_OLD, True, id="full-node-up-to-1.35"),
        pytest.param(TOO_BIG_OLD, False, id="request-above-allocatable-up-to-1.35"),
        pytest.param(
            "0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. "
            "no new claims to deallocate",
            True,
            id="post-filter-without-preemption",
        ),
        pytest.param(
            "0/1 nodes are available: 1 Too many pods. preemption: 0/1 nodes are available: "
            "1 No preemption victims found for incoming pod.",
            True,
            id="too-many-pods",
        ),
        pytest.param(
            "0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Pod's node "
            "affinity/selector. preemption: 0/3 nodes are available: 1 No preemption victims "
            "found for incoming pod, 2 Preemption is not helpful for scheduling.",
            True,
            id="one-node-of-three-could-take-it-later",
        ),
        pytest.param(
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. "
            "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
            False,
            id="no-node-matches",
        ),
        pytest.param(
            '0/1 nodes are available: persistentvolumeclaim "missing" not found. preemption: '
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            False,
            id="missing-claim",
        ),
        pytest.param(
            "0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 nodes are "
            "available: 1 Preemption is not helpful for scheduling.",
            True,
            id="cordoned-node",
        ),
        pytest.param(
            "0/1 nodes are available: 1 node(s) had untolerated taint(s). preemption: 0/1 nodes "
            "are available: 1 Preemption is not helpful for scheduling.",
            True,
            id="tainted-or-not-ready-node",
        ),
        pytest.param(
            "0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.",
            True,
            id="no-preemption-part-capacity",
        ),
        pytest.param(
            "0/2 nodes are available: 2 node(s) had volume node affinity conflict.",
            False,
            id="no-preemption-part-volume-conflict",
        ),
        pytest.param(
            "0/0 nodes are available: no nodes available to schedule pods.",
            False,
            id="zero-nodes",
        ),
        pytest.param("no nodes available to schedule pods", False, id="no-nodes"),
        pytest.param("something the rules do not know", True, id="unknown-text-waits"),
    ],
)
def test_the_scheduler_message_tells_waiting_from_never(message: str, waiting: bool) -> None:
    assert waiting_for_room(message) is waiting


@pytest.mark.parametrize(
    ("message", "waiting"),
    [
        pytest.param(
            'Error creating: pods "t-1-abcde" is forbidden: exceeded quota: tasks, '
            "requested: pods=1, used: pods=2, limited: pods=2",
            True,
            id="pods-used-up",
        ),
        pytest.param(
            'Error creating: pods "t-1-abcde" is forbidden: exceeded quota: compute, '
            "requested: requests.cpu=500m,requests.memory=64Mi, used: requests.cpu=1800m,"
            "requests.memory=64Mi, limited: requests.cpu=2,requests.memory=1Gi",
            True,
            id="cpu-used-up",
        ),
        pytest.param(
            'Error creating: pods "t-1-abcde" is forbidden: exceeded quota: compute, '
            "requested: requests.cpu=64, used: requests.cpu=0, limited: requests.cpu=2",
            False,
            id="request-above-the-hard-limit",
        ),
        pytest.param(
            'Error creating: pods "t-1-" is forbidden: error looking up service account '
            'dispatcher/job-internal: serviceaccount "job-internal" not found',
            False,
            id="not-a-quota",
        ),
    ],
)
def test_a_used_up_quota_waits_and_a_quota_too_small_ever_does_not(
    message: str, waiting: bool
) -> None:
    assert quota_waiting(message) is waiting
