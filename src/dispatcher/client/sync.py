"""The blocking client: :class:`Client` and the :class:`TaskHandle` of each submitted task.

A :class:`Client` holds one AMQP connection (kombu) and is not thread-safe: use one per thread,
or :class:`~dispatcher.client.aio.AsyncClient` from asyncio code. Each handle has a channel and
a private, server-named, exclusive reply queue of its own; the response comes back there by
``reply_to`` + ``correlation_id`` and, with ``PROGRESS_EXCHANGE_NAME`` set, the same queue is
bound to the progress exchange with the task id. Closing the handle drops the queue; the task
goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from amqp.exceptions import AccessRefused, AMQPError, NotFound, PreconditionFailed
from kombu import Connection, Consumer, Exchange, Producer, Queue

from dispatcher.amqp.topology import control_queue, progress_exchange, task_exchange, task_queue
from dispatcher.client.inbox import (
    CONFIRM_SECONDS,
    CONTENT_TYPE,
    Inbox,
    cancel_correlation_id,
    checked_cancel,
    checked_task,
    encode,
    new_correlation_id,
    no_progress_exchange,
    no_task_exchange,
    routing_key,
    unconfirmed,
    unroutable,
)
from dispatcher.config import Settings
from dispatcher.errors import ClientError, ResponseTimeout
from dispatcher.messages.progress import FINAL_STATES, ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.task import Task, TaskPolicy

__all__ = ["Client", "TaskHandle"]

_POLL_SECONDS = 0.2


class Client:
    """Submits tasks and waits for their responses over one AMQP connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._policy = TaskPolicy.from_settings(settings)
        self._connection = Connection(
            settings.broker_url,
            ssl=settings.broker_ssl or False,
            transport_options={"confirm_publish": True},
            connect_timeout=10,
        )
        self._progress = progress_exchange(settings)
        self._declared = False
        self._returned: set[str] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Client:
        """A client with the settings of the environment (the worker's variables)."""
        return cls(Settings.from_env(os.environ if env is None else env))

    def __enter__(self) -> Client:
        try:
            self._connection.ensure_connection(max_retries=3)
        except Exception as exc:
            raise ClientError(
                f"cannot connect to RabbitMQ at {self.settings.amqp_host}: {exc}"
            ) from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._connection.release()

    def task(self, task: Task | Mapping[str, Any]) -> Task:
        """`task` checked with the worker's rules and this environment's limits."""
        return checked_task(task, self._policy)

    def submit(
        self, task: Task | Mapping[str, Any], *, correlation_id: str | None = None
    ) -> TaskHandle:
        """Publish the task (confirmed by the broker) and return its handle."""
        checked = self.task(task)
        handle = TaskHandle(self, checked.id, correlation_id or new_correlation_id())
        try:
            self.publish(
                checked.to_json(), correlation_id=handle.correlation_id, reply_to=handle.reply_to
            )
        except BaseException:
            handle.close()
            raise
        return handle

    def run(self, task: Task | Mapping[str, Any], *, timeout: float | None = None) -> Response:
        """Submit the task and wait for its response (ResponseTimeout after `timeout` s)."""
        with self.submit(task) as handle:
            return handle.result(timeout)

    def cancel(self, task_id: str, *, timeout: float | None = 60.0) -> Response:
        """Ask the dispatcher to stop the task `task_id` and return the answer to that request:
        the task's ``cancelled`` answer, or an error saying it is not in progress."""
        request = checked_cancel(task_id)
        with TaskHandle(self, request.id, new_correlation_id(), progress=False) as handle:
            return handle.cancel(timeout=timeout, correlation_id=handle.correlation_id)

    def publish(
        self, document: Mapping[str, Any], *, correlation_id: str | None, reply_to: str | None
    ) -> None:
        """Publish one message to the task exchange (persistent, JSON), confirmed."""
        channel = self._connection.default_channel
        properties: dict[str, Any] = {}
        if correlation_id:
            properties["correlation_id"] = correlation_id
        if reply_to:
            properties["reply_to"] = reply_to
        self._declare_task_queue()
        exchange = task_exchange(self.settings)
        key = routing_key(document, self.settings)
        message_id = new_correlation_id()  # how the broker's return of it is matched
        try:
            Producer(channel, on_return=self._on_return).publish(
                encode(document),
                exchange=exchange,
                routing_key=key,
                mandatory=True,
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=message_id,
                confirm_timeout=CONFIRM_SECONDS,
                **properties,
            )
        except NotFound as exc:
            raise ClientError(no_task_exchange(exchange.name)) from exc
        except TimeoutError as exc:
            # The broker reads nothing more from this connection: drop it without the closing
            # handshake, which would wait as long as the broker does.
            self._connection.collect()
            raise ClientError(unconfirmed()) from exc
        except (OSError, AMQPError) as exc:
            raise ClientError(f"cannot publish to RabbitMQ: {exc}") from exc
        if message_id in self._returned:  # the return comes before the broker's confirm
            self._returned.discard(message_id)
            raise ClientError(unroutable(exchange.name, key, self.settings))

    def _on_return(self, _exc: object, _exchange: str, _key: str, message: Any) -> None:
        self._returned.add(message.properties.get("message_id", ""))

    def _declare_task_queue(self) -> None:
        """Declare the task exchange and queues once, so that a task (or cancel) sent before any
        worker started waits in its queue."""
        if not self._declared:
            self.declare_quietly(task_queue(self.settings))
            control = control_queue(self.settings)
            if control is not None:
                self.declare_quietly(control)
            self._declared = True

    def declare_quietly(self, entity: Exchange | Queue) -> None:
        """Declare one of the dispatcher's exchanges or queues on a channel of its own. A
        producer's broker user may not (docs/security.md): they are then the dispatcher's,
        declared when a worker starts, and this does nothing. Nor does a queue that exists with
        other arguments (the workers' QUEUE_TYPE is not this producer's): it is there."""
        channel = self._connection.channel()
        try:
            entity(channel).declare()
        except (AccessRefused, PreconditionFailed):
            pass
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def take_answers(self, *, idle_timeout: float, count: int | None = None) -> Iterator[str]:
        """The answers waiting in RESPONSE_QUEUE_NAME (tasks sent without `reply_to` are
        answered there), as JSON text, each acknowledged, i.e. taken off the queue, once the
        caller has it; until `count` of them, or none came for `idle_timeout` seconds."""
        name = self.settings.response_queue_name
        channel = self._connection.channel()
        taken = 0
        try:
            idle_until = time.monotonic() + idle_timeout
            while (count is None or taken < count) and time.monotonic() < idle_until:
                try:
                    message = channel.basic_get(queue=name, no_ack=False)
                except NotFound as exc:
                    raise ClientError(
                        f"no queue {name!r} (RESPONSE_QUEUE_NAME) on the broker: a worker "
                        "declares it when it starts"
                    ) from exc
                except AccessRefused as exc:
                    raise ClientError(
                        f"AMQP_USER may not read {name!r} (RESPONSE_QUEUE_NAME): {exc}"
                    ) from exc
                except (OSError, AMQPError) as exc:
                    raise ClientError(f"cannot read {name!r} from RabbitMQ: {exc}") from exc
                if message is None:
                    time.sleep(0.2)
                    continue
                body = message.body
                yield body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
                channel.basic_ack(message.delivery_tag)
                taken += 1
                idle_until = time.monotonic() + idle_timeout
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def drain(self, timeout: float) -> None:
        """Deliver whatever arrives within `timeout` seconds to the handles' inboxes."""
        try:
            self._connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass
        except (OSError, AMQPError) as exc:
            raise ClientError(f"lost the connection to RabbitMQ ({exc}); the task goes on") from exc

    def channel(self) -> Any:
        """A new channel of the client's connection."""
        return self._connection.channel()

    def progress_exchange(self) -> Exchange | None:
        return self._progress


class TaskHandle:
    """One submitted task: its response, its progress events, and a way to cancel it."""

    def __init__(
        self, client: Client, task_id: str, correlation_id: str, *, progress: bool = True
    ) -> None:
        self.id = task_id
        self.correlation_id = correlation_id
        self._client = client
        self._inbox = Inbox(task_id)
        self._channel = client.channel()
        queue = Queue("", exclusive=True, auto_delete=True, durable=False)(self._channel)
        self.reply_to: str = queue.declare()
        exchange = client.progress_exchange() if progress else None
        if exchange is not None:
            client.declare_quietly(exchange)
            try:
                self._channel.queue_bind(self.reply_to, exchange.name, routing_key=task_id)
            except NotFound as exc:  # the broker closes the channel, and the queue goes with it
                raise ClientError(no_progress_exchange(exchange.name)) from exc
            except (OSError, AMQPError) as exc:
                raise ClientError(f"cannot listen for the answer: {exc}") from exc
        self._progress_name = None if exchange is None else exchange.name
        self._consumer = Consumer(
            self._channel,
            queues=[Queue(self.reply_to, no_declare=True)],
            on_message=self._on_message,
            accept=[CONTENT_TYPE],
        )
        self._consumer.consume()

    def __enter__(self) -> TaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening (the private queue goes with its channel; the task goes on).

        The consumer is cancelled first: the broker confirms that nothing more will be delivered,
        and what it sent before (a finished task's last progress events) is taken in on the way.
        Closing a channel that still receives deliveries makes the AMQP library warn on the
        caller's stderr."""
        with contextlib.suppress(Exception):  # the channel of a lost connection
            self._consumer.cancel()
        with contextlib.suppress(Exception):
            self._channel.close()

    def _on_message(self, message: Any) -> None:
        exchange = (message.delivery_info or {}).get("exchange")
        self._inbox.put(
            message.body,
            correlation_id=message.properties.get("correlation_id"),
            message_id=message.properties.get("message_id"),
            progress=self._progress_name is not None and exchange == self._progress_name,
        )
        message.ack()

    def _wait_for(self, correlation_id: str, timeout: float | None) -> Response:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (response := self._inbox.take_response(correlation_id)) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResponseTimeout(self.id, timeout or 0.0)
            self._client.drain(min(_POLL_SECONDS if left is None else left, 1.0))
        return response

    def result(self, timeout: float | None = None) -> Response:
        """The task's response; ResponseTimeout when none came within `timeout` seconds."""
        return self._wait_for(self.correlation_id, timeout)

    def poll(self, timeout: float = 0.0) -> Response | None:
        """The response if it comes within `timeout` seconds, else None."""
        try:
            return self._wait_for(self.correlation_id, timeout)
        except ResponseTimeout:
            return None

    def next_event(self, timeout: float) -> ProgressEvent | None:
        """The next progress event within `timeout` seconds, else None."""
        deadline = time.monotonic() + timeout
        while (event := self._inbox.take_event()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._client.drain(min(left, _POLL_SECONDS))
        return event

    def events(self, timeout: float | None = None) -> Iterator[ProgressEvent]:
        """The task's progress events as they come, until its final one (or `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            event = self.next_event(_POLL_SECONDS)
            if event is not None:
                yield event
                if event.state in FINAL_STATES:
                    return

    def cancel(
        self, *, timeout: float | None = 60.0, correlation_id: str | None = None
    ) -> Response:
        """Ask the dispatcher to stop this task; the answer to that request (the task's own
        ``cancelled`` answer, or an error such as not in progress). The task's own response
        still arrives for :meth:`result`."""
        cancel_id = correlation_id or cancel_correlation_id(self.correlation_id)
        self._client.publish(
            checked_cancel(self.id).to_json(), correlation_id=cancel_id, reply_to=self.reply_to
        )
        return self._wait_for(cancel_id, timeout)
