"""Seals on internal messages: the dispatcher runs only the internal tasks it sent itself.

Every message a worker puts on its internal Celery queue (submit, finalize, cancel, and their
retries) carries, in the header `dispatcher_seal`, an HMAC-SHA256 of the task's name and its
JSON arguments under a key only the dispatcher's workers hold. A message whose seal is missing
or wrong — someone with write access to the internal queue forging a `dispatcher.finalize` that
would publish a fake answer — is dropped with a warning and counted, never run.

The key is INTERNAL_SIGNING_KEY, or else derived from the dispatcher's own broker password (which
producers, holding a user of their own, do not know). Several comma-separated keys verify and
the first signs: add the new key first, roll the workers, then drop the old one. A replayed
message carries a valid seal; running it again is harmless, as every internal task may run
twice (submit joins the Job of its task id, finalize claims the Job, cancel is idempotent).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task

SEAL_HEADER = "dispatcher_seal"
_DERIVATION = b"job-dispatcher internal message seal v1"


class Sealer:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a sealer needs at least one key")
        self._keys = tuple(keys)

    @classmethod
    def from_secrets(cls, signing_keys: Sequence[str], broker_password: str) -> Sealer:
        """The configured keys, or one derived from the broker password when none is set."""
        if signing_keys:
            return cls([key.encode() for key in signing_keys])
        derived = hmac.new(_DERIVATION, broker_password.encode(), hashlib.sha256).digest()
        return cls([derived])

    def seal(self, name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> str:
        return _mac(self._keys[0], _canonical(name, args, kwargs))

    def verify(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        seal: object,
    ) -> bool:
        if not isinstance(seal, str):
            return False
        text = _canonical(name, args, kwargs)
        return any(hmac.compare_digest(_mac(key, text), seal) for key in self._keys)


def _canonical(name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> bytes:
    """The arguments as JSON carries them: what was sent and what arrives agree."""
    document = [name, list(args or ()), dict(kwargs or {})]
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode()


def _mac(key: bytes, text: bytes) -> str:
    return hmac.new(key, text, hashlib.sha256).hexdigest()


class SealedTask(Task):
    """Every publish of our tasks — a first send or a retry (`Task.retry` sends through
    `apply_async` too) — carries a fresh seal."""

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        headers = dict(options.pop("headers", None) or {})
        headers[SEAL_HEADER] = self.app.dispatcher.sealer.seal(self.name, args, kwargs)
        return super().apply_async(args, kwargs, headers=headers, **options)

    def sealed(self) -> bool:
        """The message being run carries a valid seal."""
        request = self.request
        seal = (request.headers or {}).get(SEAL_HEADER)
        verified: bool = self.app.dispatcher.sealer.verify(
            self.name, request.args, request.kwargs, seal
        )
        return verified
