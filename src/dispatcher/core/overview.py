"""What the dispatcher is doing, as an operator reads it: one builder for `dispatcher status`
and the workers' status page.

The overview is made from what our ports give: the installation's Jobs and their pods (one list
of each, through `Lister`) and the depth of our queues (`QueueProbe`). Every task in flight is
in exactly one state, decided from its Job and pods alone:

- ``waiting_kueue``: its Job is suspended, waiting for Kueue to admit it;
- ``waiting_room``: its pod has no node yet (the cluster has no room for it, or it was only
  just made);
- ``running``: its pod has a node and its Job has not ended;
- ``ending``: its Job ended (or was deleted) and its answer is not published yet.

Answered Jobs are not in flight. Those kept after their answer (the Jobs that ran to their end,
for IDEMPOTENCY_WINDOW_SECONDS) give the last answers that carried an error; a Job answered with
another error (image pull, unschedulable, queue timeout, ...) is deleted once answered and is
not among them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

from dispatcher.config import Settings
from dispatcher.kube.conventions import (
    CANCELLED_ANNOTATION,
    CONTROLLER_UID_LABEL,
    RESPONDED_ANNOTATION,
    label_selector,
    timestamp,
)
from dispatcher.kube.lister import Lister
from dispatcher.kube.objects import condition
from dispatcher.kube.outcome import CANCELLED_ERROR, job_finished, judge_finished, pod_started

State = Literal["waiting_kueue", "waiting_room", "running", "ending"]
STATES: Final[tuple[State, ...]] = ("waiting_kueue", "waiting_room", "running", "ending")
STATE_WORDS: Final[Mapping[State, str]] = {
    "waiting_kueue": "waiting for Kueue",
    "waiting_room": "waiting for room",
    "running": "running",
    "ending": "ending",
}
ERRORS_SHOWN: Final = 10
TASKS_SHOWN: Final = 200
"""At most this many tasks in flight are listed one by one (oldest first); counts are exact."""

KubeObject = dict[str, Any]


@dataclass(frozen=True)
class QueueDepth:
    """One of our queues: `ready` messages and `consumers`, as a passive declare tells them
    (None, with `problem`, when it could not be read). Unacknowledged messages are not known."""

    role: str  # "tasks", "internal" or "responses"
    name: str
    ready: int | None
    consumers: int | None
    problem: str | None = None


class QueueProbe(Protocol):
    def depths(self) -> list[QueueDepth]:
        """The task queue, the internal queue and the responses queue, in that order."""
        ...


@dataclass(frozen=True)
class InFlight:
    task_id: str
    state: State
    since: datetime | None  # when it entered `state`, as far as Kubernetes tells
    node: str | None


@dataclass(frozen=True)
class StateCount:
    state: State
    count: int
    oldest: str | None
    oldest_seconds: float | None


@dataclass(frozen=True)
class ErrorAnswer:
    task_id: str
    answered: datetime | None
    error: str


@dataclass(frozen=True)
class Overview:
    at: datetime
    queues: tuple[QueueDepth, ...]
    states: tuple[StateCount, ...]
    nodes: tuple[tuple[str, int], ...]  # running tasks per node, most first
    errors: tuple[ErrorAnswer, ...]  # newest first
    tasks: tuple[InFlight, ...]  # oldest first, at most TASKS_SHOWN
    in_flight: int

    def to_json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "queues": [asdict(queue) for queue in self.queues],
            "in_flight": self.in_flight,
            "states": {
                s.state: {"count": s.count, "oldest": s.oldest, "oldest_seconds": s.oldest_seconds}
                for s in self.states
            },
            "nodes": dict(self.nodes),
            "errors": [
                {"id": e.task_id, "answered": iso(e.answered), "error": e.error}
                for e in self.errors
            ],
            "tasks": [
                {"id": t.task_id, "state": t.state, "since": iso(t.since), "node": t.node}
                for t in self.tasks
            ],
        }


def collect_overview(
    kube: Lister, queues: QueueProbe | None, settings: Settings, now: datetime
) -> Overview:
    """Two lists (the Jobs and the pods of this installation) and the queue depths."""
    selector = label_selector(settings.dispatcher_name)
    jobs, _ = kube.list_objects("jobs", selector)
    pods, _ = kube.list_objects("pods", selector)
    depths = queues.depths() if queues is not None else []
    return build_overview(jobs, pods, depths, now=now, max_run_seconds=settings.job_max_run_seconds)


def build_overview(
    jobs: Iterable[KubeObject],
    pods: Iterable[KubeObject],
    queues: Sequence[QueueDepth],
    *,
    now: datetime,
    max_run_seconds: int,
) -> Overview:
    by_job = pods_by_job(pods)
    flying: list[InFlight] = []
    errors: list[ErrorAnswer] = []
    for job in jobs:
        job_pods = by_job.get(job["metadata"].get("uid", ""), [])
        task = in_flight(job, job_pods)
        if task is not None:
            flying.append(task)
            continue
        error = answered_error(job, job_pods, max_run_seconds)
        if error is not None:
            errors.append(error)
    flying.sort(key=lambda t: (t.since is None, t.since or now, t.task_id))
    errors.sort(key=lambda e: (e.answered is not None, e.answered or now), reverse=True)
    nodes = Counter(t.node for t in flying if t.state == "running" and t.node)
    return Overview(
        at=now,
        queues=tuple(queues),
        states=tuple(_count(state, flying, now) for state in STATES),
        nodes=tuple(sorted(nodes.items(), key=lambda item: (-item[1], item[0]))),
        errors=tuple(errors[:ERRORS_SHOWN]),
        tasks=tuple(flying[:TASKS_SHOWN]),
        in_flight=len(flying),
    )


def pods_by_job(pods: Iterable[KubeObject]) -> dict[str, list[KubeObject]]:
    """Pods by the uid of the Job that made them."""
    grouped: dict[str, list[KubeObject]] = {}
    for pod in pods:
        uid = (pod["metadata"].get("labels") or {}).get(CONTROLLER_UID_LABEL)
        if uid:
            grouped.setdefault(uid, []).append(pod)
    return grouped


def in_flight(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> InFlight | None:
    """The task's state, or None once it is answered."""
    meta = job["metadata"]
    annotations = meta.get("annotations") or {}
    if RESPONDED_ANNOTATION in annotations:
        return None
    name = meta["name"]
    pod = newest_started(pods)
    node = pod["spec"].get("nodeName") if pod is not None else None
    if job_finished(job) or meta.get("deletionTimestamp"):
        ended = ended_at(job) or parse_time(meta.get("deletionTimestamp"))
        return InFlight(name, "ending", ended, node)
    if pod is not None:
        return InFlight(name, "running", started_at(pod), node)
    created = parse_time(meta.get("creationTimestamp"))
    if (job.get("spec") or {}).get("suspend"):
        return InFlight(name, "waiting_kueue", created, None)
    return InFlight(name, "waiting_room", created, None)


def answered_error(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], max_run_seconds: int
) -> ErrorAnswer | None:
    """The error a kept, answered Job was answered with (None when its answer had none)."""
    meta = job["metadata"]
    annotations = meta.get("annotations") or {}
    answered = parse_time(annotations.get(RESPONDED_ANNOTATION))
    if CANCELLED_ANNOTATION in annotations:
        return ErrorAnswer(meta["name"], answered, CANCELLED_ERROR)
    if not job_finished(job):
        return None
    verdict = judge_finished(job, pods, max_run_seconds=max_run_seconds)
    if verdict.error is None:
        return None
    return ErrorAnswer(meta["name"], answered, verdict.error)


def newest_started(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest of the pods that got a node, or None."""
    placed = [pod for pod in pods if pod_started(pod)]
    return max(placed, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def started_at(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod got its node (its PodScheduled condition), else its start time."""
    scheduled = condition(pod, "PodScheduled")
    when = (scheduled or {}).get("lastTransitionTime") or (pod.get("status") or {}).get("startTime")
    return parse_time(when)


def ended_at(job: Mapping[str, Any]) -> datetime | None:
    status = job.get("status") or {}
    for kind in ("Complete", "Failed"):
        found = condition(job, kind)
        if found is not None:
            return parse_time(found.get("lastTransitionTime") or status.get("completionTime"))
    return None


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _count(state: State, flying: Sequence[InFlight], now: datetime) -> StateCount:
    mine = [t for t in flying if t.state == state]
    oldest = next((t for t in mine if t.since is not None), None)
    if oldest is None or oldest.since is None:
        return StateCount(state, len(mine), mine[0].task_id if mine else None, None)
    return StateCount(state, len(mine), oldest.task_id, (now - oldest.since).total_seconds())


def iso(when: datetime | None) -> str | None:
    """RFC 3339 in UTC to the second, as the JSON shows times."""
    return None if when is None else timestamp(when)
