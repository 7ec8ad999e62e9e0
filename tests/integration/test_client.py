"""The client's task handles against the real RabbitMQ (no worker needed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
from harness.proxy import Proxy
from harness.stack import Broker, Instance, memory_watermark, rabbitmqctl
from kombu import Producer

from dispatcher.client import AsyncClient, Client, TaskHandle, aio, sync
from dispatcher.config import Settings
from dispatcher.errors import ClientError


@pytest.fixture
def broker(instance: Instance) -> Iterator[Broker]:
    broker = Broker(instance)
    yield broker
    broker.close()


def test_closing_a_handle_with_messages_in_flight_prints_nothing(
    instance: Instance, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress events of a finished task can still be on their way when its handle closes
    (asyncio.gather of several runs does it every time): closing must not make the AMQP
    library warn about deliveries on a closing channel, which lands on a caller's stderr."""
    caplog.set_level(logging.WARNING)
    with Client(Settings.from_env(instance.env())) as client:
        handle = TaskHandle(client, "in-flight", "in-flight", progress=False)
        producer = Producer(broker.conn.default_channel)
        for n in range(300):
            producer.publish({"n": n}, exchange="", routing_key=handle.reply_to)
        time.sleep(0.5)  # the broker pushes them to the client, which reads nothing yet
        handle.close()
        assert client.channel() is not None  # the connection is still usable

    assert [r.getMessage() for r in caplog.records] == []


def test_closing_an_async_handle_with_messages_in_flight_prints_nothing(
    instance: Instance, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    producer = Producer(broker.conn.default_channel)

    async def main() -> int:
        async with AsyncClient(Settings.from_env(instance.env())) as client:
            handle = await client._open("in-flight", "in-flight", progress=False)
            for n in range(300):
                producer.publish({"n": n}, exchange="", routing_key=handle.reply_to)
            await handle.close()
            await asyncio.sleep(0.5)  # whatever was still on its way arrives now
            after = await client._open("after", "after", progress=False)
            producer.publish({"id": "after", "output": "", "exit": 0}, exchange="",
                             routing_key=after.reply_to, correlation_id="after")  # fmt: skip
            response = await after.result(timeout=10)
            await after.close()
            return response.exit

    assert asyncio.run(main()) == 0  # the connection goes on
    assert [r.getMessage() for r in caplog.records] == []


def test_a_lost_connection_ends_the_wait_for_an_answer_at_once(instance: Instance) -> None:
    """The private reply queue goes with the connection, so no answer can come: both clients
    say so instead of waiting for ever (or for the whole timeout)."""
    env = instance.env()
    proxy = Proxy((env["AMQP_HOST"], int(env["AMQP_PORT"])))
    settings = Settings.from_env({**env, "AMQP_HOST": "127.0.0.1", "AMQP_PORT": str(proxy.port)})

    async def wait_async() -> float:
        async with AsyncClient(settings) as client:
            handle = await client._open("lost-async", "lost-async", progress=False)
            waiting = asyncio.ensure_future(handle.result(timeout=None))
            await asyncio.sleep(0.5)
            proxy.cut()
            started = time.monotonic()
            with pytest.raises(ClientError, match=r"^no more answers can come for task lost-async"):
                await waiting
            return time.monotonic() - started

    try:
        with Client(settings) as client:
            handle = TaskHandle(client, "lost-sync", "lost-sync", progress=False)
            threading.Timer(0.5, proxy.cut).start()
            with pytest.raises(ClientError, match=r"^lost the connection to RabbitMQ \("):
                handle.result(timeout=None)
        proxy.restore()
        assert asyncio.run(wait_async()) < 10
    finally:
        proxy.close()


def test_a_progress_exchange_no_worker_declared_is_named_by_both_clients(
    instance: Instance, broker: Broker
) -> None:
    """A user who may not declare the progress exchange (a producer) and a worker that never
    declared it: both clients name it, neither waits for events that cannot come."""
    user, password = f"{instance.name}-no-configure", secrets.token_hex(8)
    rabbitmqctl("add_user", user, password)
    rabbitmqctl("set_permissions", "-p", "/", user, r"^amq\.gen-.*", ".*", ".*")
    env = {**instance.env(), "AMQP_USER": user, "AMQP_PASSWORD": password}
    settings = Settings.from_env({**env, "PROGRESS_EXCHANGE_NAME": f"{instance.name}.nowhere"})
    sent = {"id": "no-progress", "image": "localhost/x:1", "volume_mount_path": "/w"}
    expected = (
        f"the progress exchange '{instance.name}.nowhere' does not exist: no dispatcher worker "
        "with PROGRESS_EXCHANGE_NAME set has declared it yet"
    )

    async def submit() -> None:
        async with AsyncClient(settings) as client:
            await client.submit(sent)

    try:
        with Client(settings) as client, pytest.raises(ClientError) as sync_error:
            client.submit(sent)
        with pytest.raises(ClientError) as async_error:
            asyncio.run(submit())
    finally:
        rabbitmqctl("delete_user", user)

    assert str(sync_error.value) == expected
    assert str(async_error.value) == expected
    assert broker.task_queue(broker.conn.default_channel).get(no_ack=True) is None  # none sent


@contextlib.contextmanager
def memory_alarm(lasting: float) -> Iterator[None]:
    """The broker blocks every publisher for `lasting` seconds (its memory watermark at one
    byte), then is itself again: a client's close after its publish gave up can go through."""
    back = ("set_vm_memory_high_watermark", *memory_watermark())
    restore = threading.Timer(lasting, rabbitmqctl, back)
    rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
    restore.start()
    try:
        yield
    finally:
        restore.join()
        rabbitmqctl(*back)  # again, in this thread: a failure to restore fails the test


def test_a_publish_the_broker_never_confirms_is_an_error_not_a_hang(
    instance: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory alarm blocks every publisher: both clients give up after their confirm timeout
    (shortened here) and say why, instead of waiting for ever."""
    monkeypatch.setattr(sync, "CONFIRM_SECONDS", 2.0)
    monkeypatch.setattr(aio, "CONFIRM_SECONDS", 2.0)
    settings = Settings.from_env(instance.env())
    sent = {"id": "blocked", "image": "localhost/x:1", "volume_mount_path": "/w"}

    async def submit() -> None:
        async with AsyncClient(settings) as client:
            await client.submit(sent)

    started = time.monotonic()
    with memory_alarm(20):
        with Client(settings) as client, pytest.raises(ClientError) as sync_error:
            client.submit(sent)
        sync_seconds = time.monotonic() - started
        with pytest.raises(ClientError) as async_error:
            asyncio.run(submit())
        async_seconds = time.monotonic() - started - sync_seconds

    # Each gave up (after 2 s) and closed without waiting for the broker to read again.
    assert sync_seconds < 10
    assert async_seconds < 13
    for error in (sync_error, async_error):
        assert str(error.value).startswith("RabbitMQ did not confirm the message within ")
