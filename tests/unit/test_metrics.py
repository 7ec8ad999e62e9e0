"""What a worker serves on /metrics about its Jobs and its readiness (read from a real reactor fed
canned watch events, at a fake clock), and the counters served at 0 before anything happens."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from dispatcher.core.reactor import Reactor
from dispatcher.kube.outcome import Outcome
from dispatcher.worker.metrics import Metrics
from tests.unit.fakes import COMPLETE, FULL, T0, T1, TASK, FakeKube, create_job_for, make_pod

CREATED = datetime.fromisoformat(T0).timestamp()
ENDED = datetime.fromisoformat(T1).timestamp()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def tracked(now: float) -> tuple[Metrics, Reactor, FakeKube]:
    metrics = Metrics()
    react = Reactor(lambda request: None, stuck_grace_seconds=60.0)
    metrics.track_jobs(react, clock=lambda: now)
    return metrics, react, FakeKube()


def test_the_oldest_job_without_a_node_is_served_with_how_long_it_has_waited() -> None:
    metrics, react, kube = tracked(now=CREATED + 90)
    placed = create_job_for(kube)  # created at T0, like the other
    waiting = create_job_for(kube, dataclasses.replace(TASK, id="t-2"))
    react.on_job("ADDED", placed)
    react.on_job("ADDED", waiting)
    react.on_pod("ADDED", make_pod(placed))  # has a node: no longer waits
    react.on_pod("ADDED", make_pod(waiting, "b8c1d", scheduled=FULL))

    assert sample(metrics, "dispatcher_oldest_waiting_seconds") == 90.0
    assert sample(metrics, "dispatcher_jobs_waiting_for_room") == 1.0
    assert sample(metrics, "dispatcher_jobs_in_flight") == 2.0


def test_with_no_job_waiting_the_oldest_wait_is_zero() -> None:
    metrics, react, kube = tracked(now=CREATED + 90)
    job = create_job_for(kube)
    react.on_job("ADDED", job)
    react.on_pod("ADDED", make_pod(job))

    assert sample(metrics, "dispatcher_oldest_waiting_seconds") == 0.0


def test_ended_jobs_not_answered_yet_are_counted_with_the_age_of_the_oldest() -> None:
    metrics, react, kube = tracked(now=ENDED + 600)
    create_job_for(kube)
    create_job_for(kube, dataclasses.replace(TASK, id="t-2"))
    for name in ("t-1", "t-2"):
        react.on_job("MODIFIED", kube.update_status(name, COMPLETE))

    assert sample(metrics, "dispatcher_jobs_unanswered") == 2.0
    assert sample(metrics, "dispatcher_oldest_unanswered_seconds") == 600.0


def test_with_every_job_answered_nothing_is_unanswered() -> None:
    metrics, _, _ = tracked(now=ENDED)

    assert sample(metrics, "dispatcher_jobs_unanswered") == 0.0
    assert sample(metrics, "dispatcher_oldest_unanswered_seconds") == 0.0


@pytest.mark.parametrize(
    ("missing", "ready"),
    [pytest.param([], 1.0, id="ready"), pytest.param(["broker"], 0.0, id="not-ready")],
)
def test_readiness_is_served_as_readyz_answers(missing: list[str], ready: float) -> None:
    metrics = Metrics()
    metrics.track_readiness(lambda: missing)

    assert sample(metrics, "dispatcher_ready") == ready


def test_counters_rules_divide_by_are_served_at_zero_before_anything_happens() -> None:
    metrics = Metrics()

    assert {
        outcome.value: sample(metrics, "dispatcher_jobs_finished_total", outcome=outcome.value)
        for outcome in Outcome
    } == {outcome.value: 0.0 for outcome in Outcome}
    assert sample(metrics, "dispatcher_tasks_submitted_total", result="rejected") == 0.0
    assert sample(metrics, "dispatcher_tasks_submitted_total", result="created") == 0.0
    assert sample(metrics, "dispatcher_kube_api_errors_total", kind="transient") == 0.0
    assert sample(metrics, "dispatcher_kube_api_throttled_total") == 0.0
