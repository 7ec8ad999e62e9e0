"""The client's own rules, without a broker: what it refuses to send, and how it sorts what
comes back on a handle's private queue (answers by correlation id, events once each)."""

from __future__ import annotations

import asyncio
import json

import pytest

from dispatcher.client import AsyncClient, Client
from dispatcher.client.inbox import Inbox, cancel_correlation_id, checked_cancel, checked_task
from dispatcher.config import Settings
from dispatcher.errors import ClientError, InvalidTaskError
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.task import Cancel, Resources, Task, TaskPolicy

TASK = {"id": "t-1", "image": "busybox:1.36", "volume_mount_path": "/work", "cmd": ["true"]}
WHEN = "2026-12-05T04:00:00Z"


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def event(state: str, **extra: object) -> bytes:
    return body({"id": "t-1", "state": state, "time": WHEN, **extra})


def test_a_dict_and_a_task_are_checked_into_the_same_task() -> None:
    typed = Task(
        id="t-1",
        image="busybox:1.36",
        volume_mount_path="/work",
        cmd=("true",),
        env={"B": "2", "A": "1"},
        resources=Resources(memory="256Mi"),
    )

    assert checked_task(typed, TaskPolicy()) == typed
    assert checked_task(typed.to_json(), TaskPolicy()) == typed


@pytest.mark.parametrize(
    ("extra", "policy", "message"),
    [
        pytest.param(
            {"timeout_seconds": 7200},
            TaskPolicy(max_run_seconds=600),
            r"^timeout_seconds: must be a whole number of seconds from 1 to 600 "
            r"\(JOB_MAX_RUN_SECONDS\), got 7200$",
            id="timeout",
        ),
        pytest.param(
            {"resources": {"memory": "8Gi"}},
            TaskPolicy(),
            r"^resources\.memory: must be at most 4Gi \(TASK_MAX_MEMORY\), got '8Gi'$",
            id="memory",
        ),
        pytest.param(
            {"env": {"TASK_ID": "x"}}, TaskPolicy(), r"^env\.TASK_ID: ", id="reserved-env"
        ),
        pytest.param(
            {"image": "docker.io/evil:1"},
            TaskPolicy(allowed_image_prefixes=("registry.example.com/",)),
            r"^image: ",
            id="image-prefix",
        ),
    ],
)
def test_a_task_outside_the_operators_limits_is_refused_with_the_workers_words(
    extra: dict[str, object], policy: TaskPolicy, message: str
) -> None:
    with pytest.raises(InvalidTaskError, match=message):
        checked_task({**TASK, **extra}, policy)


def test_the_client_checks_with_the_limits_of_its_settings() -> None:
    settings = Settings.from_env({"TASK_MAX_CPU": "500m"})

    with pytest.raises(InvalidTaskError, match=r"^resources\.cpu: must be at most 500m"):
        Client(settings).task({**TASK, "resources": {"cpu": "1"}})
    with pytest.raises(InvalidTaskError, match=r"^resources\.cpu: must be at most 500m"):
        AsyncClient(settings).task({**TASK, "resources": {"cpu": "1"}})


@pytest.mark.parametrize("task_id", ["Bad Id", "", "x" * 64])
def test_a_cancel_for_an_id_that_cannot_be_a_task_is_refused(task_id: str) -> None:
    with pytest.raises(InvalidTaskError, match=r"^cancel: "):
        checked_cancel(task_id)


def test_a_cancel_request_and_its_correlation_id() -> None:
    assert checked_cancel("t-1") == Cancel("t-1")
    assert cancel_correlation_id("c-7") == "c-7.cancel"


def test_an_async_client_that_is_not_connected_says_so() -> None:
    client = AsyncClient(Settings.from_env({}))

    with pytest.raises(ClientError, match="not connected"):
        asyncio.run(client.submit(TASK))


def test_the_answer_and_the_cancels_answer_are_kept_apart_by_correlation_id() -> None:
    inbox = Inbox("t-1")
    answer = {"id": "t-1", "output": "started\n", "error": "cancelled"}

    # The worker sends one answer to both routes, with one message id.
    assert inbox.put(body(answer), correlation_id="c-7", message_id="t-1.u1", progress=False)
    assert inbox.put(body(answer), correlation_id="c-7.cancel", message_id="t-1.u1", progress=False)

    assert inbox.take_response("c-7.cancel") == Response.from_json(answer)
    assert inbox.take_response("c-7.cancel") is None
    assert inbox.take_response("c-7") == Response.from_json(answer)


def test_a_repeated_answer_is_taken_once_and_a_later_run_of_the_same_task_again() -> None:
    inbox = Inbox("t-1")
    first = body({"id": "t-1", "output": "one\n", "exit": 0})
    later = body({"id": "t-1", "output": "two\n", "exit": 0})

    assert inbox.put(first, correlation_id="c", message_id="t-1.u1", progress=False)
    assert not inbox.put(first, correlation_id="c", message_id="t-1.u1", progress=False)
    assert inbox.put(later, correlation_id="c", message_id="t-1.u2", progress=False)

    assert inbox.take_response("c") == Response(id="t-1", output="one\n", exit=0)
    assert inbox.take_response("c") == Response(id="t-1", output="two\n", exit=0)
    assert inbox.take_response("c") is None


def test_progress_events_come_in_order_once_each_and_only_for_the_task() -> None:
    inbox = Inbox("t-1")
    arrivals = [
        (event("queued"), "t-1.u.queued"),
        (event("running", node="n1"), "t-1.u.running"),
        (event("running", node="n1"), "t-1.u.running"),  # a second worker replica
        (body({"id": "t-2", "state": "running", "time": WHEN}), "t-2.u.running"),
        (event("succeeded", exit=0), None),
        (event("succeeded", exit=0), None),
    ]
    kept = [
        inbox.put(raw, correlation_id="c", message_id=message_id, progress=True)
        for raw, message_id in arrivals
    ]

    taken = []
    while (item := inbox.take_event()) is not None:
        taken.append(item)
    assert kept == [True, True, False, False, True, False]
    assert taken == [
        ProgressEvent("t-1", "queued", WHEN),
        ProgressEvent("t-1", "running", WHEN, node="n1"),
        ProgressEvent("t-1", "succeeded", WHEN, exit=0),
    ]


@pytest.mark.parametrize(
    ("raw", "progress"),
    [
        pytest.param(b"not json", False, id="response-not-json"),
        pytest.param(b"[1, 2]", False, id="response-not-an-object"),
        pytest.param(body({"id": "t-1", "state": "exploded", "time": WHEN}), True, id="state"),
        pytest.param(b"\xff\xfe", True, id="event-not-utf8"),
    ],
)
def test_an_unreadable_message_is_dropped_not_raised(raw: bytes, progress: bool) -> None:
    inbox = Inbox("t-1")

    assert not inbox.put(raw, correlation_id="c", message_id=None, progress=progress)
    assert inbox.take_response("c") is None
    assert inbox.take_event() is None
