"""Intake: what to do with one raw task message, decided without any I/O.

A valid body becomes `Accepted` (the task and where to reply), a valid cancel request
(``{"cancel": "<task id>"}``) `CancelRequested`; anything else becomes `Rejected`,
carrying the error response to publish at once — with the task's `id` whenever the message had a
string id, even an invalid one, so the sender can tell which task it was. Nothing here raises on
bad input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.config import Settings
from dispatcher.errors import InvalidTaskError
from dispatcher.messages.response import Response, error_response
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Cancel, Task, TaskPolicy, parse_message, peek_task_id


@dataclass(frozen=True)
class Accepted:
    task: Task
    route: ReplyRoute


@dataclass(frozen=True)
class CancelRequested:
    cancel: Cancel
    route: ReplyRoute


@dataclass(frozen=True)
class Rejected:
    response: Response
    route: ReplyRoute
    message_id: str


def route_from_properties(properties: Mapping[str, Any]) -> ReplyRoute:
    """Only string values count: a producer's odd property types must not crash intake."""
    correlation_id = properties.get("correlation_id")
    reply_to = properties.get("reply_to")
    return ReplyRoute(
        correlation_id=correlation_id
        if isinstance(correlation_id, str) and correlation_id
        else None,
        reply_to=reply_to if isinstance(reply_to, str) and reply_to else None,
    )


def check_reply_to(route: ReplyRoute, allowed: tuple[str, ...]) -> None:
    """Raise InvalidTaskError unless the route's reply_to (when set) starts with an allowed
    prefix: a producer must not make the dispatcher publish into any queue it likes."""
    if route.reply_to is None or route.reply_to.startswith(allowed):
        return
    shown = ", ".join(f"{p}*" for p in allowed) or "none"
    raise InvalidTaskError(
        "reply_to",
        f"{route.reply_to[:80]!r} is not a reply queue this dispatcher answers to (allowed: "
        f"{shown}); this answer went to the response exchange",
    )


Outcome = Accepted | CancelRequested | Rejected


def deliveries(headers: Mapping[str, Any] | None) -> int:
    """Which delivery of the message this is: 1, or 1 + the `x-delivery-count` header a quorum
    queue sets on a message it delivers again (classic queues count nothing: always 1)."""
    count = (headers or {}).get("x-delivery-count")
    return 1 + count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def take(
    body: bytes | str,
    properties: Mapping[str, Any],
    settings: Settings,
    *,
    delivery: int = 1,
    control: bool = False,
) -> Outcome:
    """What to do with one message: `delivery` is which delivery of it this is (`deliveries`),
    `control` whether it came on the control queue (which takes cancel requests only)."""
    route = route_from_properties(properties)
    try:
        check_reply_to(route, settings.reply_to_prefixes)
    except InvalidTaskError as exc:  # answered, but never where the producer pointed
        return _rejected(exc, body, ReplyRoute(correlation_id=route.correlation_id))
    try:
        check_deliveries(delivery, settings.max_deliveries)
        message = parse_message(body, TaskPolicy.from_settings(settings))
        if control and not isinstance(message, Cancel):
            raise InvalidTaskError(
                "cancel",
                f'the control queue takes cancel requests only ({{"cancel": "<task id>"}}); '
                f"send tasks with routing key {settings.task_routing_key!r}",
                message.id,
            )
    except InvalidTaskError as exc:
        return _rejected(exc, body, route)
    if isinstance(message, Cancel):
        return CancelRequested(message, route)
    return Accepted(message, route)


def check_deliveries(delivery: int, most: int) -> None:
    """A message RabbitMQ delivered `most` times is answered rather than taken once more: a
    quorum queue drops it past its delivery-limit, and nobody would ever hear of it."""
    if delivery >= most:
        raise InvalidTaskError(
            "x-delivery-count",
            f"the message was delivered {delivery} times without being acknowledged "
            f"(MAX_DELIVERIES is {most}): a worker holding it stopped or lost its connection "
            "each time. It is answered now instead of being taken again, before RabbitMQ would "
            "drop it, and was not started by this delivery",
        )


def _rejected(exc: InvalidTaskError, body: bytes | str, route: ReplyRoute) -> Rejected:
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    digest = hashlib.sha256(raw).hexdigest()[:16]
    # An invalid id is still echoed (when it is a short string) so the sender can match it;
    # of an oversized body only the head is read for it.
    response = error_response(exc, exc.task_id or peek_task_id(raw))
    return Rejected(response, route, f"invalid.{digest}")
