"""One list+watch loop per kind over all of this dispatcher's objects.

Split as kopf does it: `run` reconnects forever with backoff; `_list_then_watch` lists page by
page, hands every object to the handler as its page arrives (this is how Jobs that ended while
the dispatcher was down are found), then watches from the list's resourceVersion and re-lists
on 410 Gone; a stream cut by a transient error is resumed from the last resourceVersion seen (a
few times, then it lists again); each watch request is one bounded stream with bookmarks. A
stream that ends quietly only means "watch again" — never that a Job failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dispatcher.errors import KubeError, TransientKubeError
from dispatcher.kube.lister import Lister

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]
"""Called with (event type, object): ADDED/MODIFIED/DELETED, or LISTED for the initial list."""

MAX_BACKOFF_SECONDS = 30.0
RESUME_ATTEMPTS = 3
"""A watch stream cut by a transient error is resumed from the last resourceVersion this many
times in a row (after RESUME_DELAY_SECONDS, doubling) before the watcher lists everything again."""
RESUME_DELAY_SECONDS = 1.0
RESTART_REASONS = ("resumed", "error", "expired")
"""What `on_restart` is told: a cut stream resumed, a failure (listed again after a backoff), or
a resourceVersion too old (listed again at once)."""


class WatchExpiredError(Exception):
    """The resourceVersion is too old (410 Gone): list again."""


class HandlerFailedError(Exception):
    """The handler could not take an event: list again (with backoff)."""


class Watcher:
    """Keeps one list+watch of `kind` objects matching `selector` running until `stop()`."""

    def __init__(
        self,
        kube: Lister,
        kind: str,
        selector: str,
        handler: Handler,
        *,
        timeout_seconds: int = 240,
        on_restart: Callable[[str], None] | None = None,
        on_listed: Callable[[set[str]], None] | None = None,
        fields: str = "",
    ) -> None:
        self._kube = kube
        self.kind = kind
        self._selector = selector
        self._fields = fields
        self._handler = handler
        self._timeout = timeout_seconds
        self._on_restart = on_restart or (lambda reason: None)
        self._on_listed = on_listed or (lambda uids: None)  # the uids the list held
        self._stopping = threading.Event()
        self._failures = 0
        self._handler_failed = False
        self._version = ""
        self.established = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Reconnect forever, with exponential backoff after failures."""
        while not self._stopping.is_set():
            try:
                self._list_then_watch()
            except WatchExpiredError:
                log.info("watch of %s expired (410 Gone); listing again", self.kind)
                self._restart("expired")
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any single failure
                self.established.clear()
                self._failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**self._failures)
                log.warning(
                    "watch of %s failed: %s; retrying in %.1f s (attempt %d)",
                    self.kind,
                    exc,
                    delay,
                    self._failures,
                )
                self._restart("error")
                self._stopping.wait(delay)

    def _restart(self, reason: str) -> None:
        self._on_restart(reason)

    def _list_then_watch(self) -> None:
        self._handler_failed = False
        present: set[str] = set()

        def listed(obj: dict[str, Any]) -> None:
            present.add(obj.get("metadata", {}).get("uid", ""))
            self._handle("LISTED", obj)

        version = self._kube.list_each(self.kind, self._selector, self._fields, listed)
        log.debug("listed %d %s at resourceVersion %s", len(present), self.kind, version)
        self._on_listed(present)
        if not self._handler_failed:
            self._failures = 0  # all is well again: the next failure backs off from the start
        self.established.set()
        self._version, broken = version, 0
        while not self._stopping.is_set() and not self._handler_failed:
            try:
                self._watch_once()
                broken = 0
            except TransientKubeError as exc:  # a cut connection: resume, do not re-list
                broken += 1
                if broken > RESUME_ATTEMPTS:
                    raise
                delay = RESUME_DELAY_SECONDS * 2 ** (broken - 1)
                log.warning(
                    "watch of %s broke: %s; resuming from resourceVersion %s in %.1f s",
                    self.kind,
                    exc,
                    self._version,
                    delay,
                )
                self._restart("resumed")
                self._stopping.wait(delay)
        if self._handler_failed:
            raise HandlerFailedError("an event could not be handled")

    def _watch_once(self) -> None:
        """One watch request from `self._version`, which follows every event received."""
        stream = self._kube.watch_objects(
            self.kind, self._selector, self._version, self._timeout, self._fields
        )
        for event in stream:
            if self._stopping.is_set():
                break
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                raise _error_event(obj)
            if kind != "BOOKMARK":
                self._handle(str(kind), obj)
                if self._handler_failed:
                    break
            self._version = obj.get("metadata", {}).get("resourceVersion") or self._version

    def _handle(self, event_type: str, obj: dict[str, Any]) -> None:
        """A failing handler (for example: the broker is away) neither stops the other objects
        nor loses this one: the watch lists again afterwards, which offers every object anew."""
        try:
            self._handler(event_type, obj)
        except Exception:
            name = obj.get("metadata", {}).get("name")
            log.exception("handling %s %s %s failed; will list again", event_type, self.kind, name)
            self._handler_failed = True


def _error_event(status: dict[str, Any]) -> Exception:
    if status.get("code") == 410:
        return WatchExpiredError(status.get("message", "410 Gone"))
    return KubeError(f"watch error: {status.get('message')} (code {status.get('code')})")
