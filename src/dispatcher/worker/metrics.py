"""Prometheus metrics of one worker process, in a registry of its own (no global state).

Counters whose label values are known in advance (outcomes, submit results, error kinds) serve
each of them from the start, at 0: a rate or a ratio over them is 0, not missing, before the first
one happens. The Job gauges are read from the reactor when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dispatcher.core.reactor import JobView, Reactor
from dispatcher.core.submit import Submitted
from dispatcher.kube.outcome import Outcome

KUBE_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
JOB_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks_received = Counter(
            "dispatcher_tasks_received", "Task messages read from the task queue.", registry=r
        )
        self.tasks_invalid = Counter(
            "dispatcher_tasks_invalid",
            "Task messages answered with a validation error.",
            registry=r,
        )
        self.tasks_submitted = Counter(
            "dispatcher_tasks_submitted",
            "Submit results: created (new Job), joined (same task already running), rejected.",
            ["result"],
            registry=r,
        )
        self.cancel_requests = Counter(
            "dispatcher_cancel_requests",
            "Cancel requests by result: stopping, no such task, ended, error.",
            ["result"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "dispatcher_jobs_finished", "Responses published, by outcome.", ["outcome"], registry=r
        )
        self.jobs_in_flight = Gauge(
            "dispatcher_jobs_in_flight",
            "Jobs of this installation that exist and have not ended (running or waiting).",
            registry=r,
        )
        self.jobs_waiting = Gauge(
            "dispatcher_jobs_waiting_for_room",
            "Jobs whose pod has no node yet: queued for room in the cluster, or for Kueue.",
            registry=r,
        )
        self.oldest_waiting = Gauge(
            "dispatcher_oldest_waiting_seconds",
            "Seconds the oldest Job whose pod has no node yet has waited (since it was created, "
            "or last admitted by Kueue); 0 when none waits.",
            registry=r,
        )
        self.jobs_unanswered = Gauge(
            "dispatcher_jobs_unanswered",
            "Jobs that ended (or are being deleted) and are not marked answered yet.",
            registry=r,
        )
        self.oldest_unanswered = Gauge(
            "dispatcher_oldest_unanswered_seconds",
            "Seconds since the oldest of those Jobs ended; 0 when there is none (answers "
            "normally follow within seconds).",
            registry=r,
        )
        self.max_active_jobs = Gauge(
            "dispatcher_max_active_jobs", "MAX_ACTIVE_JOBS (0: no limit).", registry=r
        )
        self.intake_paused = Gauge(
            "dispatcher_intake_paused",
            "1 while this worker holds tasks because MAX_ACTIVE_JOBS is reached.",
            registry=r,
        )
        self.tasks_held = Gauge(
            "dispatcher_tasks_held",
            "Task messages this worker holds, unacknowledged, until MAX_ACTIVE_JOBS leaves room "
            "(at most TASK_PREFETCH; the rest wait in the task queue).",
            registry=r,
        )
        self.ready = Gauge(
            "dispatcher_ready",
            "1 while this worker is ready (/readyz answers 200: it consumes the task queue and "
            "every watch has listed), else 0.",
            registry=r,
        )
        self.task_queue_messages = Gauge(
            "dispatcher_task_queue_messages",
            "Task messages ready in the task queue (refreshed every few seconds).",
            registry=r,
        )
        self.submit_seconds = Histogram(
            "dispatcher_submit_seconds",
            "Time to create (or join) a Job.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "dispatcher_end_to_end_seconds",
            "From Job creation to its response being published.",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.kube_errors = Counter(
            "dispatcher_kube_api_errors",
            "Kubernetes API errors, by kind (transient or permanent).",
            ["kind"],
            registry=r,
        )
        self.kube_throttled = Counter(
            "dispatcher_kube_api_throttled",
            "Kubernetes API requests answered with HTTP 429 Too Many Requests (API Priority and "
            "Fairness, or the API server's limit of requests in flight); they are retried.",
            registry=r,
        )
        self.kube_requests = Histogram(
            "dispatcher_kube_api_request_seconds",
            "Requests made to the Kubernetes API and the seconds until each was answered (its "
            "head, for logs and watches), by verb (get, list, watch, create, patch, delete, "
            "log) and resource; _count counts the requests.",
            ["verb", "resource"],
            buckets=KUBE_BUCKETS,
            registry=r,
        )
        self.internal_refused = Counter(
            "dispatcher_internal_messages_refused",
            "Messages on the internal queue dropped unrun: their seal was missing or wrong (not "
            "sent by a worker of this dispatcher).",
            ["task"],
            registry=r,
        )
        self.kueue_evictions = Counter(
            "dispatcher_kueue_evictions",
            "Jobs Kueue evicted while admitted (suspended again, their pod removed), by Kueue's "
            "reason (Preempted, PodsReadyTimeout, ClusterQueueStopped, ...); each waits to be "
            "admitted again and is not answered for it.",
            ["reason"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "dispatcher_watch_restarts",
            "Watch streams restarted, by resource and reason (resumed, error, expired).",
            ["resource", "reason"],
            registry=r,
        )

        for outcome in Outcome:
            self.jobs_finished.labels(outcome.value)
        for result in (*(s.value for s in Submitted), "rejected"):
            self.tasks_submitted.labels(result)
        for kind in ("transient", "permanent"):
            self.kube_errors.labels(kind)

    def track_jobs(self, reactor: Reactor, clock: Callable[[], float] = time.time) -> None:
        """Serve the Job gauges from what the reactor holds at each scrape."""
        self.jobs_in_flight.set_function(lambda: float(reactor.active_jobs()))
        self.jobs_waiting.set_function(lambda: float(reactor.waiting_jobs()))
        self.oldest_waiting.set_function(lambda: _oldest_waiting(reactor.jobs(), clock()))
        self.jobs_unanswered.set_function(lambda: float(len(reactor.unanswered())))
        self.oldest_unanswered.set_function(lambda: _age(reactor.unanswered()[:1], clock()))

    def track_readiness(self, not_ready: Callable[[], list[str]]) -> None:
        """Serve `dispatcher_ready` from what keeps the worker from being ready."""
        self.ready.set_function(lambda: 0.0 if not_ready() else 1.0)


def _oldest_waiting(jobs: list[JobView], now: float) -> float:
    """How long the oldest active Job without a node has waited (`jobs` are oldest first)."""
    return _age([job.since for job in jobs if not job.started][:1], now)


def _age(since: list[float], now: float) -> float:
    """Seconds from the first of `since` to `now`; 0 for none (never below 0: clocks differ)."""
    return max(0.0, now - since[0]) if since else 0.0
