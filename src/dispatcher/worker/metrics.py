"""Prometheus metrics of one worker process, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

    def track_jobs(self, active: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.jobs_in_flight.set_function(lambda: float(active()))
        self.jobs_waiting.set_function(lambda: float(waiting()))
