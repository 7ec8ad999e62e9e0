"""Declare the dispatcher's exchanges and queues once at start-up, and say in one line what
stands in the way.

RabbitMQ refuses to declare a queue that exists with other arguments (a classic queue declared
as quorum, say) by closing the channel with PRECONDITION_FAILED, and a declaration the broker
user may not make with ACCESS_REFUSED. Inside Celery either would repeat on every reconnect;
here it stops start-up with a `ConfigError`: the queue, both values and the setting that chose
ours, or the user and what to grant it.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from amqp.exceptions import AccessRefused, PreconditionFailed
from kombu import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from dispatcher.amqp.topology import (
    delayed_sink,
    internal_queue,
    our_queues,
    progress_exchange,
    queue_arguments,
)
from dispatcher.config import Settings
from dispatcher.errors import ConfigError

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' in "
    r"vhost '[^']*': received (?P<ours>.+?) but current is (?P<theirs>.+)$"
)


def declare_all(connection: Any, settings: Settings) -> None:
    """Declare every exchange and queue of ours on `connection` (a kombu Connection). Raises
    ConfigError when one exists with other arguments; broker errors of any other kind pass."""
    declared: list[Exchange | Queue] = []
    progress = progress_exchange(settings)
    if progress is not None:
        declared.append(progress)
    declared += our_queues(settings)
    if settings.queue_type == "quorum":
        declared.append(delayed_sink())
    for entity in declared:
        channel = connection.channel()
        try:
            entity.bind(channel).declare()
        except PreconditionFailed as exc:
            raise mismatch(str(exc), settings) from None
        except AccessRefused as exc:
            raise ConfigError(
                "AMQP_USER",
                f"broker user '{settings.amqp_user}' may not declare {_what(entity)}: grant it "
                f"what `dispatcher permissions` prints (RabbitMQ: {exc})",
            ) from None
        finally:
            _close_quietly(channel)
    if settings.queue_type == "quorum":
        declare_delayed_delivery(connection, settings)


def declare_delayed_delivery(connection: Any, settings: Settings) -> None:
    """Celery's delayed delivery, declared as its worker declares it (kombu's own functions),
    and the internal queue bound to it — before any bootstep schedules a delayed task."""
    try:
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        bind_queue_to_native_delayed_delivery_exchange(connection, internal_queue(settings))
    except AccessRefused as exc:
        raise ConfigError(
            "AMQP_USER",
            f"broker user '{settings.amqp_user}' may not declare Celery's delayed delivery "
            f"(celery_delayed_*): grant it what `dispatcher permissions` prints (RabbitMQ: {exc})",
        ) from None


def _what(entity: Exchange | Queue) -> str:
    kind = "queue" if isinstance(entity, Queue) else "exchange"
    return f"{kind} '{entity.name}'"


def mismatch(reply: str, settings: Settings) -> ConfigError:
    """The one line for the broker's PRECONDITION_FAILED reply to one of our declarations."""
    found = _INEQUIVALENT.search(reply)
    if found is None:
        return ConfigError("QUEUE_TYPE", f"RabbitMQ refused a declaration: {reply}")
    arg, kind, name = found["arg"], found["kind"], found["name"]
    ours, theirs = _shown(found["ours"]), _shown(found["theirs"])
    setting = _setting_of(arg, kind, name, settings)
    if arg == "x-queue-type":
        advice = (
            f"set QUEUE_TYPE={theirs.strip(chr(39))}, or move its messages elsewhere and "
            "delete it so it is declared anew"
        )
    else:
        advice = "declare it as the dispatcher does, or delete it so it is declared anew"
    return ConfigError(
        setting,
        f"{kind} '{name}' exists with {arg} {theirs}, but the dispatcher declares it with "
        f"{ours} ({_expected(settings, kind, name)}): {advice}",
    )


def _setting_of(arg: str, kind: str, name: str, settings: Settings) -> str:
    if kind == "exchange" and arg == "type":
        if name == settings.task_exchange_name:
            return "TASK_EXCHANGE_TYPE"
        if name == settings.response_exchange_name:
            return "RESPONSE_EXCHANGE_TYPE"
    return "QUEUE_TYPE"


def _expected(settings: Settings, kind: str, name: str) -> str:
    if kind == "exchange" and name == settings.celery_queue_name:
        return f"QUEUE_TYPE={settings.queue_type} sends delayed tasks through a topic exchange"
    if kind == "exchange":
        return "its *_EXCHANGE_TYPE setting"
    return f"QUEUE_TYPE={queue_arguments(settings)['x-queue-type']}"


def _shown(value: str) -> str:
    """RabbitMQ writes an absent argument as `none` and longstr values in quotes."""
    value = value.strip()
    return "none" if value == "none" else value


def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):  # the broker closed it already: that is how it refuses
        channel.close()
