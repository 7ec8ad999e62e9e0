"""Watcher: list, then watch from the list's resourceVersion, and keep at it until stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher.errors import KubeError, TransientKubeError
from dispatcher.kube.watcher import Watcher

pytestmark = pytest.mark.timeout(10)

SELECTOR = "app.kubernetes.io/managed-by=k8s-job-dispatcher,job-dispatcher.io/instance=dispatcher"
STOP = "stop"
"""A watch script step: the test is done, stop the watcher (before the next step)."""

Event = dict[str, Any]
ListAnswer = tuple[list[dict[str, Any]], str] | KubeError
WatchStep = Event | KubeError | str


def job(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": "dispatcher",
            "uid": f"0b6f1b0e-5d1a-4c7e-9d8b-{name.encode().hex():0>12}",
            "resourceVersion": version,
            "creationTimestamp": "2025-01-10T10:00:00Z",
        },
        "spec": {"backoffLimit": 0, "completions": 1},
        "status": {"active": 1},
    }


def event(kind: str, name: str, version: str) -> Event:
    return {"type": kind, "object": job(name, version)}


def bookmark(version: str) -> Event:
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": "Job",
            "apiVersion": "batch/v1",
            "metadata": {"resourceVersion": version},
        },
    }


def error(code: int, message: str) -> Event:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return {"type": "ERROR", "object": {**status, "message": message, "code": code}}


GONE = error(410, "too old resource version: 100 (48213)")


class ScriptedLister:
    """The `Lister` port answering from a script; stops the watcher when the watches run out."""

    def __init__(self, lists: list[ListAnswer], watches: list[list[WatchStep]]) -> None:
        self._lists = deque(lists)
        self._watches = deque(watches)
        self.watcher: Watcher | None = None
        self.watched_from: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self.lists = 0

    def list_objects(
        self, kind: str, selector: str, fields: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        assert self._lists, "unexpected list request"
        answer = self._lists.popleft()
        if isinstance(answer, KubeError):
            raise answer
        return answer

    def list_each(
        self, kind: str, selector: str, fields: str, handle: Callable[[dict[str, Any]], None]
    ) -> str:
        items, version = self.list_objects(kind, selector, fields)
        for item in items:
            handle(item)
        return version

    def watch_objects(
        self,
        kind: str,
        selector: str,
        resource_version: str,
        timeout_seconds: int,
        fields: str = "",
    ) -> Iterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        self.requests.append((kind, selector, timeout_seconds))
        steps: list[WatchStep] = self._watches.popleft() if self._watches else [STOP]
        return self._stream(steps)

    def _stream(self, steps: list[WatchStep]) -> Iterator[dict[str, Any]]:
        for step in steps:
            if step == STOP:
                assert self.watcher is not None
                self.watcher.stop()
            elif isinstance(step, KubeError):
                raise step
            else:
                assert isinstance(step, dict)
                yield step


class Recorder:
    """The watch handler: records what it was given, and whether the watch was established."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.seen: list[tuple[str, str]] = []
        self.established_when_seen: list[bool] = []
        self.watcher: Watcher | None = None
        self._fail_on = fail_on

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        assert self.watcher is not None
        name = obj["metadata"]["name"]
        self.seen.append((event_type, name))
        self.established_when_seen.append(self.watcher.established.is_set())
        if name == self._fail_on:
            self._fail_on = None  # fails once, like a publish while the broker is away
            raise ValueError(f"handler broke on {name}")


def watcher_for(
    lister: ScriptedLister, handler: Recorder | None = None
) -> tuple[Watcher, Recorder, list[str]]:
    handler = handler or Recorder()
    restarts: list[str] = []
    watcher = Watcher(
        lister, "jobs", SELECTOR, handler, timeout_seconds=240, on_restart=restarts.append
    )
    lister.watcher = handler.watcher = watcher
    return watcher, handler, restarts


def test_lists_then_watches_from_the_list_resource_version() -> None:
    lister = ScriptedLister(
        [([job("t-1", "90"), job("t-2", "95")], "100")],
        [[event("ADDED", "t-3", "101"), event("MODIFIED", "t-1", "102")], [STOP]],
    )
    watcher, handler, restarts = watcher_for(lister)

    watcher.run()

    assert handler.seen == [
        ("LISTED", "t-1"),
        ("LISTED", "t-2"),
        ("ADDED", "t-3"),
        ("MODIFIED", "t-1"),
    ]
    assert lister.watched_from == ["100", "102"]
    assert lister.requests[0] == ("jobs", SELECTOR, 240)
    assert restarts == []


def test_established_is_set_once_the_first_list_is_handed_over() -> None:
    lister = ScriptedLister([([job("t-1", "90")], "100")], [[event("ADDED", "t-2", "101")]])
    watcher, handler, _ = watcher_for(lister)
    assert not watcher.established.is_set()

    watcher.run()

    assert handler.established_when_seen == [False, True]  # LISTED t-1, then ADDED t-2
    assert watcher.established.is_set()


def test_stream_that_ends_quietly_is_watched_again_from_the_last_version() -> None:
    lister = ScriptedLister(
        [([], "100")],
        [[event("ADDED", "t-1", "101")], [], [event("DELETED", "t-1", "103")]],
    )
    watcher, handler, restarts = watcher_for(lister)

    watcher.run()

    assert handler.seen == [("ADDED", "t-1"), ("DELETED", "t-1")]
    assert lister.watched_from == ["100", "101", "101", "103"]
    assert lister.lists == 1
    assert restarts == []


def test_bookmark_advances_the_version_without_reaching_the_handler() -> None:
    lister = ScriptedLister(
        [([], "100")], [[event("ADDED", "t-1", "101"), bookmark("150")], [STOP]]
    )
    watcher, handler, _ = watcher_for(lister)

    watcher.run()

    assert handler.seen == [("ADDED", "t-1")]
    assert lister.watched_from == ["100", "150"]


def test_expired_version_lists_again_at_once() -> None:
    lister = ScriptedLister(
        [([job("t-1", "90")], "100"), ([job("t-1", "190"), job("t-2", "195")], "200")],
        [[event("MODIFIED", "t-1", "101"), GONE], [STOP]],
    )
    watcher, handler, restarts = watcher_for(lister)

    started = time.monotonic()
    watcher.run()

    assert time.monotonic() - started < 0.5  # no backoff
    assert handler.seen == [
        ("LISTED", "t-1"),
        ("MODIFIED", "t-1"),
        ("LISTED", "t-1"),
        ("LISTED", "t-2"),
    ]
    assert lister.watched_from == ["100", "200"]
    assert restarts == ["expired"]


def test_an_event_the_handler_cannot_take_is_offered_again_by_a_new_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = ScriptedLister(
        [([job("t-1", "90")], "100"), ([job("t-1", "90"), job("t-2", "101")], "101")],
        [[event("ADDED", "t-2", "101"), event("ADDED", "t-3", "102")], [STOP]],
    )
    watcher, handler, restarts = watcher_for(lister, Recorder(fail_on="t-2"))

    with caplog.at_level(logging.ERROR, logger="dispatcher.kube.watcher"):
        watcher.run()  # waits out one real 1 s backoff

    assert handler.seen == [
        ("LISTED", "t-1"),
        ("ADDED", "t-2"),  # fails: the stream is left and the watch lists again
        ("LISTED", "t-1"),
        ("LISTED", "t-2"),
    ]
    assert lister.watched_from == ["100", "101"]
    assert restarts == ["error"]
    assert "handling ADDED jobs t-2 failed; will list again" in caplog.messages


def test_failed_request_backs_off_then_lists_again(caplog: pytest.LogCaptureFixture) -> None:
    refused = TransientKubeError("list jobs: ConnectError: [Errno 111] Connection refused")
    lister = ScriptedLister([refused, ([job("t-1", "90")], "100")], [[STOP]])
    watcher, handler, restarts = watcher_for(lister)

    with caplog.at_level(logging.WARNING, logger="dispatcher.kube.watcher"):
        watcher.run()  # waits out one real 1 s backoff

    assert handler.seen == [("LISTED", "t-1")]
    assert lister.watched_from == ["100"]
    assert restarts == ["error"]
    assert watcher.established.is_set()
    assert caplog.messages == [
        f"watch of jobs failed: {refused}; retrying in 1.0 s (attempt 1)",
    ]


def test_error_event_backs_off_and_stop_cuts_the_backoff_short() -> None:
    lister = ScriptedLister([([], "100")], [[error(500, "etcdserver: request timed out")]])
    restarts: list[str] = []
    restarted = threading.Event()

    def on_restart(reason: str) -> None:
        restarts.append(reason)
        restarted.set()

    watcher = Watcher(lister, "jobs", SELECTOR, Recorder(), on_restart=on_restart)
    lister.watcher = watcher
    thread = threading.Thread(target=watcher.run, daemon=True)

    thread.start()
    assert restarted.wait(5)
    assert not watcher.established.is_set()  # not ready while backing off
    watcher.stop()
    thread.join(0.5)

    assert not thread.is_alive()
    assert restarts == ["error"]
    assert lister.lists == 1


def test_backoff_starts_over_after_the_watch_recovered(caplog: pytest.LogCaptureFixture) -> None:
    refused = TransientKubeError("list jobs: ConnectError: [Errno 111] Connection refused")
    reset = KubeError("watch error: etcdserver: request timed out (code 500)")
    lister = ScriptedLister(
        [refused, ([], "100")],
        [[event("ADDED", "t-1", "101")], [STOP, reset]],  # recovered; much later, one blip
    )
    watcher, _, _ = watcher_for(lister)

    with caplog.at_level(logging.WARNING, logger="dispatcher.kube.watcher"):
        watcher.run()  # waits out one real 1 s backoff

    assert caplog.messages[-1] == f"watch of jobs failed: {reset}; retrying in 1.0 s (attempt 1)"


@pytest.fixture
def quick_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dispatcher.kube.watcher.RESUME_DELAY_SECONDS", 0.01)


@pytest.mark.usefixtures("quick_resume")
def test_a_cut_stream_is_resumed_from_the_last_event_without_listing_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reset = TransientKubeError("watch jobs: RemoteProtocolError: peer closed connection")
    lister = ScriptedLister(
        [([], "100")],
        [[event("ADDED", "t-1", "101"), reset], [reset], [event("MODIFIED", "t-1", "103")]],
    )
    watcher, handler, restarts = watcher_for(lister)

    with caplog.at_level(logging.WARNING, logger="dispatcher.kube.watcher"):
        watcher.run()

    assert handler.seen == [("ADDED", "t-1"), ("MODIFIED", "t-1")]
    assert lister.watched_from == ["100", "101", "101", "103"]
    assert lister.lists == 1
    assert restarts == ["resumed", "resumed"]
    assert watcher.established.is_set()
    assert caplog.messages[0] == (
        f"watch of jobs broke: {reset}; resuming from resourceVersion 101 in 0.0 s"
    )


@pytest.mark.usefixtures("quick_resume")
def test_a_stream_that_keeps_breaking_is_listed_again() -> None:
    reset = TransientKubeError("watch jobs: RemoteProtocolError: peer closed connection")
    lister = ScriptedLister(
        [([], "100"), ([job("t-1", "150")], "200")],
        [[reset], [reset], [reset], [reset], [STOP]],
    )
    watcher, handler, restarts = watcher_for(lister)

    watcher.run()  # waits out one real 1 s backoff

    assert lister.lists == 2
    assert lister.watched_from == ["100", "100", "100", "100", "200"]
    assert restarts == ["resumed", "resumed", "resumed", "error"]
    assert handler.seen == [("LISTED", "t-1")]
