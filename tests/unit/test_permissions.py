"""The broker users' permissions: a producer reaches the task exchange and its own reply queues,
never the internal queue; the dispatcher reaches its own names only (the real broker enforces
them in tests/e2e/test_security.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from dataclasses import asdict, astuple
from pathlib import Path

import pytest

from dispatcher.amqp.permissions import definitions, dispatcher, password_hash, producer
from dispatcher.config import Settings

SETTINGS = Settings.from_env({"PROGRESS_EXCHANGE_NAME": "progress"})


def allows(pattern: str, name: str) -> bool:
    return re.fullmatch(pattern, name) is not None


@pytest.mark.parametrize(
    ("right", "name", "allowed"),
    [
        ("write", "tasks", True),  # publish a task
        ("write", "dispatcher.internal", False),  # forge an internal message
        ("write", "amq.default", False),  # publish to any queue by its name
        ("write", "responses", False),  # forge a response
        ("configure", "amq.gen-Xy", True),  # its own reply queue
        ("configure", "tasks", False),
        ("configure", "dispatcher.internal", False),
        ("read", "responses", True),
        ("read", "progress", True),
        ("read", "amq.gen-Xy", True),
        ("read", "tasks", False),  # take tasks meant for the dispatcher
        ("read", "dispatcher.internal", False),
    ],
)
def test_a_producer_may_send_tasks_and_read_answers_only(
    right: str, name: str, allowed: bool
) -> None:
    assert allows(getattr(producer(SETTINGS), right), name) is allowed


def test_the_operators_reply_prefix_is_a_producers_own_too() -> None:
    granted = producer(Settings.from_env({"REPLY_TO_PREFIXES": "amq.gen-,team-a.replies."}))

    for right in ("configure", "write", "read"):
        assert allows(getattr(granted, right), "team-a.replies.42")
        assert not allows(getattr(granted, right), "team-b.replies.42")


@pytest.mark.parametrize(
    ("right", "name", "allowed"),
    [
        ("configure", "dispatcher.internal", True),
        ("write", "dispatcher.internal", True),
        ("read", "dispatcher.internal", True),
        ("write", "amq.default", True),  # responses to reply queues
        ("write", "responses", True),
        ("configure", "other-app.queue", False),
        ("read", "other-app.queue", False),
        ("read", "amq.gen-Xy", False),  # a producer's replies are not its to read
    ],
)
def test_the_dispatcher_reaches_its_own_names_only(right: str, name: str, allowed: bool) -> None:
    assert allows(getattr(dispatcher(SETTINGS), right), name) is allowed


def test_names_are_matched_literally() -> None:
    granted = producer(Settings.from_env({"TASK_EXCHANGE_NAME": "team.tasks"}))

    assert allows(granted.write, "team.tasks")
    assert not allows(granted.write, "teamXtasks")


def test_the_local_stack_grants_what_the_code_derives() -> None:
    script = (Path(__file__).parents[2] / "stack" / "up.sh").read_text()
    granted = {}
    for kind in ("DISPATCHER", "PRODUCER"):
        line = next(x for x in script.splitlines() if x.startswith(f"{kind}_PERMISSIONS=("))
        granted[kind] = shlex.split(line.split("=(", 1)[1].rstrip(")"))
    defaults = Settings.from_env({})

    assert granted["DISPATCHER"] == list(astuple(dispatcher(defaults)))
    assert granted["PRODUCER"] == list(astuple(producer(defaults)))


def test_the_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = bytes.fromhex("908d c60a".replace(" ", ""))
    expected = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()

    assert password_hash("test12", salt) == expected
    assert password_hash("test12") != password_hash("test12")  # a fresh salt each time


def test_the_definitions_create_both_users_with_their_permissions_and_no_password() -> None:
    settings = Settings.from_env({})

    document = definitions(
        settings,
        dispatcher_user="disp",
        dispatcher_password="disp-secret",
        producer_user="billing",
        producer_password="billing-secret",
    )

    assert [u["name"] for u in document["users"]] == ["disp", "billing"]
    assert all(u["tags"] == [] for u in document["users"])  # no administrator
    assert "secret" not in json.dumps(document)
    assert document["permissions"] == [
        {"user": "disp", "vhost": "/", **asdict(dispatcher(settings))},
        {"user": "billing", "vhost": "/", **asdict(producer(settings))},
    ]
