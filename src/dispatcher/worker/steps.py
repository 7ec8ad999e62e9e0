"""Worker bootstep running the shared watches: one over the dispatcher's Jobs, one over their Pods.

They run in two daemon threads for the life of the worker (independent of broker reconnects)
and feed the `Reactor`, which queues `dispatcher.finalize` when a Job ends or its pod is stuck.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from dispatcher.core.reactor import FinalizeRequest, Reactor
from dispatcher.kube.conventions import label_selector
from dispatcher.kube.watcher import Watcher
from dispatcher.worker.tasks import FINALIZE

log = logging.getLogger(__name__)


class JobWatchStep(bootsteps.StartStopStep):
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.watchers: list[Watcher] = []
        self.threads: list[threading.Thread] = []

    def start(self, parent: Any) -> None:
        runtime = parent.app.dispatcher
        settings = runtime.settings
        finalize = parent.app.tasks[FINALIZE]

        def schedule(request: FinalizeRequest) -> None:
            log.info(
                "finalize Job %s in %.0f s (%s)",
                request.job_name,
                request.delay_seconds,
                request.why,
            )
            finalize.apply_async(
                args=[request.job_name, request.job_uid], countdown=request.delay_seconds or None
            )

        reactor = Reactor(schedule, stuck_grace_seconds=settings.image_pull_grace_seconds)
        runtime.reactor = reactor
        selector = label_selector(settings.dispatcher_name)
        for kind, handler in (("jobs", reactor.on_job), ("pods", reactor.on_pod)):
            watcher = Watcher(
                runtime.kube,
                kind,
                selector,
                handler,
                timeout_seconds=settings.watch_timeout_seconds,
            )
            thread = threading.Thread(target=watcher.run, name=f"watch-{kind}", daemon=True)
            self.watchers.append(watcher)
            self.threads.append(thread)
            thread.start()
        runtime.watchers = self.watchers

    def stop(self, parent: Any) -> None:
        for watcher in self.watchers:
            watcher.stop()
