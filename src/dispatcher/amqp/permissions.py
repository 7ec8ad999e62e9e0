"""The two kinds of broker users, as RabbitMQ permissions derived from the settings.

RabbitMQ grants each user, per vhost, three regular expressions over exchange and queue names:
*configure* (declare, delete), *write* (publish to an exchange, bind a queue) and *read*
(consume from a queue, bind from an exchange). Publishing through the default exchange needs
write on ``amq.default``, which would reach every queue; producers never get it.

- **producer**: publishes to the task exchange only; declares, binds and reads its own reply
  queues (``amq.gen-*`` and the operator's REPLY_TO_PREFIXES); reads the responses (their
  exchange and queue) and binds to the progress exchange. It cannot publish into the internal
  queue, nor to another queue by name.
- **dispatcher**: declares and uses its exchanges and queues, publishes responses to the reply
  queues through the default exchange, and alone owns its internal queue.

`dispatcher permissions` prints both as ``rabbitmqctl set_permissions`` commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatcher.config import Settings

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


def dispatcher(settings: Settings) -> Permissions:
    own = _names(
        settings.task_exchange_name,
        settings.task_queue_name,
        settings.response_exchange_name,
        settings.response_queue_name,
        settings.progress_exchange_name,
        settings.celery_queue_name,  # the internal queue, and Celery's exchange of that name
    )
    return Permissions(
        configure=_any_of(own),
        write=_any_of([*own, "amq\\.default"]),
        read=_any_of(own),
    )
