"""The consumer's error answers with pipelined confirms, against the real RabbitMQ."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from harness.proxy import Proxy
from harness.stack import Broker, Instance
from kombu import Connection

from dispatcher.amqp.confirms import PipelinedAnswers
from dispatcher.config import Settings
from dispatcher.messages.response import Response
from dispatcher.messages.route import ReplyRoute


@pytest.fixture
def broker(instance: Instance) -> Iterator[Broker]:
    broker = Broker(instance)
    yield broker
    broker.close()


def answers(instance: Instance, url: str | None = None) -> PipelinedAnswers:
    settings = Settings.from_env(instance.env())
    return PipelinedAnswers(lambda: Connection(url or instance.broker_url), settings)


def settle(answers: PipelinedAnswers, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while answers.pending() and time.monotonic() < deadline:
        answers.poll()
        time.sleep(0.01)


def test_thousands_of_answers_are_each_confirmed_once(instance: Instance, broker: Broker) -> None:
    sender = answers(instance)
    confirmed: list[int] = []
    for i in range(3000):
        response = Response(id=f"Bad-{i}", error="id: must match [a-z0-9]...")
        sender.publish(
            response,
            ReplyRoute(),
            f"invalid.{i}",
            lambda ok, i=i: confirmed.append(i) if ok else None,
        )
    settle(sender)
    sender.close()

    assert sorted(confirmed) == list(range(3000))
    got = [json.loads(m.body)["id"] for m in broker.responses(3000, timeout=60)]
    assert sorted(got) == sorted(f"Bad-{i}" for i in range(3000))


def test_an_answer_whose_reply_queue_is_gone_goes_to_the_response_queue(
    instance: Instance, broker: Broker
) -> None:
    sender = answers(instance)
    results: list[bool] = []
    gone = f"amq.gen-{uuid.uuid4().hex}"  # a client that gave up and left

    sender.publish(
        Response(id="t-1", error="bad"), ReplyRoute("c-1", gone), "invalid.1", results.append
    )
    settle(sender)
    sender.close()

    assert results == [True]
    message = broker.responses(1, timeout=10)[0]
    assert json.loads(message.body) == {"id": "t-1", "error": "bad"}
    assert message.properties["correlation_id"] == "c-1"
    assert broker.no_more_responses(1.0) == []


def test_an_answer_on_a_broken_connection_is_not_confirmed_and_the_next_one_reconnects(
    instance: Instance, broker: Broker
) -> None:
    env = instance.env()
    proxy = Proxy((env["AMQP_HOST"], int(env["AMQP_PORT"])))
    url = f"amqp://{env['AMQP_USER']}:{env['AMQP_PASSWORD']}@127.0.0.1:{proxy.port}//"
    sender = answers(instance, url)
    results: list[tuple[str, bool]] = []

    def answer(task_id: str) -> None:
        done = lambda ok: results.append((task_id, ok))  # noqa: E731
        sender.publish(Response(id=task_id, error="bad"), ReplyRoute(), f"invalid.{task_id}", done)
        settle(sender)

    try:
        answer("t-1")
        proxy.cut()
        answer("t-2")
        proxy.restore()
        answer("t-3")
    finally:
        sender.close()
        proxy.close()

    assert results == [("t-1", True), ("t-2", False), ("t-3", True)]
    delivered = sorted(json.loads(m.body)["id"] for m in broker.responses(2, timeout=10))
    assert delivered == ["t-1", "t-3"]  # t-2 is answered again when its message is read again
