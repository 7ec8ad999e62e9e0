"""The client's task handles against the real RabbitMQ (no worker needed)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest
from kombu import Producer

from dispatcher.client import AsyncClient, Client, TaskHandle
from dispatcher.config import Settings
from dispatcher.errors import ClientError
from tests.support.proxy import Proxy
from tests.support.stack import Broker, Instance


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
