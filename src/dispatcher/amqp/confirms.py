"""The consumer's own answers, published with pipelined confirms on a connection of their own.

The consumer answers an invalid message at once, and acks the message only once the broker has
confirmed the answer. Waiting for each confirm in turn costs a round trip per message; here the
answers go out without waiting, on a channel in confirm mode, and each answer's `done` is called
with True when the broker confirms it — False when the broker refuses it, the connection breaks,
or no confirm comes within CONFIRM_TIMEOUT_SECONDS — and the consumer then acks (or puts back)
the message it answered. Everything runs on the consumer's thread: `poll` reads the confirms
that arrived without ever blocking, called when the consumer's event loop sees this connection
readable, after each publish, and by a timer.

An answer addressed to a `reply_to` queue that no longer exists is returned by the broker
(`mandatory`) before its confirm; it then goes to the response exchange, and its `done` waits for
that second confirm — an answer is never dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from kombu import Producer

from dispatcher.amqp.publisher import log_reply_queue_gone, response_message
from dispatcher.config import Settings
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS = 20.0

Done = Callable[[bool], None]
"""Called once per answer: True when the broker confirmed it, False when it did not."""


class Answers(Protocol):
    """The port the consumer answers invalid messages through (`PipelinedAnswers`)."""

    def publish(
        self, response: Response, route: ReplyRoute, message_id: str, done: Done
    ) -> None: ...

    def pending(self) -> int: ...

    def poll(self) -> None: ...

    def close(self, wait: float = 5.0) -> None: ...


AnswersFactory = Callable[..., Answers]
"""Called as ``(connect, settings, watch=…, unwatch=…)``, like `PipelinedAnswers`."""


@dataclass(frozen=True)
class _Answer:
    response: Response
    route: ReplyRoute
    message_id: str
    done: Done
    to_reply_queue: bool  # published to route.reply_to (mandatory), not to the exchange
    sent: float


class PipelinedAnswers:
    """Not thread-safe: used only from the consumer's thread."""

    def __init__(
        self,
        connect: Callable[[], Any],
        settings: Settings,
        *,
        watch: Callable[[int], None] | None = None,
        unwatch: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect  # a kombu Connection, not yet connected, without confirm_publish
        self._settings = settings
        self._watch = watch or (lambda fd: None)
        self._unwatch = unwatch or (lambda fd: None)
        self._clock = clock
        self._connection: Any = None
        self._producer: Producer | None = None
        self._fd: int | None = None
        self._seq = 0
        self._pending: dict[int, _Answer] = {}  # by publish sequence number, oldest first
        self._returned: list[tuple[str, str]] = []  # (reply queue, message_id) sent back

    def pending(self) -> int:
        """Answers published and not yet confirmed."""
        return len(self._pending)

    def publish(self, response: Response, route: ReplyRoute, message_id: str, done: Done) -> None:
        """Send `response` to the route (its reply queue, else the response exchange) without
        waiting; `done` follows once the broker has answered."""
        answer = _Answer(response, route, message_id, done, bool(route.reply_to), self._clock())
        try:
            self._send(answer)
        except Exception as exc:  # noqa: BLE001 - the connection broke: put the message back
            log.warning("could not publish an answer: %s; the message will be read again", exc)
            self._fail_all(exc)
            _call(done, False)
            return
        self.poll()

    def poll(self) -> None:
        """Handle the confirms that have arrived (never waits); give up on answers that were
        not confirmed in time (the connection is then opened anew)."""
        if self._connection is None:
            return
        try:
            while True:
                self._connection.connection.drain_events(timeout=0)
        except TimeoutError:  # nothing more to read now
            pass
        except Exception as exc:  # noqa: BLE001 - a broken connection fails what is pending
            log.warning("the connection for answers broke: %s", exc)
            self._fail_all(exc)
            return
        oldest = next(iter(self._pending.values()), None)
        if oldest is not None and self._clock() - oldest.sent > CONFIRM_TIMEOUT_SECONDS:
            log.warning("the broker confirmed no answer for %.0f s", CONFIRM_TIMEOUT_SECONDS)
            self._fail_all(TimeoutError("no confirm"))

    def close(self, wait: float = 5.0) -> None:
        """Wait up to `wait` seconds for the pending confirms, then close the connection (what
        is still unconfirmed is put back: its messages are read again)."""
        deadline = self._clock() + wait
        while self._pending and self._connection is not None and self._clock() < deadline:
            try:
                self._connection.connection.drain_events(timeout=0.1)
            except TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001
                self._fail_all(exc)
        self._fail_all(ConnectionError("closed"))

    # -- plumbing ---------------------------------------------------------------------------------

    def _send(self, answer: _Answer) -> None:
        producer = self._open()
        body, properties = response_message(answer.response, answer.route, answer.message_id)
        if answer.to_reply_queue:
            exchange, key = "", str(answer.route.reply_to)
        else:
            exchange = self._settings.response_exchange_name
            key = self._settings.response_routing_key
        producer.publish(
            body, exchange=exchange, routing_key=key, mandatory=answer.to_reply_queue, **properties
        )
        self._seq += 1
        self._pending[self._seq] = answer

    def _open(self) -> Producer:
        if self._producer is not None:
            return self._producer
        connection = self._connect()
        connection.connect()
        channel = connection.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._connection, self._seq = connection, 0
        self._producer = Producer(channel, auto_declare=False)
        self._fd = connection.connection.sock.fileno()
        self._watch(self._fd)
        return self._producer

    def _confirmed(self, tag: int, multiple: bool) -> list[_Answer]:
        tags = [seq for seq in self._pending if seq <= tag] if multiple else [tag]
        return [self._pending.pop(seq) for seq in tags if seq in self._pending]

    def _on_ack(self, tag: int, multiple: bool) -> None:
        for answer in self._confirmed(tag, multiple):
            returned = (str(answer.route.reply_to), answer.message_id)
            if answer.to_reply_queue and returned in self._returned:
                self._returned.remove(returned)
                log_reply_queue_gone(answer.response, answer.route, self._settings)
                self._send(replace(answer, to_reply_queue=False, sent=self._clock()))
            else:
                _call(answer.done, True)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for answer in self._confirmed(tag, multiple):
            log.warning("the broker refused the answer for %s", answer.response.id)
            _call(answer.done, False)

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        properties = getattr(message, "properties", None) or {}
        self._returned.append((routing_key, str(properties.get("message_id", ""))))

    def _fail_all(self, exc: BaseException) -> None:
        pending, self._pending, self._returned = list(self._pending.values()), {}, []
        if self._fd is not None:
            self._unwatch(self._fd)
        connection, self._connection, self._producer, self._fd = self._connection, None, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception as close_error:  # noqa: BLE001 - it is broken already
                log.debug("closing the connection for answers: %s", close_error)
        for answer in pending:
            _call(answer.done, False)


def _call(done: Done, ok: bool) -> None:
    """A message that cannot be acked or put back (its channel closed) is redelivered by the
    broker anyway: nothing to do but log."""
    try:
        done(ok)
    except Exception as exc:  # noqa: BLE001
        log.debug("could not settle an answered message: %s", exc)
