"""What the sync and the asyncio client share, with no I/O of its own: the checks made before a
message is sent, and the sorting of what arrives on a handle's private queue.

A task is checked with :func:`~dispatcher.messages.task.parse_task` and the operator limits of
the caller's settings, a cancel request with :func:`~dispatcher.messages.task.parse_message`:
the worker's own rules, so a message the worker would refuse fails here with the same
:class:`~dispatcher.errors.InvalidTaskError` and is never sent.

An :class:`Inbox` keeps the responses by ``correlation_id`` (the task's own answer and, under
``<correlation id>.cancel``, the answer to its cancel request) and the task's progress events in
order of arrival. A repeat (the same ``message_id``: responses and events are at least once) and
a body it cannot read are dropped, so a caller sees each answer and each state change once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config import Settings
from dispatcher.messages.progress import ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.task import Cancel, Task, TaskPolicy, parse_message, parse_task

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/json"
CONFIRM_SECONDS: Final = 60.0  # the longest a publish waits for the broker's confirm
CANCEL_SUFFIX: Final = ".cancel"


def checked_task(task: Task | Mapping[str, Any], policy: TaskPolicy) -> Task:
    """`task` as the worker would parse it under `policy`; InvalidTaskError otherwise."""
    document = task.to_json() if isinstance(task, Task) else dict(task)
    return parse_task(json.dumps(document), policy)


def checked_cancel(task_id: str) -> Cancel:
    """The request to cancel `task_id`; InvalidTaskError (field ``cancel``) for a bad id."""
    request = parse_message(json.dumps(Cancel(task_id).to_json()))
    assert isinstance(request, Cancel)  # a document with a "cancel" key parses as one
    return request


def no_task_exchange(name: str) -> str:
    """The error of a task sent before any worker declared the task exchange."""
    return f"the task exchange '{name}' does not exist: no dispatcher worker has declared it yet"


def no_progress_exchange(name: str) -> str:
    """The error of a handle whose progress exchange no worker has declared."""
    return (
        f"the progress exchange '{name}' does not exist: no dispatcher worker with "
        "PROGRESS_EXCHANGE_NAME set has declared it yet"
    )


def unconfirmed() -> str:
    """The error of a publish the broker did not confirm in time."""
    return (
        f"RabbitMQ did not confirm the message within {CONFIRM_SECONDS:.0f} s (is it blocking "
        "publishers for a resource alarm, or has the task queue no leader?)"
    )


def unroutable(exchange: str, routing_key: str, settings: Settings) -> str:
    """The error of a message the broker returned: no queue is bound for its routing key."""
    setting = (
        "CONTROL_ROUTING_KEY"
        if routing_key == settings.control_routing_key and settings.has_control_queue
        else "TASK_ROUTING_KEY"
    )
    return (
        f"no queue takes messages routed '{routing_key}' on the exchange '{exchange}': the "
        f"broker returned the message unsent (is {setting} the worker's?)"
    )


def routing_key(document: Mapping[str, Any], settings: Settings) -> str:
    """Cancel requests go to the control queue (never behind a backlog of tasks), when the task
    exchange routes by key; tasks to the task queue."""
    if "cancel" in document and settings.has_control_queue:
        return settings.control_routing_key
    return settings.task_routing_key


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def cancel_correlation_id(correlation_id: str) -> str:
    """The correlation id of a cancel sent for the task that has `correlation_id`: its answer
    is then told apart from the task's own answer on the same reply queue."""
    return f"{correlation_id}{CANCEL_SUFFIX}"


def encode(document: Mapping[str, Any]) -> bytes:
    """The body of a task or cancel message: JSON, UTF-8."""
    return json.dumps(document, ensure_ascii=False).encode()


class Inbox:
    """The messages one handle received: responses by correlation id, progress events of its
    task in order. Not thread-safe; one per handle."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._responses: dict[str, deque[Response]] = {}
        self._events: deque[ProgressEvent] = deque()
        self._seen: set[str] = set()

    def put(
        self,
        body: bytes,
        *,
        correlation_id: str | None,
        message_id: str | None,
        progress: bool,
    ) -> bool:
        """File one message (`progress`: it came from the progress exchange); False when it was
        dropped as a repeat, as unreadable, or as an event of another task."""
        try:
            item = ProgressEvent.decode(body) if progress else Response.decode(body)
        except ValueError as exc:
            log.warning("dropped an unreadable message for task %s: %s", self.task_id, exc)
            return False
        if isinstance(item, ProgressEvent) and item.id != self.task_id:
            return False
        key = _repeat_key(item, correlation_id, message_id)
        if key in self._seen:
            return False
        if key is not None:
            self._seen.add(key)
        if isinstance(item, ProgressEvent):
            self._events.append(item)
        else:
            self._responses.setdefault(correlation_id or "", deque()).append(item)
        return True

    def take_response(self, correlation_id: str) -> Response | None:
        """The oldest response not yet taken with `correlation_id`, or None."""
        waiting = self._responses.get(correlation_id)
        return waiting.popleft() if waiting else None

    def take_event(self) -> ProgressEvent | None:
        """The oldest progress event not yet taken, or None."""
        return self._events.popleft() if self._events else None


def _repeat_key(
    item: Response | ProgressEvent, correlation_id: str | None, message_id: str | None
) -> str | None:
    """What a repeat of `item` has in common with it. One answer may come twice on purpose
    (the task's route and its cancel's route share the message id), so a response counts as a
    repeat only with the same correlation id too; an event without a message id (not sent by
    a worker) by its state and time."""
    if isinstance(item, ProgressEvent):
        return f"event:{message_id or f'{item.state}@{item.time}'}"
    return None if message_id is None else f"response:{correlation_id}:{message_id}"
