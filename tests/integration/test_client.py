"""The client's task handles against the real RabbitMQ (no worker needed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from kombu import Producer

from dispatcher.client import Client, TaskHandle
from dispatcher.config import Settings
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
