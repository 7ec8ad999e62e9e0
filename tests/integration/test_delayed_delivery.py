"""Celery's delayed delivery on quorum queues, as the worker declares it, on the real broker.

Its delay queues dead-letter *at least once*: a due message that routes to no queue stays, and
enough of them stop every delayed message of the vhost behind them. Such messages are common:
an installation removed (or a test's internal queue deleted) with retries still waiting. The
worker's declarations bind a sink to the last hop, so that they are dropped and the others flow.
"""

from __future__ import annotations

import time
import uuid

from harness.stack import Instance
from kombu import Connection, Exchange, Producer
from kombu.transport.native_delayed_delivery import calculate_routing_key

from dispatcher.amqp.declare import declare_all
from dispatcher.amqp.topology import internal_queue
from dispatcher.config import Settings

DELAYED = Exchange("celery_delayed_27", type="topic", no_declare=True)


def test_due_messages_for_a_queue_that_is_gone_do_not_hold_up_the_others(
    instance: Instance,
) -> None:
    settings = Settings.from_env(instance.env())
    gone = f"gone-{uuid.uuid4().hex[:8]}.internal"
    with Connection(instance.broker_url, transport_options={"confirm_publish": True}) as conn:
        declare_all(conn, settings)
        producer = Producer(conn.channel())
        for _ in range(60):  # more than the dead-letter worker takes in at once
            producer.publish(b"{}", exchange=DELAYED, routing_key=calculate_routing_key(1, gone))
        started = time.monotonic()
        producer.publish(
            b"{}",
            exchange=DELAYED,
            routing_key=calculate_routing_key(1, settings.celery_queue_name),
        )
        queue = internal_queue(settings)(conn.channel())
        while queue.get(no_ack=True) is None:
            assert time.monotonic() - started < 30, "the due message never arrived"
            time.sleep(0.1)
        waited = time.monotonic() - started
        conn.channel().queue_delete(queue.name)

    assert 1 <= waited < 10, f"a 1 s delay took {waited:.1f} s"
