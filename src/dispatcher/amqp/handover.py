"""Hand-over of valid tasks to Celery from a thread of its own, settled on the consumer's thread.

Sending `dispatcher.submit` (or `dispatcher.cancel`) waits for the broker's confirm. Done on the
consumer's thread, that wait holds up everything else the thread does — it is also the thread
that hands Celery's own messages to the worker threads — so a burst of tasks starved the very
threads that create their Jobs. Here a sender thread sends, in order, and reports each result
back through a pipe the consumer's event loop watches: the consumer then acks the message (or
puts it back when the send failed). The message is still acked only after its confirm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

Send = Callable[[], None]
"""Publishes one Celery task message and returns once the broker confirmed it (or raises)."""
Done = Callable[[bool], None]
"""Called on the consumer's thread: True when the send was confirmed, False when it failed."""

_STOP = None


class HandOver:
    """`submit` and `settle` belong to the consumer's thread; one sender thread sends."""

    def __init__(
        self,
        *,
        watch: Callable[[int], None] | None = None,
        unwatch: Callable[[int], None] | None = None,
    ) -> None:
        self._todo: queue.SimpleQueue[tuple[Send, Done] | None] = queue.SimpleQueue()
        self._results: deque[tuple[Done, bool]] = deque()
        self._outstanding = 0  # submitted and not yet settled (consumer's thread only)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._run, name="task-hand-over", daemon=True)
        self._unwatch = unwatch or (lambda fd: None)
        self._closed = False
        self._thread.start()
        if watch is not None:  # the consumer's event loop calls `settle` when results wait
            watch(self._wake_read)

    def pending(self) -> int:
        return self._outstanding

    def submit(self, send: Send, done: Done) -> None:
        if self._closed:  # nothing sends any more: the message is put back, read again
            done(False)
            return
        self._outstanding += 1
        self._todo.put((send, done))

    def settle(self) -> None:
        """Call each finished send's `done` (on the consumer's thread). Never blocks."""
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while self._results:
            done, ok = self._results.popleft()
            self._outstanding -= 1
            try:
                done(ok)
            except Exception as exc:  # noqa: BLE001 - the channel closed: redelivered anyway
                log.debug("could not settle a handed-over message: %s", exc)

    def close(self, wait: float = 5.0) -> None:
        """Let the sender finish what it has (up to `wait` s), settle it, stop the thread."""
        if self._closed:
            return
        self._todo.put(_STOP)
        self._thread.join(wait)
        self.settle()
        self._closed = True
        self._unwatch(self._wake_read)
        if not self._thread.is_alive():  # else the sender still needs its end of the pipe
            for fd in (self._wake_read, self._wake_write):
                os.close(fd)

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            send, done = item
            try:
                send()
                ok = True
            except Exception:  # the broker went away: the message is put back, read again
                log.exception("could not hand a task message over; it will be read again")
                ok = False
            self._results.append((done, ok))
            with contextlib.suppress(BlockingIOError):  # a full pipe wakes the consumer anyway
                os.write(self._wake_write, b".")
