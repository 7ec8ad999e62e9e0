"""A Python client for the people and services that submit work: sync and asyncio.

    from dispatcher.client import Client

    with Client.from_env() as client:
        response = client.run({"id": "hello-1", "image": "busybox:1.36",
                               "volume_mount_path": "/work", "cmd": ["echo", "hi"]}, timeout=120)
        print(response.exit, response.output)

A task (a :class:`~dispatcher.messages.task.Task` or a JSON-like dict) is checked with the same
rules and the same operator limits (from the same environment) as the worker applies, so a bad
task fails here with the same one-line :class:`~dispatcher.errors.InvalidTaskError` before it is
sent. Each submitted task gets a private, server-named, exclusive reply queue: the response comes
back there by ``reply_to`` + ``correlation_id``, and when ``PROGRESS_EXCHANGE_NAME`` is set the
same queue is bound to the progress exchange with the task id, so :meth:`TaskHandle.events`
yields the task's ``queued``, ``running`` and final events. :meth:`TaskHandle.cancel` sends
``{"cancel": id}`` with the same ``reply_to`` and the correlation id ``<correlation_id>.cancel``,
so the task's own answer and the cancel's answer are told apart.

A :class:`Client` holds one AMQP connection and is not thread-safe; use one per thread.
:class:`AsyncClient` offers the same calls as coroutines; it runs one :class:`Client` on a
dedicated thread (AMQP I/O is blocking kombu underneath), so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any

from amqp.exceptions import AccessRefused, NotFound
from kombu import Connection, Consumer, Exchange, Producer, Queue

from dispatcher.amqp.topology import progress_exchange, task_exchange, task_queue
from dispatcher.config import Settings
from dispatcher.errors import ClientError, ResponseTimeout
from dispatcher.messages.progress import FINAL_STATES, ProgressEvent
from dispatcher.messages.response import Response
from dispatcher.messages.task import Cancel, Task, TaskPolicy, parse_task

__all__ = ["AsyncClient", "AsyncTaskHandle", "Client", "TaskHandle"]

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
        document = task.to_json() if isinstance(task, Task) else dict(task)
        return parse_task(json.dumps(document), self._policy)

    def submit(
        self, task: Task | Mapping[str, Any], *, correlation_id: str | None = None
    ) -> TaskHandle:
        """Publish the task (confirmed by the broker) and return its handle."""
        checked = self.task(task)
        handle = TaskHandle(self, checked.id, correlation_id or str(uuid.uuid4()))
        self.publish(
            checked.to_json(), correlation_id=handle.correlation_id, reply_to=handle.reply_to
        )
        return handle

    def run(self, task: Task | Mapping[str, Any], *, timeout: float | None = None) -> Response:
        """Submit the task and wait for its response (ResponseTimeout after `timeout` s)."""
        with self.submit(task) as handle:
            return handle.result(timeout)

    def cancel(self, task_id: str, *, timeout: float | None = 60.0) -> Response:
        """Ask the dispatcher to stop the task `task_id` and return the answer to that request:
        the task's ``cancelled`` answer, or an error saying it is not in progress."""
        with TaskHandle(self, Cancel(task_id).id, str(uuid.uuid4()), progress=False) as handle:
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
        try:
            Producer(channel).publish(
                json.dumps(document, ensure_ascii=False).encode(),
                exchange=exchange,
                routing_key=self.settings.task_routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                **properties,
            )
        except NotFound as exc:
            raise ClientError(
                f"the task exchange '{exchange.name}' does not exist: no dispatcher worker has "
                "declared it yet"
            ) from exc

    def _declare_task_queue(self) -> None:
        """Declare the task exchange and queue once, so that a task sent before any worker
        started waits in its queue."""
        if not self._declared:
            self.declare_quietly(task_queue(self.settings))
            self._declared = True

    def declare_quietly(self, entity: Exchange | Queue) -> None:
        """Declare one of the dispatcher's exchanges or queues on a channel of its own. A
        producer's broker user may not (docs/security.md): they are then the dispatcher's,
        declared when a worker starts, and this does nothing."""
        channel = self._connection.channel()
        try:
            entity(channel).declare()
        except AccessRefused:
            pass
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def drain(self, timeout: float) -> None:
        """Deliver whatever arrives within `timeout` seconds to the handles' buffers."""
        with contextlib.suppress(TimeoutError):
            self._connection.drain_events(timeout=timeout)

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
        self._responses: dict[str, deque[Response]] = {}
        self._events: deque[ProgressEvent] = deque()
        self._seen_events: set[str] = set()
        self._channel = client.channel()
        queue = Queue("", exclusive=True, auto_delete=True, durable=False)(self._channel)
        self.reply_to: str = queue.declare()
        exchange = client.progress_exchange() if progress else None
        if exchange is not None:
            client.declare_quietly(exchange)
            self._channel.queue_bind(self.reply_to, exchange.name, routing_key=task_id)
        self._progress_name = None if exchange is None else exchange.name
        self._consumer = Consumer(
            self._channel,
            queues=[Queue(self.reply_to, no_declare=True)],
            on_message=self._on_message,
            accept=["application/json"],
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
        properties = message.properties
        exchange = (message.delivery_info or {}).get("exchange")
        try:
            if self._progress_name is not None and exchange == self._progress_name:
                event = ProgressEvent.decode(message.body)
                key = properties.get("message_id") or f"{event.state}.{event.time}"
                if event.id == self.id and key not in self._seen_events:
                    self._seen_events.add(key)
                    self._events.append(event)
            else:
                response = Response.decode(message.body)
                self._responses.setdefault(properties.get("correlation_id") or "", deque()).append(
                    response
                )
        except ValueError:
            pass  # not ours to understand: a malformed message on a private queue
        message.ack()

    def _wait_for(self, correlation_id: str, timeout: float | None) -> Response:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._responses.get(correlation_id):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResponseTimeout(self.id, timeout or 0.0)
            self._client.drain(min(_POLL_SECONDS if left is None else left, 1.0))
        return self._responses[correlation_id].popleft()

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
        while not self._events:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._client.drain(min(left, _POLL_SECONDS))
        return self._events.popleft()

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
        cancel_id = correlation_id or f"{self.correlation_id}.cancel"
        self._client.publish(
            Cancel(self.id).to_json(), correlation_id=cancel_id, reply_to=self.reply_to
        )
        return self._wait_for(cancel_id, timeout)


class AsyncClient:
    """The same calls as :class:`Client`, as coroutines. One :class:`Client` runs on a thread
    of its own; every call is handed to it, so the event loop never blocks on the broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-client")
        self._client = Client(settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AsyncClient:
        return cls(Settings.from_env(os.environ if env is None else env))

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))

    async def __aenter__(self) -> AsyncClient:
        await self._call(self._client.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._call(self._client.close)
        self._executor.shutdown(wait=False)

    async def submit(
        self, task: Task | Mapping[str, Any], *, correlation_id: str | None = None
    ) -> AsyncTaskHandle:
        handle = await self._call(self._client.submit, task, correlation_id=correlation_id)
        return AsyncTaskHandle(self, handle)

    async def run(
        self, task: Task | Mapping[str, Any], *, timeout: float | None = None
    ) -> Response:
        handle = await self.submit(task)
        try:
            return await handle.result(timeout)
        finally:
            await handle.close()

    async def cancel(self, task_id: str, *, timeout: float | None = 60.0) -> Response:
        response: Response = await self._call(self._client.cancel, task_id, timeout=timeout)
        return response


class AsyncTaskHandle:
    """A submitted task, awaited without blocking the event loop."""

    def __init__(self, client: AsyncClient, handle: TaskHandle) -> None:
        self._client = client
        self._handle = handle
        self.id = handle.id
        self.correlation_id = handle.correlation_id

    async def result(self, timeout: float | None = None) -> Response:
        """Polls in short steps on the client's thread, so other calls interleave."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResponseTimeout(self.id, timeout or 0.0)
            step = _POLL_SECONDS if left is None else min(_POLL_SECONDS, left)
            response: Response | None = await self._client._call(self._handle.poll, step)
            if response is not None:
                return response

    async def events(self, timeout: float | None = None) -> AsyncIterator[ProgressEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            event: ProgressEvent | None = await self._client._call(
                self._handle.next_event, _POLL_SECONDS
            )
            if event is not None:
                yield event
                if event.state in FINAL_STATES:
                    return

    async def cancel(self, *, timeout: float | None = 60.0) -> Response:
        response: Response = await self._client._call(self._handle.cancel, timeout=timeout)
        return response

    async def close(self) -> None:
        await self._client._call(self._handle.close)
