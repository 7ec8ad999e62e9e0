"""Routes kept on a Job: the first from its annotations, the joined ones from a JSON list."""

from __future__ import annotations

import pytest

from dispatcher.kube.conventions import (
    CORRELATION_ID_ANNOTATION,
    MORE_ROUTES_ANNOTATION,
    REPLY_TO_ANNOTATION,
)
from dispatcher.kube.routes import route_annotations, routes_of, with_route
from dispatcher.messages.route import ReplyRoute

FIRST = ReplyRoute("c-1", "amq.gen-1")


def test_the_first_route_round_trips_through_the_annotations() -> None:
    annotations = route_annotations(FIRST)

    assert annotations == {CORRELATION_ID_ANNOTATION: "c-1", REPLY_TO_ANNOTATION: "amq.gen-1"}
    assert routes_of(annotations) == [FIRST]
    assert routes_of({}) == [ReplyRoute()]  # no route: the response exchange


def test_joined_routes_are_appended_once_in_order() -> None:
    annotations = route_annotations(FIRST)
    for route in (ReplyRoute("c-2"), ReplyRoute(None, "q-3"), ReplyRoute("c-2"), FIRST):
        more = with_route(annotations, route)
        if more is not None:
            annotations |= more

    assert routes_of(annotations) == [FIRST, ReplyRoute("c-2"), ReplyRoute(None, "q-3")]


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        '{"a": 1}',
        '[1, "x", null]',
        '[{"correlation_id": 5, "reply_to": ["q"]}]',
    ],
)
def test_an_unreadable_route_list_never_breaks_the_answer(garbage: str) -> None:
    annotations = {**route_annotations(FIRST), MORE_ROUTES_ANNOTATION: garbage}

    routes = routes_of(annotations)

    assert routes[0] == FIRST
    assert all(r == ReplyRoute() for r in routes[1:])
