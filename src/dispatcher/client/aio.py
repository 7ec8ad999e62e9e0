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
import os
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from dispatcher.client.inbox import (
    CONTENT_TYPE,
    Inbox,
    cancel_correlation_id,
    checked_cancel,
    checked_task,
    encode,
    new_correlation_id,
)
from dispatcher.config import Settings
from dispatcher.errors import ClientError, ResponseTimeout
from dispatcher.messages.progress import FINAL_STATES, ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.task import Task, TaskPolicy

__all__ = ["AsyncClient", "AsyncTaskHandle"]

_Item = TypeVar("_Item")
_CONNECT_SECONDS = 10.0


class AsyncClient:
    """Submits tasks and awaits their responses over one asyncio AMQP connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._policy = TaskPolicy.from_settings(settings)
        self._connection: AbstractConnection | None = None
        self._tasks: AbstractExchange | None = None
        self._progress: AbstractExchange | None = None

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
        """Connect, and declare the task queue and exchange as the worker does."""
        try:
            connection = await aio_pika.connect(self.settings.broker_url, timeout=_CONNECT_SECONDS)
        except Exception as exc:
            raise ClientError(
                f"cannot connect to RabbitMQ at {self.settings.amqp_host}: {exc}"
            ) from exc
        try:
            await self._declare(connection)
        except Exception as exc:
            await connection.close()
            raise ClientError(
                f"cannot declare the task queue {self.settings.task_queue_name!r}: {exc}"
            ) from exc
        self._connection = connection

    async def _declare(self, connection: AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        settings = self.settings
        self._tasks = await channel.declare_exchange(
            settings.task_exchange_name, settings.task_exchange_type, durable=True
        )
        queue = await channel.declare_queue(settings.task_queue_name, durable=True)
        await queue.bind(self._tasks, routing_key=settings.task_routing_key)
        if settings.progress_exchange_name:
            self._progress = await channel.declare_exchange(
                settings.progress_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )

    async def close(self) -> None:
        """Close the connection (and every handle's queue with it)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
            self._tasks = self._progress = None

    def task(self, task: Task | Mapping[str, Any]) -> Task:
        """`task` checked with the worker's rules and this environment's limits."""
        return checked_task(task, self._policy)

    async def submit(
        self, task: Task | Mapping[str, Any], *, correlation_id: str | None = None
    ) -> AsyncTaskHandle:
        """Publish the task (confirmed by the broker) and return its handle."""
        checked = self.task(task)
        handle = await self._open(checked.id, correlation_id or new_correlation_id(), True)
        await self.publish(
            checked.to_json(), correlation_id=handle.correlation_id, reply_to=handle.reply_to
        )
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
        )
        await self._exchange().publish(message, routing_key=self.settings.task_routing_key)

    def _exchange(self) -> AbstractExchange:
        if self._tasks is None or self._connection is None:
            raise ClientError("the client is not connected: use `async with AsyncClient(...)`")
        return self._tasks

    async def _open(self, task_id: str, correlation_id: str, progress: bool) -> AsyncTaskHandle:
        self._exchange()  # connected
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        handle = AsyncTaskHandle(self, task_id, correlation_id, channel)
        await handle.listen(self._progress if progress else None)
        return handle


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

    async def listen(self, progress: AbstractExchange | None) -> None:
        """Declare the private queue, bind it to `progress` by task id, and consume it."""
        queue = await self._channel.declare_queue("", exclusive=True, auto_delete=True)
        if progress is not None:
            await queue.bind(progress, routing_key=self.id)
            self._progress_name = progress.name
        await queue.consume(self._on_message, no_ack=True)
        self.reply_to = queue.name

    async def __aenter__(self) -> AsyncTaskHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening (the private queue goes with its channel; the task goes on)."""
        if not self._channel.is_closed:
            await self._channel.close()

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
