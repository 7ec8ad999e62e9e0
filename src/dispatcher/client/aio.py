"""The asyncio client: :class:`AsyncClient` and the :class:`AsyncTaskHandle` of each task.

The same calls as the blocking :class:`~dispatcher.client.sync.Client`, as coroutines, over one
asyncio AMQP connection (aio-pika). A handle's responses and progress events are delivered to
its inbox by the connection as they arrive, and a caller awaits them there: any number of tasks
are followed at once on one client, and nothing blocks the event loop. Each handle has a
channel and a private, server-named, exclusive reply queue of its own (bound to the progress
exchange with the task id when ``PROGRESS_EXCHANGE_NAME`` is set); closing it drops the queue
and the task goes on. An :class:`AsyncClient` belongs to the event loop that connected it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    PublishError,
)
from kombu import Exchange, Queue

from dispatcher.amqp.tls import tls_context
from dispatcher.amqp.topology import control_queue, progress_exchange, task_queue
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

__all__ = ["AsyncClient", "AsyncTaskHandle"]

_Item = TypeVar("_Item")
_CONNECT_SECONDS = 10.0
_CLOSE_SECONDS = 5.0
# What aio-pika and aiormq raise when the broker, the connection or a channel fails.
_AMQP_ERRORS = (AMQPError, ConnectionError, RuntimeError)


class AsyncClient:
    """Submits tasks and awaits their responses over one asyncio AMQP connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._policy = TaskPolicy.from_settings(settings)
        self._connection: AbstractConnection | None = None
        self._publishing: AbstractChannel | None = None
        self._publishing_lock = asyncio.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AsyncClient:
        """A client with the settings of the environment (the worker's variables)."""
        return cls(Settings.from_env(os.environ if env is None else env))

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect (over TLS with the worker's ``AMQP_TLS`` settings), and declare the task queue
        and the progress exchange as the worker does, where the broker user may."""
        settings = self.settings
        if self._connection is not None:
            return
        connection = await _first_answering(settings)
        try:
            await self._declare(connection)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def _declare(self, connection: AbstractConnection) -> None:
        """Declare the task exchange and queues, so that a task (or cancel) sent before any
        worker started waits in its queue, and the progress exchange. A producer's broker user
        may not (docs/security.md): they are then the dispatcher's, declared when a worker
        starts."""
        progress = progress_exchange(self.settings)
        for queue in (task_queue(self.settings), control_queue(self.settings)):
            if queue is not None:
                declare_queue = partial(_declare_queue, queue=queue)
                await _declare_quietly(connection, declare_queue, f"the queue {queue.name!r}")
        if progress is not None:
            declare = partial(_declare_exchange, exchange=progress)
            await _declare_quietly(connection, declare, f"the progress exchange {progress.name!r}")

    async def close(self) -> None:
        """Close the connection (and every handle's queue with it)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._publishing = None

    def task(self, task: Task | Mapping[str, Any]) -> Task:
        """`task` checked with the worker's rules and this environment's limits."""
        return checked_task(task, self._policy)

    async def submit(
        self, task: Task | Mapping[str, Any], *, correlation_id: str | None = None
    ) -> AsyncTaskHandle:
        """Publish the task (confirmed by the broker) and return its handle."""
        checked = self.task(task)
        handle = await self._open(checked.id, correlation_id or new_correlation_id(), True)
        try:
            await self.publish(
                checked.to_json(), correlation_id=handle.correlation_id, reply_to=handle.reply_to
            )
        except BaseException:
            await handle.close()
            raise
        return handle

    async def run(
        self, task: Task | Mapping[str, Any], *, timeout: float | None = None
    ) -> Response:
        """Submit the task and await its response (ResponseTimeout after `timeout` s)."""
        async with await self.submit(task) as handle:
            return await handle.result(timeout)

    async def cancel(self, task_id: str, *, timeout: float | None = 60.0) -> Response:
        """Ask the dispatcher to stop the task `task_id` and return the answer to that request:
        the task's ``cancelled`` answer, or an error saying it is not in progress."""
        request = checked_cancel(task_id)
        async with await self._open(request.id, new_correlation_id(), False) as handle:
            return await handle.cancel(timeout=timeout, correlation_id=handle.correlation_id)

    async def publish(
        self, document: Mapping[str, Any], *, correlation_id: str | None, reply_to: str | None
    ) -> None:
        """Publish one message to the task exchange (persistent, JSON), confirmed."""
        message = aio_pika.Message(
            encode(document),
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=correlation_id or None,
            reply_to=reply_to or None,
            message_id=new_correlation_id(),  # how the broker's return of it is matched
        )
        name, key = self.settings.task_exchange_name, routing_key(document, self.settings)
        try:
            async with asyncio.timeout(CONFIRM_SECONDS):  # aiormq waits out a blocked broker
                channel = await self._publishing_channel()
                exchange = await channel.get_exchange(name, ensure=False)
                await exchange.publish(message, routing_key=key)
        except ChannelNotFoundEntity as exc:
            raise ClientError(no_task_exchange(name)) from exc
        except PublishError as exc:
            raise ClientError(unroutable(name, key, self.settings)) from exc
        except TimeoutError as exc:
            raise ClientError(unconfirmed()) from exc
        except _AMQP_ERRORS as exc:
            raise ClientError(f"cannot publish to RabbitMQ: {exc}") from exc

    async def _publishing_channel(self) -> AbstractChannel:
        """The channel tasks are published on (one for every caller at once); a new one after
        the broker closed it (a publish to an exchange that did not exist)."""
        connection = self._connected()
        async with self._publishing_lock:
            if self._publishing is None or self._publishing.is_closed:
                self._publishing = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            return self._publishing

    def _connected(self) -> AbstractConnection:
        if self._connection is None:
            raise ClientError("the client is not connected: use `async with AsyncClient(...)`")
        return self._connection

    async def _open(self, task_id: str, correlation_id: str, progress: bool) -> AsyncTaskHandle:
        """A handle listening on a private queue of its own (bound to the progress exchange by
        task id when `progress`)."""
        connection = self._connected()
        exchange = self.settings.progress_exchange_name if progress else ""
        try:
            channel = await connection.channel(publisher_confirms=False)
        except _AMQP_ERRORS as exc:
            raise ClientError(f"cannot open a channel to RabbitMQ: {exc}") from exc
        handle = AsyncTaskHandle(self, task_id, correlation_id, channel)
        try:
            await handle.listen(exchange or None)
        except BaseException as exc:
            with contextlib.suppress(*_AMQP_ERRORS):
                await handle.close()
            if isinstance(exc, ChannelNotFoundEntity):
                raise ClientError(no_progress_exchange(exchange)) from exc
            if isinstance(exc, _AMQP_ERRORS):
                raise ClientError(f"cannot listen for the answer: {exc}") from exc
            raise
        return handle


async def _first_answering(settings: Settings) -> AbstractConnection:
    """A connection to the first broker node of AMQP_HOST that answers, tried in order."""
    failures = []
    for url, (host, port) in zip(settings.broker_urls, settings.broker_addresses, strict=True):
        try:
            return await aio_pika.connect(
                url, ssl_context=tls_context(settings), timeout=_CONNECT_SECONDS
            )
        except Exception as exc:  # noqa: BLE001 - the next node may answer; all are named
            failures.append(f"{host}:{port}: {exc}")
    raise ClientError(f"cannot connect to RabbitMQ at {settings.amqp_host}: {'; '.join(failures)}")


async def _declare_exchange(channel: AbstractChannel, exchange: Exchange) -> AbstractExchange:
    """`exchange` (one of the dispatcher's, as :mod:`dispatcher.amqp.topology` defines it)
    declared on `channel`."""
    return await channel.declare_exchange(exchange.name, exchange.type, durable=exchange.durable)


async def _declare_queue(channel: AbstractChannel, queue: Queue) -> None:
    """`queue` (one of the dispatcher's) declared on `channel` and bound to its exchange."""
    declared = await channel.declare_queue(
        queue.name, durable=queue.durable, arguments=queue.queue_arguments
    )
    exchange = await _declare_exchange(channel, queue.exchange)
    await declared.bind(exchange, routing_key=queue.routing_key)


async def _declare_quietly(
    connection: AbstractConnection,
    declare: Callable[[AbstractChannel], Awaitable[object]],
    what: str,
) -> None:
    """Run `declare` on a channel of its own; a refusal for lack of permission is no error, nor
    is a queue that exists with other arguments (the workers' QUEUE_TYPE, not this producer's);
    any other failure is a ClientError naming `what`."""
    channel = await connection.channel()
    try:
        await declare(channel)
    except (ChannelAccessRefused, ChannelPreconditionFailed):
        pass
    except _AMQP_ERRORS as exc:
        raise ClientError(f"cannot declare {what}: {exc}") from exc
    finally:
        if not channel.is_closed:
            await channel.close()


class AsyncTaskHandle:
    """One submitted task: its response, its progress events, and a way to cancel it."""

    def __init__(
        self, client: AsyncClient, task_id: str, correlation_id: str, channel: AbstractChannel
    ) -> None:
        self.id = task_id
        self.correlation_id = correlation_id
        self.reply_to = ""
        self._client = client
        self._channel = channel
        self._inbox = Inbox(task_id)
        self._arrived = asyncio.Event()
        self._progress_name: str | None = None
        self._lost: str | None = None
        channel.close_callbacks.add(self._on_close)

    async def listen(self, progress: str | None) -> None:
        """Declare the private queue, bind it to the exchange `progress` by task id, and
        consume it."""
        queue = await self._channel.declare_queue("", exclusive=True, auto_delete=True)
        if progress:
            await queue.bind(progress, routing_key=self.id)
            self._progress_name = progress
        await queue.consume(self._on_message, no_ack=True)
        self.reply_to = queue.name

    async def __aenter__(self) -> AsyncTaskHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening (the private queue goes with its channel; the task goes on). A broker
        that reads nothing (blocking publishers for a resource alarm) is not waited for long:
        the channel then goes with the connection."""
        if not self._channel.is_closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_SECONDS):
                    await self._channel.close()

    def _on_close(self, _channel: object, exc: BaseException | None) -> None:
        """The channel is gone (closed here, by the broker, or with the connection): nothing
        more will arrive, so a caller waiting for it is woken to be told."""
        self._lost = "the handle is closed" if exc is None else str(exc) or type(exc).__name__
        self._arrived.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put(
            message.body,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            progress=self._progress_name is not None and message.exchange == self._progress_name,
        )
        self._arrived.set()

    async def _next(self, take: Callable[[], _Item | None], timeout: float | None) -> _Item | None:
        """What `take` finds in the inbox once something arrives, or None after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while (item := take()) is None:
                    if self._lost is not None:
                        raise ClientError(
                            f"no more answers can come for task {self.id} ({self._lost}); the "
                            "task goes on"
                        )
                    self._arrived.clear()
                    await self._arrived.wait()
                return item
        except TimeoutError:
            return None

    async def _response(self, correlation_id: str, timeout: float | None) -> Response:
        response = await self._next(lambda: self._inbox.take_response(correlation_id), timeout)
        if response is None:
            raise ResponseTimeout(self.id, timeout or 0.0)
        return response

    async def result(self, timeout: float | None = None) -> Response:
        """The task's response; ResponseTimeout when none came within `timeout` seconds."""
        return await self._response(self.correlation_id, timeout)

    async def next_event(self, timeout: float | None = None) -> ProgressEvent | None:
        """The next progress event within `timeout` seconds, else None."""
        return await self._next(self._inbox.take_event, timeout)

    async def events(self, timeout: float | None = None) -> AsyncIterator[ProgressEvent]:
        """The task's progress events as they come, until its final one (or `timeout`)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            event = await self.next_event(left)
            if event is None:
                return
            yield event
            if event.state in FINAL_STATES:
                return

    async def cancel(
        self, *, timeout: float | None = 60.0, correlation_id: str | None = None
    ) -> Response:
        """Ask the dispatcher to stop this task; the answer to that request (the task's own
        ``cancelled`` answer, or an error such as not in progress). The task's own response
        still arrives for :meth:`result`."""
        cancel_id = correlation_id or cancel_correlation_id(self.correlation_id)
        await self._client.publish(
            checked_cancel(self.id).to_json(), correlation_id=cancel_id, reply_to=self.reply_to
        )
        return await self._response(cancel_id, timeout)
