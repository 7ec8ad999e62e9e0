"""The operator's overview and a task's view, built from the Jobs and pods our ports list."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from amqp.exceptions import NotFound

from dispatcher.amqp.depth import AmqpQueueProbe
from dispatcher.core.overview import QueueDepth, collect_overview
from dispatcher.core.status_text import overview_text, task_text
from dispatcher.core.taskview import read_task
from dispatcher.kube.conventions import CANCELLED_ANNOTATION, RESPONDED_ANNOTATION
from dispatcher.messages.task import Task
from tests.unit.fakes import (
    COMPLETE,
    DEADLINE,
    FULL,
    RUNNING,
    SETTINGS,
    TASK,
    FakeKube,
    create_job_for,
    failed_create,
    job_status,
    make_pod,
    terminated,
)

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)
QUEUES = [
    QueueDepth("tasks", "tasks", 7, 2),
    QueueDepth("internal", "dispatcher", 0, 2),
    QueueDepth("responses", "responses", None, None, "NOT_FOUND - no queue 'responses'"),
]


class FixedProbe:
    def depths(self) -> list[QueueDepth]:
        return list(QUEUES)


def task(task_id: str) -> Task:
    return dataclasses.replace(TASK, id=task_id)


def running(kube: FakeKube, task_id: str, node: str = "node-1") -> None:
    job = create_job_for(kube, task(task_id))
    kube.update_status(task_id, RUNNING)
    pod = make_pod(job, state={"running": {"startedAt": "2025-01-10T10:01:00Z"}}, phase="Running")
    pod["spec"]["nodeName"] = node
    kube.add_pod(pod)


def waiting_for_room(kube: FakeKube, task_id: str) -> None:
    job = create_job_for(kube, task(task_id))
    kube.add_pod(make_pod(job, scheduled=FULL))


def ended(kube: FakeKube, task_id: str, status: object, *, answered: bool) -> None:
    job = create_job_for(kube, task(task_id))
    kube.update_status(task_id, status)
    kube.add_pod(make_pod(job, phase="Failed", state=terminated(3, "Error")))
    if answered:
        stamp = {RESPONDED_ANNOTATION: "2025-01-10T10:06:00Z"}
        kube.patch_job(task_id, {"metadata": {"annotations": stamp}})


def busy_cluster() -> FakeKube:
    kube = FakeKube()
    running(kube, "run-1", "node-1")
    running(kube, "run-2", "node-1")
    running(kube, "run-3", "node-2")
    waiting_for_room(kube, "wait-1")
    waiting_for_room(kube, "wait-2")
    kueue = create_job_for(kube, task("queued-1"))
    kube.set_suspend(kueue["metadata"]["name"], True)
    ended(kube, "end-1", COMPLETE, answered=False)
    ended(kube, "late-1", DEADLINE, answered=True)
    ended(kube, "done-1", COMPLETE, answered=True)  # exit 3 without error: not listed
    return kube


def test_every_task_in_flight_is_counted_in_exactly_one_state() -> None:
    overview = collect_overview(busy_cluster(), FixedProbe(), SETTINGS, NOW)

    counts = {state.state: state.count for state in overview.states}
    assert counts == {"waiting_kueue": 1, "waiting_room": 2, "running": 3, "ending": 1}
    assert overview.in_flight == 7
    assert dict(overview.nodes) == {"node-1": 2, "node-2": 1}


def test_the_oldest_task_of_each_state_is_named_with_its_age() -> None:
    overview = collect_overview(busy_cluster(), FixedProbe(), SETTINGS, NOW)

    running_count = next(s for s in overview.states if s.state == "running")
    ending = next(s for s in overview.states if s.state == "ending")
    assert running_count.oldest == "run-1"
    assert running_count.oldest_seconds == 300.0  # scheduled at 10:05 (its PodScheduled)
    assert ending.oldest == "end-1"
    assert ending.oldest_seconds == 300.0


def test_answers_with_an_error_come_from_the_answered_jobs_still_kept() -> None:
    kube = busy_cluster()
    create_job_for(kube, task("stop-1"))
    stamps = {CANCELLED_ANNOTATION: "2025-01-10T10:02:00Z", RESPONDED_ANNOTATION: T_LATER}
    kube.patch_job("stop-1", {"metadata": {"annotations": stamps}})

    overview = collect_overview(kube, FixedProbe(), SETTINGS, NOW)

    assert [(e.task_id, e.error) for e in overview.errors] == [
        ("stop-1", "cancelled"),
        ("late-1", "deadline exceeded: the task ran longer than 600 s"),
    ]


T_LATER = "2025-01-10T10:07:00Z"


def test_the_overview_is_json_and_text_an_operator_reads() -> None:
    overview = collect_overview(busy_cluster(), FixedProbe(), SETTINGS, NOW)

    document = json.loads(json.dumps(overview.to_json()))
    assert document["states"]["waiting_room"]["count"] == 2
    assert document["queues"][0] == {
        "role": "tasks",
        "name": "tasks",
        "ready": 7,
        "consumers": 2,
        "problem": None,
    }
    assert [t["id"] for t in document["tasks"]][:2] == ["queued-1", "wait-1"]  # oldest first
    text = overview_text(overview)
    assert "  tasks           7 ready    2 consumers  tasks" in text
    assert "responses  responses: unknown (NOT_FOUND - no queue 'responses')" in text
    assert "  waiting for room        2  oldest wait-1" in text
    assert "  node-1                        2" in text
    assert "late-1: deadline exceeded" in text


def test_an_idle_installation_shows_zero_everywhere() -> None:
    overview = collect_overview(FakeKube(), None, SETTINGS, NOW)

    assert overview.in_flight == 0
    assert all(state.count == 0 and state.oldest is None for state in overview.states)
    assert "  none" in overview_text(overview)


def test_a_task_view_has_its_timeline_events_and_log_tail() -> None:
    kube = FakeKube()
    ended(kube, "done-1", COMPLETE, answered=True)
    pod = kube.pods[0]
    kube.logs[pod["metadata"]["name"]] = "".join(f"line {n}\n" for n in range(1, 31))
    job = kube.jobs["done-1"]
    kube.events.append(failed_create(job, "pods is forbidden: exceeded quota"))

    view = read_task(kube, "done-1", dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=600)

    assert view is not None
    assert view.state == "answered"
    assert [step.what for step in view.steps] == [
        "created",
        "scheduled",
        "started",
        "ended",
        "answered",
    ]
    assert view.steps[1].detail == f"on node node-1 (pod {pod['metadata']['name']})"
    assert view.steps[3].detail == "complete (CompletionsReached)"
    assert [(e.reason, e.kind) for e in view.events] == [("FailedCreate", "Job")]
    assert view.log_tail is not None
    assert view.log_tail.splitlines() == [f"line {n}" for n in range(11, 31)]
    text = task_text(view)
    assert "task done-1: answered" in text
    assert "  line 30" in text


def test_a_task_waiting_for_room_has_no_log_yet() -> None:
    kube = FakeKube()
    waiting_for_room(kube, "wait-1")

    view = read_task(kube, "wait-1", dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=600)

    assert view is not None
    assert view.state == "waiting for room"
    assert [step.what for step in view.steps] == ["created"]
    assert view.log_tail is None
    assert "(no pod has started)" in task_text(view)


def test_an_unknown_task_or_another_installations_job_is_not_found() -> None:
    kube = FakeKube()
    running(kube, "run-1")
    kube.jobs["run-1"]["metadata"]["labels"]["job-dispatcher.io/instance"] = "other"

    for task_id in ("run-1", "nope"):
        assert (
            read_task(kube, task_id, dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=1)
            is None
        )


def test_running_job_status_has_no_end() -> None:
    kube = FakeKube()
    running(kube, "run-1")
    kube.update_status("run-1", job_status(active=1))

    view = read_task(kube, "run-1", dispatcher_name=SETTINGS.dispatcher_name, max_run_seconds=1)

    assert view is not None
    assert view.state == "running"
    assert [step.what for step in view.steps] == ["created", "scheduled", "started"]


class FakeChannel:
    def __init__(self, queues: dict[str, tuple[int, int]]) -> None:
        self._queues = queues

    def queue_declare(self, queue: str, passive: bool) -> tuple[str, int, int]:
        assert passive  # a look, never a declaration
        if queue not in self._queues:
            raise NotFound(f"NOT_FOUND - no queue '{queue}' in vhost '/'", (50, 10), "")
        return queue, *self._queues[queue]

    def close(self) -> None:
        pass


class FakeConnection:
    def __init__(self, queues: dict[str, tuple[int, int]]) -> None:
        self.queues = queues
        self.released = False

    def channel(self) -> FakeChannel:
        return FakeChannel(self.queues)

    def release(self) -> None:
        self.released = True


def test_queue_depths_read_each_queue_and_say_why_one_is_unknown() -> None:
    connection = FakeConnection({"tasks": (12, 2), "dispatcher.internal": (0, 2)})

    depths = AmqpQueueProbe(lambda: connection, SETTINGS).depths()

    assert [(d.role, d.name, d.ready, d.consumers) for d in depths] == [
        ("tasks", "tasks", 12, 2),
        ("internal", "dispatcher.internal", 0, 2),
        ("responses", "responses", None, None),
    ]
    assert depths[2].problem is not None
    assert depths[2].problem.startswith("Queue.declare: (404) NOT_FOUND - no queue 'responses'")
    assert connection.released


def test_queue_depths_without_a_broker_are_unknown_not_an_error() -> None:
    def refuse() -> FakeConnection:
        raise ConnectionRefusedError(111, "Connection refused")

    depths = AmqpQueueProbe(refuse, SETTINGS).depths()

    assert [d.ready for d in depths] == [None, None, None]
    assert {d.problem for d in depths} == {"[Errno 111] Connection refused"}
