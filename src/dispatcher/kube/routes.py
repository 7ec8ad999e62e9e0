"""Where a Job's response goes, kept on the Job: the route of the task that created it, and the
routes of the identical tasks that joined it later (a producer's retry, `dispatcher submit
--wait` run again), each answered once.

The first route is two annotations (correlation id, reply queue); the others are one annotation
holding a JSON list, appended to only, so every route keeps its place (and its `message_id`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from dispatcher.kube.conventions import (
    CORRELATION_ID_ANNOTATION,
    MORE_ROUTES_ANNOTATION,
    REPLY_TO_ANNOTATION,
)
from dispatcher.messages.route import ReplyRoute

MAX_ROUTES: Final = 20
"""At most this many routes per Job; a further joining task is not answered on its own route."""


def route_annotations(route: ReplyRoute) -> dict[str, str]:
    """The first route, as the Job is created with it."""
    annotations = {}
    if route.correlation_id is not None:
        annotations[CORRELATION_ID_ANNOTATION] = route.correlation_id
    if route.reply_to is not None:
        annotations[REPLY_TO_ANNOTATION] = route.reply_to
    return annotations


def routes_of(annotations: Mapping[str, str]) -> list[ReplyRoute]:
    """Every route of the Job, the first one first; an unreadable list counts as empty."""
    first = ReplyRoute(
        correlation_id=annotations.get(CORRELATION_ID_ANNOTATION),
        reply_to=annotations.get(REPLY_TO_ANNOTATION),
    )
    return [first, *_more(annotations)]


def with_route(annotations: Mapping[str, str], route: ReplyRoute) -> dict[str, str] | None:
    """The annotations to patch so that `route` is answered too; None when it already is, or
    when the Job has MAX_ROUTES routes."""
    routes = routes_of(annotations)
    if route in routes or len(routes) >= MAX_ROUTES:
        return None
    more = [*_more(annotations), route]
    encoded = [{"correlation_id": r.correlation_id, "reply_to": r.reply_to} for r in more]
    return {MORE_ROUTES_ANNOTATION: json.dumps(encoded, separators=(",", ":"))}


def _more(annotations: Mapping[str, str]) -> list[ReplyRoute]:
    try:
        items = json.loads(annotations.get(MORE_ROUTES_ANNOTATION) or "[]")
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [
        ReplyRoute(_text(item.get("correlation_id")), _text(item.get("reply_to")))
        for item in items
        if isinstance(item, dict)
    ]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
