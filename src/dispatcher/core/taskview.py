"""One task as an operator reads it: its timeline, its Kubernetes events and its log's last lines.

Read from the task's Job (its name is the task id), the Job's pods, the namespace's Events about
either, and the log of the newest pod that started. A task whose Job is gone (answered and
deleted, or never made) is not found: its answer is the only record left of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from dispatcher.core.overview import (
    STATE_WORDS,
    answered_error,
    ended_at,
    in_flight,
    iso,
    newest_started,
    parse_time,
    started_at,
)
from dispatcher.core.ports import KubeGateway
from dispatcher.errors import KubeError
from dispatcher.kube.conventions import (
    CONTAINER_NAME,
    RESPONDED_ANNOTATION,
    job_name,
    owns,
    pods_of_job,
)
from dispatcher.kube.objects import one_line
from dispatcher.kube.outcome import attempts_of
from dispatcher.messages.response import Attempt

LOG_TAIL_LINES: Final = 20
LOG_TAIL_BYTES: Final = 16384
EVENTS_SHOWN: Final = 30


@dataclass(frozen=True)
class Step:
    what: str  # created, scheduled, started, ended, answered
    at: datetime | None
    detail: str = ""


@dataclass(frozen=True)
class KubeEvent:
    at: datetime | None
    kind: str  # the object it is about: Job or Pod
    name: str
    type: str  # Normal or Warning
    reason: str
    message: str
    count: int


@dataclass(frozen=True)
class TaskView:
    task_id: str
    state: str  # as STATE_WORDS says, or "answered"
    steps: tuple[Step, ...]
    events: tuple[KubeEvent, ...]
    log_tail: str | None  # None: no pod started, or its log could not be read
    log_note: str | None  # why there is no log tail
    error: str | None  # the answer's error, when it is known from the Job
    attempts: tuple[Attempt, ...] = ()  # every run of its container, when there were several

    def to_json(self) -> dict[str, Any]:
        document = {
            "id": self.task_id,
            "state": self.state,
            "timeline": [{"step": s.what, "at": iso(s.at), "detail": s.detail} for s in self.steps],
            "events": [
                {
                    "at": iso(e.at),
                    "object": f"{e.kind}/{e.name}",
                    "type": e.type,
                    "reason": e.reason,
                    "message": e.message,
                    "count": e.count,
                }
                for e in self.events
            ],
            "log_tail": self.log_tail,
            "log_note": self.log_note,
            "error": self.error,
        }
        if self.attempts:
            document["attempts"] = [attempt.to_json() for attempt in self.attempts]
        return document


def read_task(
    kube: KubeGateway,
    task_id: str,
    *,
    dispatcher_name: str,
    max_run_seconds: int,
    lines: int = LOG_TAIL_LINES,
) -> TaskView | None:
    """The task's view, or None when this installation has no Job for it."""
    job = kube.get_job(job_name(task_id))
    if job is None or not owns(job, dispatcher_name):
        return None
    pods = kube.list_pods(pods_of_job(job["metadata"]["uid"]))
    flying = in_flight(job, pods)
    error = answered_error(job, pods, max_run_seconds)
    tail, note = _log_tail(kube, pods, lines)
    return TaskView(
        task_id=task_id,
        state=STATE_WORDS[flying.state] if flying is not None else "answered",
        steps=timeline(job, pods),
        events=_events(kube, job, pods),
        log_tail=tail,
        log_note=note,
        error=error.error if error is not None else None,
        attempts=attempts_of(job, pods, max_run_seconds=max_run_seconds),
    )


def timeline(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[Step, ...]:
    """Created, scheduled (on which node), started, ended, answered: the steps that happened."""
    meta = job["metadata"]
    steps = [Step("created", parse_time(meta.get("creationTimestamp")))]
    pod = newest_started(pods)
    if pod is not None:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        steps.append(Step("scheduled", started_at(pod), f"on node {node} (pod {_name(pod)})"))
        running = _container_started(pod)
        if running is not None:
            steps.append(Step("started", running))
    ended = ended_at(job)
    if ended is not None:
        steps.append(Step("ended", ended, _end_reason(job)))
    answered = (meta.get("annotations") or {}).get(RESPONDED_ANNOTATION)
    if answered:
        steps.append(Step("answered", parse_time(answered)))
    return tuple(steps)


def _container_started(pod: Mapping[str, Any]) -> datetime | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") != CONTAINER_NAME:
            continue
        state = status.get("state") or {}
        for key in ("running", "terminated"):
            if key in state:
                return parse_time(state[key].get("startedAt"))
    return None


def _end_reason(job: Mapping[str, Any]) -> str:
    for item in (job.get("status") or {}).get("conditions") or ():
        if item.get("type") in ("Complete", "Failed") and item.get("status") == "True":
            reason = item.get("reason") or ""
            return f"{item['type'].lower()}" + (f" ({reason})" if reason else "")
    return ""


def _events(
    kube: KubeGateway, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> tuple[KubeEvent, ...]:
    """The namespace's Events about the Job and its pods, oldest first (the newest kept)."""
    names = [job["metadata"]["name"], *(_name(pod) for pod in pods)]
    found: list[KubeEvent] = []
    for name in names:
        try:
            items, _ = kube.list_objects("events", "", f"involvedObject.name={name}")
        except KubeError:
            continue  # events are a help, not the record
        found.extend(_event(item) for item in items)
    found.sort(key=lambda e: (e.at is not None, e.at or datetime.min))
    return tuple(found[-EVENTS_SHOWN:])


def _event(item: Mapping[str, Any]) -> KubeEvent:
    involved = item.get("involvedObject") or {}
    when = item.get("lastTimestamp") or item.get("eventTime") or item.get("firstTimestamp")
    return KubeEvent(
        at=parse_time(when),
        kind=str(involved.get("kind") or ""),
        name=str(involved.get("name") or ""),
        type=str(item.get("type") or ""),
        reason=str(item.get("reason") or ""),
        message=one_line(str(item.get("message") or "")),
        count=int(item.get("count") or 1),
    )


def _log_tail(
    kube: KubeGateway, pods: Sequence[Mapping[str, Any]], lines: int
) -> tuple[str | None, str | None]:
    pod = newest_started(pods)
    if pod is None:
        return None, "no pod has started"
    try:
        text = kube.read_log(_name(pod), CONTAINER_NAME, LOG_TAIL_BYTES)
    except KubeError as exc:
        return None, f"the log could not be read: {exc}"
    return "".join(text.splitlines(keepends=True)[-lines:]), None


def _name(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["name"])
