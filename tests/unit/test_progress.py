"""Progress events: queued when the Job is made, running when its pod gets a node (once), and
succeeded or failed once the answer is out; never at the cost of an answer."""

from __future__ import annotations

from datetime import UTC, datetime

from dispatcher.core.finalize import Context, finalize
from dispatcher.core.progress import Progress
from dispatcher.core.reactor import Reactor
from dispatcher.core.submit import submit
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from tests.unit.fakes import (
    COMPLETE,
    SETTINGS,
    TASK,
    FakeEvents,
    FakeKube,
    FakePublisher,
    make_pod,
    terminated,
)

NOW = datetime(2025, 1, 10, 10, 10, tzinfo=UTC)
ROUTE = ReplyRoute(correlation_id="c-7")
WHEN = "2025-01-10T10:10:00Z"


def test_one_task_gives_queued_running_and_succeeded_in_order() -> None:
    kube, events = FakeKube(), FakeEvents()
    progress = Progress(events, clock=lambda: NOW)
    reactor = Reactor(lambda request: None, stuck_grace_seconds=60, on_started=progress.running)

    submit(TASK, ROUTE, kube=kube, settings=SETTINGS, progress=progress)
    job = kube.jobs["t-1"]
    uid = job["metadata"]["uid"]
    pod = make_pod(job, phase="Running", state={"running": {"startedAt": WHEN}})
    reactor.on_pod("ADDED", pod)
    reactor.on_pod("MODIFIED", pod)  # still running: no second event
    kube.add_pod(make_pod(job, phase="Succeeded", state=terminated(0)))
    kube.logs["t-1-x7k2p"] = "hi\n"
    kube.update_status("t-1", COMPLETE)
    context = Context(kube, FakePublisher(), SETTINGS, "w/1", progress=progress)
    finalize("t-1", uid, context, now=NOW)

    assert events.events == [
        (ProgressEvent("t-1", "queued", WHEN), "c-7", f"t-1.{uid}.queued"),
        (ProgressEvent("t-1", "running", WHEN, node="node-1"), "c-7", f"t-1.{uid}.running"),
        (ProgressEvent("t-1", "succeeded", WHEN, exit=0), "c-7", f"t-1.{uid}.succeeded"),
    ]


def test_a_failed_answer_is_announced_failed_with_its_error() -> None:
    events = FakeEvents()
    job = {"metadata": {"name": "t-1", "uid": "u", "annotations": {}}}

    Progress(events, clock=lambda: NOW).finished(job, Response(id="t-1", error="cancelled"))

    assert events.events == [
        (ProgressEvent("t-1", "failed", WHEN, error="cancelled"), None, "t-1.u.failed")
    ]


def test_an_event_that_cannot_be_published_costs_nothing_else() -> None:
    class Broken:
        def publish_event(self, *args: object) -> None:
            raise ConnectionError("broker gone")

    job = {"metadata": {"name": "t-1", "uid": "u"}}
    Progress(Broken()).queued(job)  # logged, not raised
    Progress(None).queued(job)  # off: nothing at all


def test_events_round_trip_through_json() -> None:
    event = ProgressEvent("t-1", "running", WHEN, node="n")

    assert ProgressEvent.decode(event.encode()) == event
    assert event.to_json() == {"id": "t-1", "state": "running", "time": WHEN, "node": "n"}
