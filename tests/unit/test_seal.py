"""Seals on internal messages: made and checked over the arguments as JSON carries them."""

from __future__ import annotations

import json

import pytest

from dispatcher.config import Settings
from dispatcher.errors import ConfigError
from dispatcher.worker.seal import Sealer

ARGS = [{"id": "t-1", "image": "localhost/testbox:1.0", "env": {"A": "é"}}, {"reply_to": None}]


def test_a_seal_survives_the_trip_through_json() -> None:
    sealer = Sealer([b"k" * 32])
    seal = sealer.seal("dispatcher.submit", tuple(ARGS), {"job": {"b": 1, "a": 2}})
    args, kwargs = json.loads(json.dumps([ARGS, {"job": {"a": 2, "b": 1}}]))

    assert sealer.verify("dispatcher.submit", args, kwargs, seal)


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        pytest.param("dispatcher.finalize", ARGS, {}, id="other-task"),
        pytest.param("dispatcher.submit", [{**ARGS[0], "image": "x"}, ARGS[1]], {}, id="args"),
        pytest.param("dispatcher.submit", ARGS, {"pod": {}}, id="kwargs"),
    ],
)
def test_a_seal_covers_the_name_and_every_argument(
    name: str, args: list[object], kwargs: dict[str, object]
) -> None:
    sealer = Sealer([b"k" * 32])
    seal = sealer.seal("dispatcher.submit", ARGS, {})

    assert not sealer.verify(name, args, kwargs, seal)


@pytest.mark.parametrize("seal", [None, 42, "", "zz"])
def test_a_missing_or_malformed_seal_does_not_verify(seal: object) -> None:
    assert not Sealer([b"k" * 32]).verify("dispatcher.submit", ARGS, {}, seal)


def test_keys_rotate_the_first_seals_and_any_verifies() -> None:
    old, new = b"old-key-0123456789", b"new-key-0123456789"
    sealed_before = Sealer([old]).seal("dispatcher.submit", ARGS, {})
    rotating = Sealer([new, old])

    assert rotating.verify("dispatcher.submit", ARGS, {}, sealed_before)
    assert Sealer([new]).verify(
        "dispatcher.submit", ARGS, {}, rotating.seal("dispatcher.submit", ARGS, {})
    )
    assert not Sealer([new]).verify("dispatcher.submit", ARGS, {}, sealed_before)


def test_without_a_key_it_is_derived_from_the_broker_password() -> None:
    one = Sealer.from_secrets((), "password-one")
    seal = one.seal("dispatcher.submit", ARGS, {})

    assert Sealer.from_secrets((), "password-one").verify("dispatcher.submit", ARGS, {}, seal)
    assert not Sealer.from_secrets((), "password-two").verify("dispatcher.submit", ARGS, {}, seal)
    configured = Sealer.from_secrets(("configured-key-0123",), "password-one")
    assert not configured.verify("dispatcher.submit", ARGS, {}, seal)


def test_a_short_key_is_refused_without_being_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"INTERNAL_SIGNING_KEY": "long-enough-key-0123,short-key"})

    assert str(caught.value).startswith("INTERNAL_SIGNING_KEY: key 2 must be at least 16")
    assert "short-key" not in str(caught.value)


def test_the_keys_never_show_in_the_settings_repr() -> None:
    settings = Settings.from_env({"INTERNAL_SIGNING_KEY": "secret-key-0123456789"})

    assert settings.internal_signing_key == ("secret-key-0123456789",)
    assert "secret-key" not in repr(settings)
