"""Back-pressure: how many more tasks may become Jobs now (MAX_ACTIVE_JOBS).

The count is per installation: every replica watches all of the installation's Jobs, so each
sees the same active Jobs (created and not yet ended, running or waiting for room). On top of
those, a replica counts the tasks it handed to `dispatcher.submit` whose Job the watch has not
shown yet, so a burst cannot slip past the limit in the moment between hand-over and creation.
A hand-over that never becomes a Job (a joined duplicate, an error answer, a submit that ran on
another replica and failed) stops counting when its submit ends here or after `pending_ttl`.

With several replicas each may hand over up to its prefetch before the others' Jobs appear, so
the limit can be passed by at most replicas x TASK_PREFETCH for a moment; it is a bound on load,
not an exact quota (Kubernetes ResourceQuota or Kueue are the exact ones).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PENDING_TTL_SECONDS = 120.0
"""A hand-over that produced no Job seen by the watch stops counting after this long."""


class Admission:
    """Thread-safe: the consumer asks, the watch and the submit task report."""

    def __init__(
        self,
        limit: int,
        active: Callable[[], int | None],
        *,
        pending_ttl: float = PENDING_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._active = active
        self._pending_ttl = pending_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}  # Job name -> when it was handed over

    def room(self) -> int:
        """How many more tasks may be handed over now (a large number when unlimited; none while
        the active Jobs are not known yet, e.g. before the Job watch has listed them)."""
        if self.limit <= 0:
            return 1 << 30
        active = self._active()
        if active is None:
            return 0
        return max(0, self.limit - active - self.pending())

    def pending(self) -> int:
        """Tasks handed over by this process whose Job is not seen yet."""
        now = self._clock()
        with self._lock:
            expired = [name for name, at in self._pending.items() if now - at > self._pending_ttl]
            for name in expired:
                del self._pending[name]
            return len(self._pending)

    def handed_over(self, job_name: str) -> None:
        with self._lock:
            self._pending[job_name] = self._clock()

    def settled(self, job_name: str) -> None:
        """The watch showed the Job, or the submit ended without one: stop counting it here."""
        with self._lock:
            self._pending.pop(job_name, None)
