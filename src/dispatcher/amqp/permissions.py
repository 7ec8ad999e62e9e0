"""The two kinds of broker users, as RabbitMQ permissions derived from the settings.

RabbitMQ grants each user, per vhost, three regular expressions over exchange and queue names:
*configure* (declare, delete), *write* (publish to an exchange, bind a queue) and *read*
(consume from a queue, bind from an exchange). Publishing through the default exchange needs
write on ``amq.default``, which would reach every queue; producers never get it.

- **producer**: publishes to the task exchange only; declares, binds and reads its own reply
  queues (``amq.gen-*`` and the operator's REPLY_TO_PREFIXES); reads the responses (their
  exchange and queue) and binds to the progress exchange. It cannot publish into the internal
  queue, nor to another queue by name.
- **dispatcher**: declares and uses its exchanges and queues (the control queue among them),
  publishes responses to the reply queues through the default exchange, and alone owns its
  internal queue — with quorum queues also Celery's ``celery_delayed_*`` exchanges and queues,
  through which its delayed internal tasks wait.

`dispatcher permissions` prints both as ``rabbitmqctl set_permissions`` commands, or with
``--definitions`` as a RabbitMQ definitions document that creates the users too (the manifests'
broker loads it at start). Neither ever names RabbitMQ's default user ``guest`` or writes its
default password: :func:`own_user` and :func:`own_password` refuse them with a ConfigError.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from dispatcher.config import Settings
from dispatcher.errors import ConfigError

DEFAULT_USER = "guest"
"""RabbitMQ's built-in user (and password): loopback only, never one of ours."""

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"  # a pseudo-queue: needs no permission of its own


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str

    def rabbitmqctl(self, user: str, vhost: str) -> list[str]:
        """The arguments of ``rabbitmqctl`` granting these to `user` on `vhost`."""
        return ["set_permissions", "-p", vhost, user, self.configure, self.write, self.read]


def _names(*names: str) -> list[str]:
    return [re.escape(name) for name in names if name]


def _any_of(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    return "^(" + "|".join(unique) + ")$" if unique else "^$"


def _reply_queues(settings: Settings) -> list[str]:
    """Queues a producer may own: those the allowed reply_to prefixes name (direct reply-to is
    no queue)."""
    prefixes = settings.reply_to_prefixes
    return [re.escape(p) + ".*" for p in prefixes if not p.startswith(DIRECT_REPLY_TO)]


def producer(settings: Settings) -> Permissions:
    replies = _reply_queues(settings)
    return Permissions(
        configure=_any_of(replies),
        write=_any_of(_names(settings.task_exchange_name) + replies),
        read=_any_of(
            _names(
                settings.response_exchange_name,
                settings.response_queue_name,
                settings.progress_exchange_name,
            )
            + replies
        ),
    )


CELERY_DELAYED = r"celery_delayed_(\d+|delivery|unroutable)"
"""Celery's delayed delivery on quorum queues: its level exchanges and queues, and the exchange
that hands a due task back to the internal queue's exchange."""


def dispatcher(settings: Settings) -> Permissions:
    own = _names(
        settings.task_exchange_name,
        settings.task_queue_name,
        settings.control_queue_name if settings.has_control_queue else "",
        settings.response_exchange_name,
        settings.response_queue_name,
        settings.progress_exchange_name,
        settings.celery_queue_name,  # the internal queue, and Celery's exchange of that name
    )
    if settings.queue_type == "quorum":
        own.append(CELERY_DELAYED)
    return Permissions(
        configure=_any_of(own),
        write=_any_of([*own, "amq\\.default"]),
        read=_any_of(own),
    )


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64 of a 4-byte salt and the SHA-256 of
    the salt and the password."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def own_user(source: str, name: str) -> str:
    """`name`, unless it is empty or RabbitMQ's default user; `source` names where it came from."""
    if not name:
        raise ConfigError(source, "a broker user name is needed")
    if name == DEFAULT_USER:
        raise ConfigError(
            source, f"'{DEFAULT_USER}' is RabbitMQ's default user; name a user of its own"
        )
    return name


def own_password(variable: str, password: str | None, whose: str) -> str:
    """The password from `variable`, which must be set and not RabbitMQ's default."""
    if not password or password == DEFAULT_USER:
        raise ConfigError(
            variable,
            f"{whose} password is needed for --definitions (set it; the default "
            f"'{DEFAULT_USER}' is never written)",
        )
    return password


def definitions(
    settings: Settings,
    *,
    dispatcher_user: str,
    dispatcher_password: str,
    producer_user: str,
    producer_password: str,
) -> dict[str, Any]:
    """A RabbitMQ definitions document (`load_definitions`, `rabbitmqctl import_definitions`)
    with the two kinds of users — the dispatcher's and one producer — and their permissions on
    AMQP_VHOST; passwords only as salted hashes."""
    vhost = settings.amqp_vhost
    users = (
        (dispatcher_user, dispatcher_password, dispatcher(settings)),
        (producer_user, producer_password, producer(settings)),
    )
    return {
        "users": [
            {
                "name": user,
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
            for user, password, _ in users
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": user, "vhost": vhost, **asdict(granted)} for user, _, granted in users
        ],
    }
