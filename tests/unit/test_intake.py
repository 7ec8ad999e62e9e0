"""Intake: a raw task message becomes an accepted task or an error response, never an exception."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.core.intake import Accepted, Rejected, take
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task

SETTINGS = Settings.from_env({})
VALID = {"id": "t-1", "image": "localhost/testbox:1.0", "volume_mount_path": "/work"}
RPC = {"correlation_id": "c-42", "reply_to": "amq.rabbitmq.reply-to.g1h2AA"}


def body(**changes: Any) -> bytes:
    """A valid task message with `changes` applied; a value of `...` removes the field."""
    document = {**VALID, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def rejected(raw: bytes | str, properties: dict[str, Any] | None = None, **env: str) -> Rejected:
    outcome = take(raw, properties or {}, Settings.from_env(env))
    assert isinstance(outcome, Rejected)
    return outcome


def test_valid_message_is_accepted_with_its_reply_route() -> None:
    outcome = take(body(args=["echo hi"]), RPC, SETTINGS)

    assert outcome == Accepted(
        Task(id="t-1", image="localhost/testbox:1.0", volume_mount_path="/work", args=("echo hi",)),
        ReplyRoute("c-42", "amq.rabbitmq.reply-to.g1h2AA"),
    )


@pytest.mark.parametrize(
    ("reply_to", "env"),
    [
        pytest.param("amq.gen-4fK2", {}, id="server-named"),
        pytest.param("amq.rabbitmq.reply-to.g1h2AA", {}, id="direct-reply-to"),
        pytest.param("team-a.replies.1", {"REPLY_TO_PREFIXES": "team-a.replies."}, id="operator"),
    ],
)
def test_a_reply_to_the_operator_allows_routes_the_response(
    reply_to: str, env: dict[str, str]
) -> None:
    outcome = take(body(), {"reply_to": reply_to}, Settings.from_env(env))

    assert isinstance(outcome, Accepted)
    assert outcome.route == ReplyRoute(reply_to=reply_to)


@pytest.mark.parametrize(
    ("reply_to", "env"),
    [
        pytest.param("dispatcher.internal", {}, id="the-internal-queue"),
        pytest.param("responses", {}, id="another-queue"),
        pytest.param("amq.gen", {}, id="prefix-cut-short"),
        pytest.param("amq.gen-4fK2", {"REPLY_TO_PREFIXES": "team-a.replies."}, id="not-listed"),
        pytest.param("amq.gen-4fK2", {"REPLY_TO_PREFIXES": ""}, id="none-allowed"),
    ],
)
def test_any_other_reply_to_is_answered_on_the_response_exchange(
    reply_to: str, env: dict[str, str]
) -> None:
    outcome = rejected(body(), {"reply_to": reply_to, "correlation_id": "c-9"}, **env)

    assert outcome.route == ReplyRoute(correlation_id="c-9")  # never where it pointed
    assert outcome.response.id == "t-1"
    assert outcome.response.error is not None
    assert outcome.response.error.startswith(f"reply_to: {reply_to!r} is not a reply queue")


def test_a_cancel_with_a_reply_to_not_allowed_is_refused_too() -> None:
    outcome = rejected(b'{"cancel": "t-1"}', {"reply_to": "dispatcher.internal"})

    assert outcome.route == ReplyRoute()
    assert outcome.response.error is not None
    assert "reply_to" in outcome.response.error


def test_a_hostile_reply_to_is_shown_escaped_and_cut() -> None:
    outcome = rejected(body(), {"reply_to": "evil\n\x1b[31m" + "x" * 500})

    assert outcome.response.error is not None
    assert "\n" not in outcome.response.error
    assert "\x1b" not in outcome.response.error
    assert len(outcome.response.error) < 300


@pytest.mark.parametrize(
    ("properties", "route"),
    [
        pytest.param({}, ReplyRoute(), id="none"),
        pytest.param({"correlation_id": "c-42"}, ReplyRoute("c-42"), id="correlation-only"),
        pytest.param(
            {"reply_to": "amq.gen-Xy1"}, ReplyRoute(reply_to="amq.gen-Xy1"), id="reply-to-only"
        ),
        pytest.param({"correlation_id": "", "reply_to": ""}, ReplyRoute(), id="empty-strings"),
        pytest.param({"correlation_id": 42, "reply_to": b"q"}, ReplyRoute(), id="not-strings"),
        pytest.param({"correlation_id": None, "reply_to": None}, ReplyRoute(), id="nulls"),
    ],
)
def test_only_non_empty_string_properties_route_the_response(
    properties: dict[str, Any], route: ReplyRoute
) -> None:
    outcome = take(body(), properties, SETTINGS)

    assert isinstance(outcome, Accepted)
    assert outcome.route == route


@pytest.mark.parametrize(
    ("raw", "response"),
    [
        pytest.param(
            body(image=...), Response(id="t-1", error="image: is required"), id="readable-id"
        ),
        pytest.param(
            body(args=["a", 2]),
            Response(id="t-1", error="args[1]: must be a string, got number"),
            id="bad-list-item",
        ),
        pytest.param(
            body(id=12), Response(error="id: must be a string, got number"), id="id-not-a-string"
        ),
        pytest.param(
            body(id="Upper"),
            Response(
                id="Upper",
                error="id: must be an RFC 1035 label: 1 to 63 lower-case letters, digits or '-', "
                "starting with a letter and ending with a letter or digit",
            ),
            id="invalid-id-is-still-echoed",
        ),
        pytest.param(
            b"[1]", Response(error="message: must be a JSON object, got array"), id="array"
        ),
        pytest.param(
            b'{"id": "t-1",',
            Response(
                error="message: is not valid JSON: Expecting property name enclosed in "
                "double quotes at line 1 column 14"
            ),
            id="broken-json",
        ),
        pytest.param(b"\xff\xfe", Response(error="message: is not UTF-8 text"), id="not-utf8"),
        pytest.param("\udcff", Response(error="message: is not UTF-8 text"), id="escaped-str"),
    ],
)
def test_invalid_message_is_rejected_with_an_error_response(
    raw: bytes | str, response: Response
) -> None:
    assert rejected(raw).response == response


def test_rejection_goes_back_on_the_reply_route() -> None:
    assert rejected(body(image=...), RPC).route == ReplyRoute(
        "c-42", "amq.rabbitmq.reply-to.g1h2AA"
    )


def test_rejection_message_id_is_stable_for_the_same_message() -> None:
    raw = body(image="library/Upper:1")

    first, again, as_text = rejected(raw), rejected(raw), rejected(raw.decode())

    assert re.fullmatch(r"invalid\.[0-9a-f]{16}", first.message_id)
    assert first.message_id == again.message_id == as_text.message_id
    assert rejected(body(image="library/Other:1")).message_id != first.message_id


def test_settings_bound_the_message_size() -> None:
    outcome = rejected(body(args=["x" * 300]), MAX_TASK_BYTES="256")

    assert outcome.response.id == "t-1"  # read from the head of the body
    assert outcome.response.error == (
        f"message: is {len(body(args=['x' * 300]))} bytes; the limit is 256 bytes (MAX_TASK_BYTES)"
    )


def test_settings_bound_the_image() -> None:
    outcome = rejected(body(), ALLOWED_IMAGE_PREFIXES="registry.example.com/")

    assert outcome.response == Response(
        id="t-1",
        error="image: 'localhost/testbox:1.0' is not allowed; allowed prefixes: "
        "registry.example.com/",
    )


def test_str_body_with_any_lone_surrogate_is_rejected_not_raised() -> None:
    outcome = take('{"id": "t-1", "image": "\ud800"}', RPC, SETTINGS)

    assert isinstance(outcome, Rejected)
    assert outcome.response.error == "message: is not UTF-8 text"
    assert outcome.route == ReplyRoute("c-42", "amq.rabbitmq.reply-to.g1h2AA")
