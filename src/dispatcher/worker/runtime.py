"""What the Celery tasks and bootsteps of one worker process share: settings and clients.

Built once per worker by `create_app` and hung on the Celery app (the only process-wide object);
clients are created on first use so that merely building the app needs no cluster.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from dispatcher.amqp.depth import AmqpQueueProbe
from dispatcher.amqp.publisher import AmqpResponsePublisher
from dispatcher.config import Settings
from dispatcher.core.admission import Admission
from dispatcher.core.finalize import Context
from dispatcher.core.overview import Overview, collect_overview
from dispatcher.core.progress import Progress
from dispatcher.core.reactor import Reactor
from dispatcher.core.taskview import TaskView, read_task
from dispatcher.kube.client import KubeClient
from dispatcher.kube.watcher import Watcher
from dispatcher.worker.metrics import Metrics
from dispatcher.worker.seal import Sealer


class Runtime:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.holder = f"{socket.gethostname()}/{os.getpid()}"
        self._lock = threading.Lock()
        self.metrics = Metrics()
        self.sealer = Sealer.from_secrets(settings.internal_signing_key, settings.amqp_password)
        self.broker_ready = threading.Event()  # set while the task consumer is consuming
        self.watchers: list[Watcher] = []
        self.reactor: Reactor | None = None  # set by the watch bootstep
        self.admission = Admission(settings.max_active_jobs, self.active_jobs)
        self.metrics.track_readiness(self.not_ready)

    def active_jobs(self) -> int | None:
        """Active Jobs of the installation, or None until the Job watch has listed them."""
        jobs = next((w for w in self.watchers if w.kind == "jobs"), None)
        if self.reactor is None or jobs is None or not jobs.established.is_set():
            return None
        return self.reactor.active_jobs()

    def not_ready(self) -> list[str]:
        """What keeps this worker from being ready (empty when it is ready)."""
        missing = [] if self.broker_ready.is_set() else ["broker"]
        if not self.watchers:
            missing.append("watch")
        missing += [f"watch of {w.kind}" for w in self.watchers if not w.established.is_set()]
        return missing

    @cached_property
    def kube(self) -> KubeClient:
        with self._lock:
            client = KubeClient.from_settings(self.settings)
        requests = self.metrics.kube_requests
        client.on_request = lambda verb, resource, seconds: requests.labels(verb, resource).observe(
            seconds
        )
        client.on_throttled = self.metrics.kube_throttled.inc
        return client

    def connect_kube(self) -> KubeClient:
        """Load the Kubernetes configuration (raises KubeError naming what is wrong)."""
        return self.kube

    @cached_property
    def publisher(self) -> AmqpResponsePublisher:
        return AmqpResponsePublisher(self.app.producer_pool, self.settings)

    @cached_property
    def progress(self) -> Progress:
        """Announces state changes on PROGRESS_EXCHANGE_NAME (does nothing when it is empty)."""
        return Progress(self.publisher if self.settings.progress_exchange_name else None)

    def finalize_context(
        self, task_id: str, attempt: int, *, logs_optional: bool = False
    ) -> Context:
        """The claim holder names this worker, the finalize task and its attempt, so that two
        tasks, or two copies of one task, never both answer a Job."""
        holder = f"{self.holder}/{task_id}"
        return Context(
            self.kube,
            self.publisher,
            self.settings,
            holder,
            logs_optional,
            attempt,
            progress=self.progress,
        )

    # -- what the status page shows -----------------------------------------------------------

    @cached_property
    def queue_probe(self) -> AmqpQueueProbe:
        """Queue depths over a connection of the app's pool (given back after each reading)."""
        return AmqpQueueProbe(lambda: self.app.pool.acquire(block=True, timeout=5), self.settings)

    def overview(self) -> Overview:
        return collect_overview(self.kube, self.queue_probe, self.settings, datetime.now(UTC))

    def task_view(self, task_id: str) -> TaskView | None:
        return read_task(
            self.kube,
            task_id,
            dispatcher_name=self.settings.dispatcher_name,
            max_run_seconds=self.settings.job_max_run_seconds,
        )
