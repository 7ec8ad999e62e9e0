"""Worker bootsteps: the shared watches, the health and metrics server, and the status page.

The watches — over the dispatcher's Jobs, over their Pods, over the namespace's FailedCreate
Events of Jobs, and with Kueue over the namespace's Workloads — run in daemon threads for the
life of the worker (independent of broker reconnects) and feed the `Reactor`, which queues
`dispatcher.finalize` when a Job ends, its pod is stuck, its pod cannot be created, or Kueue can
never admit it; a sweep thread asks the reactor every few seconds for the Jobs that waited their
queue timeout for room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from dispatcher.amqp.topology import FINALIZE_TASK
from dispatcher.core import tombstones
from dispatcher.core.reactor import Reactor
from dispatcher.core.request import FinalizeRequest
from dispatcher.kube.conventions import label_selector
from dispatcher.kube.watcher import RESTART_REASONS, Handler, Watcher
from dispatcher.worker.health import HealthServer
from dispatcher.worker.runtime import Runtime
from dispatcher.worker.statuspage import StatusPage

log = logging.getLogger(__name__)

FAILED_CREATE_EVENTS = "involvedObject.kind=Job,reason=FailedCreate"
# While the broker is away, queueing a finalize keeps trying for about two minutes; after that
# the watch re-lists (kube.watcher) and the reactor asks again.
SCHEDULE_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0.5,
    "interval_step": 1.0,
    "interval_max": 5.0,
}


SWEEP_SECONDS = 5.0
TOMBSTONE_SWEEP_SECONDS = 600.0
PODS_FIRST_SECONDS = 30.0


class JobWatchStep(bootsteps.StartStopStep):
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._sweeping = threading.Event()

    def start(self, parent: Any) -> None:
        runtime = parent.app.dispatcher
        settings = runtime.settings
        finalize = parent.app.tasks[FINALIZE_TASK]

        def schedule(request: FinalizeRequest) -> None:
            log.info(
                "finalize Job %s in %.0f s (%s)",
                request.job_name,
                request.delay_seconds,
                request.why,
            )
            finalize.apply_async(
                args=[request.job_name, request.job_uid],
                kwargs=request.task_kwargs(),
                countdown=request.delay_seconds or None,
                retry_policy=SCHEDULE_RETRY_POLICY,
            )

        reactor = Reactor(
            schedule,
            stuck_grace_seconds=settings.image_pull_grace_seconds,
            queue_timeout_seconds=settings.queue_timeout_seconds,
            on_job_seen=runtime.admission.settled,
            on_started=runtime.progress.running if runtime.progress.enabled else None,
            on_retrying=runtime.progress.retrying if runtime.progress.enabled else None,
            on_evicted=lambda name, reason, message: runtime.metrics.kueue_evictions.labels(
                reason
            ).inc(),
        )
        runtime.reactor = reactor
        runtime.metrics.track_jobs(reactor)
        selector = label_selector(settings.dispatcher_name)
        restarts = runtime.metrics.watch_restarts
        watches: list[tuple[str, str, str, Handler, Callable[[set[str]], None] | None]] = [
            # the pods first: see _run_after
            ("pods", selector, "", reactor.on_pod, None),
            ("events", "", FAILED_CREATE_EVENTS, reactor.on_event, None),
            ("jobs", selector, "", reactor.on_job, reactor.jobs_listed),
        ]
        if settings.kueue_local_queue:  # Kueue's Workloads of the namespace: see on_workload
            watches.append(("workloads", "", "", reactor.on_workload, reactor.workloads_listed))
        for kind, labels, fields, handler, on_listed in watches:

            def count_restart(reason: str, kind: str = kind) -> None:
                restarts.labels(kind, reason).inc()

            for reason in RESTART_REASONS:  # served at 0 from the start
                restarts.labels(kind, reason)

            watcher = Watcher(
                runtime.kube,
                kind,
                labels,
                handler,
                timeout_seconds=settings.watch_timeout_seconds,
                on_restart=count_restart,
                on_listed=on_listed,
                fields=fields,
            )
            runtime.watchers.append(watcher)
            first = runtime.watchers[0]
            threading.Thread(
                target=_run_after,
                args=(watcher, None if watcher is first else first),
                name=f"watch-{kind}",
                daemon=True,
            ).start()
        self._sweeping.clear()
        threading.Thread(
            target=self._sweep, args=(reactor, runtime), name="queue-sweep", daemon=True
        ).start()

    def _sweep(self, reactor: Reactor, runtime: Runtime) -> None:
        """Every few seconds: answer the Jobs that waited their queue timeout for room; every
        few minutes: delete the tombstones of cancelled tasks that have expired."""
        next_tombstones = time.monotonic() + TOMBSTONE_SWEEP_SECONDS / 10
        while not self._sweeping.wait(SWEEP_SECONDS):
            try:
                reactor.sweep(time.time())
                if time.monotonic() >= next_tombstones:
                    next_tombstones = time.monotonic() + TOMBSTONE_SWEEP_SECONDS
                    tombstones.sweep(runtime.kube, runtime.settings)
            except Exception:
                log.exception("sweep failed; will try again")

    def stop(self, parent: Any) -> None:
        self._sweeping.set()
        for watcher in parent.app.dispatcher.watchers:
            watcher.stop()


def _run_after(watcher: Watcher, first: Watcher | None) -> None:
    """Run `watcher` once `first` has listed (or PODS_FIRST_SECONDS passed): the Jobs that ended
    while no worker ran are then handed to finalize with their pods, which it need not list."""
    if first is not None:
        first.established.wait(PODS_FIRST_SECONDS)
    watcher.run()


class HealthStep(bootsteps.StartStopStep):
    """Serves /healthz, /readyz and /metrics on HEALTH_PORT (not started when it is 0)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: HealthServer | None = None

    def start(self, parent: Any) -> None:
        runtime = parent.app.dispatcher
        if runtime.settings.health_port:
            self.server = HealthServer(
                runtime.settings.health_port, runtime.not_ready, runtime.metrics.registry
            )
            self.server.start()

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.stop()


class StatusStep(bootsteps.StartStopStep):
    """Serves the read-only status page on 127.0.0.1:STATUS_PORT (not started when it is 0)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: StatusPage | None = None

    def start(self, parent: Any) -> None:
        runtime: Runtime = parent.app.dispatcher
        port = runtime.settings.status_port
        if not port:
            return
        try:
            self.server = StatusPage(port, runtime.overview, runtime.task_view)
        except OSError as exc:  # an aid for operators: the worker runs on without it
            log.error("status page not started: cannot listen on 127.0.0.1:%d: %s", port, exc)
            return
        self.server.start()

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.stop()
