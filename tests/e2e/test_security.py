"""Security on the real broker: the two kinds of users (as `dispatcher permissions` grants them),
sealed internal messages, and reply_to limited to reply queues."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused
from harness.stack import Broker, Instance, Worker, kubectl, rabbitmqctl, running, stack_env
from kombu import Connection, Exchange, Producer, Queue

from dispatcher.amqp import permissions
from dispatcher.client import AsyncClient
from dispatcher.config import Settings
from dispatcher.errors import ClientError
from dispatcher.messages.response import Response

pytestmark = pytest.mark.cluster
SIGNING_KEY = "signing-" + secrets.token_hex(16)


def first_node() -> str:
    """host:port of the stack's first broker node (AMQP_HOST lists three on a three-node stack)."""
    host, port = Settings.from_env(stack_env()).broker_addresses[0]
    return f"{host}:{port}"


class Users:
    """A dispatcher user and a producer user for one installation, removed afterwards."""

    def __init__(self, instance: Instance) -> None:
        settings = Settings.from_env(instance.env())
        self.passwords: dict[str, str] = {}
        self.names = {"dispatcher": f"{instance.name}-dispatcher", "producer": f"{instance.name}-p"}
        grants = {"dispatcher": permissions.dispatcher, "producer": permissions.producer}
        for kind, user in self.names.items():
            self.passwords[kind] = secrets.token_hex(16)
            rabbitmqctl("add_user", user, self.passwords[kind])
            rabbitmqctl(*grants[kind](settings).rabbitmqctl(user, "/"))

    def url(self, kind: str) -> str:
        user, password = self.names[kind], self.passwords[kind]
        return f"amqp://{user}:{password}@{first_node()}//"

    def remove(self) -> None:
        for user in self.names.values():
            rabbitmqctl("delete_user", user)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def secured(
    request: pytest.FixtureRequest, local_stack: dict[str, str], log_dir: Path
) -> Iterator[tuple[Broker, Worker, Users]]:
    """A worker that runs as the dispatcher user (least privilege), and a producer user; more
    settings from `@pytest.mark.settings(...)`."""
    name = "t" + uuid.uuid4().hex[:8]
    marker = request.node.get_closest_marker("settings")
    extra = {"PROGRESS_EXCHANGE_NAME": f"{name}.progress", **(marker.kwargs if marker else {})}
    instance = Instance(name=name, extra=extra)
    users = Users(instance)
    instance.extra.update(
        AMQP_USER=users.names["dispatcher"],
        AMQP_PASSWORD=users.passwords["dispatcher"],
        INTERNAL_SIGNING_KEY=SIGNING_KEY,
        HEALTH_PORT=str(free_port()),
    )
    try:
        with running(instance, log_dir) as (broker, worker):
            yield broker, worker, users
    finally:
        users.remove()


def task(**fields: Any) -> dict[str, Any]:
    return {
        "id": "t-" + uuid.uuid4().hex[:10],
        "image": stack_env()["TEST_IMAGE"],
        "volume_mount_path": "/work",
        "cmd": ["/bin/sh", "-c", "echo from-a-producer"],
        **fields,
    }


def refused(url: str, exchange: str, routing_key: str, body: Any) -> str:
    """Publish as that user; the broker's refusal text (the test fails if it accepts)."""
    with (
        Connection(url, transport_options={"confirm_publish": True}) as conn,
        pytest.raises(AccessRefused) as caught,
    ):
        Producer(conn.channel()).publish(
            json.dumps(body), exchange=exchange, routing_key=routing_key
        )
    return str(caught.value)


def test_a_producer_sends_tasks_and_reads_its_answer_as_the_dispatcher_runs_least_privileged(
    secured: tuple[Broker, Worker, Users],
) -> None:
    broker, _, users = secured
    env = broker.instance.env()
    sent = task()
    with Connection(users.url("producer"), transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        reply = Queue("", exclusive=True, auto_delete=True)(channel)
        reply_to = reply.declare()
        Producer(channel).publish(
            json.dumps(sent),
            exchange=Exchange(env["TASK_EXCHANGE_NAME"], no_declare=True),
            routing_key="task",
            reply_to=reply_to,
            correlation_id="c-1",
            delivery_mode=2,
        )
        deadline = time.monotonic() + 90
        while (message := reply.get(no_ack=True)) is None:
            assert time.monotonic() < deadline, "no answer on the producer's reply queue"
            time.sleep(0.3)
    assert json.loads(message.body) == {"id": sent["id"], "output": "from-a-producer\n", "exit": 0}


@pytest.mark.settings(IMAGE_PULL_GRACE_SECONDS="5")
def test_a_delayed_internal_task_goes_through_rabbitmqs_delayed_delivery_as_least_privileged(
    secured: tuple[Broker, Worker, Users],
) -> None:
    """An image that cannot be pulled is answered after the grace period: its finalize is sent
    with a countdown, which with quorum queues waits in Celery's `celery_delayed_*` queues,
    declared and used by the dispatcher's own broker user."""
    broker, worker, _ = secured
    sent = task(image="localhost/no-such-image:1.0")
    broker.publish(sent)

    answer = broker.response(timeout=120)

    assert answer["id"] == sent["id"]
    assert answer["error"].startswith("image 'localhost/no-such-image:1.0' could not be pulled")
    assert "Failed to setup delayed delivery" not in worker.log()
    queues = rabbitmqctl("list_queues", "--no-table-headers", "name", "type").stdout
    assert "celery_delayed_0\tquorum" in queues


def test_the_cli_sends_a_task_and_waits_for_it_as_a_producer(
    secured: tuple[Broker, Worker, Users], tmp_path: Path
) -> None:
    """`dispatcher submit --wait` with a producer's user: it declares nothing of the
    dispatcher's, binds its reply queue to the progress events, and gets the answer."""
    broker, _, users = secured
    sent = task()
    path = tmp_path / "task.json"
    path.write_text(json.dumps(sent))
    env = {
        **broker.instance.env(),
        "AMQP_USER": users.names["producer"],
        "AMQP_PASSWORD": users.passwords["producer"],
    }

    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "submit", str(path), "--wait"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"id": sent["id"], "output": "from-a-producer\n", "exit": 0}


def test_the_async_client_follows_a_task_as_a_producer(
    secured: tuple[Broker, Worker, Users],
) -> None:
    """The asyncio client with a producer's user: it declares nothing of the dispatcher's, its
    reply queue gets the progress events and the answer."""
    broker, _, users = secured
    sent = task()
    settings = Settings.from_env(
        {
            **broker.instance.env(),
            "AMQP_USER": users.names["producer"],
            "AMQP_PASSWORD": users.passwords["producer"],
        }
    )

    async def follow() -> tuple[list[str], Response]:
        async with AsyncClient(settings) as client, await client.submit(sent) as handle:
            states = [event.state async for event in handle.events(timeout=90)]
            return states, await handle.result(timeout=10)

    states, response = asyncio.run(follow())

    assert response == Response(id=sent["id"], output="from-a-producer\n", exit=0)
    assert states[-1] == "succeeded"
    assert "running" in states


def test_a_task_that_no_queue_takes_is_refused_by_both_clients_not_lost(
    secured: tuple[Broker, Worker, Users], tmp_path: Path
) -> None:
    """A producer whose TASK_ROUTING_KEY is not the worker's: the broker returns the task, and
    the CLI and the asyncio client say so instead of waiting for an answer that cannot come."""
    broker, _, users = secured
    env = {
        **broker.instance.env(),
        "AMQP_USER": users.names["producer"],
        "AMQP_PASSWORD": users.passwords["producer"],
        "TASK_ROUTING_KEY": "not-the-workers",
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task()))
    error = (
        f"no queue takes messages routed 'not-the-workers' on the exchange "
        f"'{env['TASK_EXCHANGE_NAME']}': the broker returned the message unsent (is "
        "TASK_ROUTING_KEY the worker's?)"
    )

    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "submit", str(path), "--wait"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    async def submit() -> None:
        async with AsyncClient(Settings.from_env(env)) as client:
            await client.submit(task())

    assert (result.returncode, result.stderr) == (1, f"dispatcher: {error}\n")
    with pytest.raises(ClientError) as caught:
        asyncio.run(submit())
    assert str(caught.value) == error
    assert broker.no_more_responses(2) == []


def test_a_producer_cannot_write_to_the_internal_queue_or_by_queue_name(
    secured: tuple[Broker, Worker, Users],
) -> None:
    broker, _, users = secured
    env = broker.instance.env()
    internal = env["CELERY_QUEUE_NAME"]
    forged = [[task()["id"], "uid"], {}, {}]
    producer = users.url("producer")

    assert "access to exchange 'amq.default'" in refused(producer, "", internal, forged)
    assert f"access to exchange '{internal}'" in refused(producer, internal, internal, forged)
    assert "access to exchange 'amq.default'" in refused(producer, "", env["TASK_QUEUE_NAME"], {})
    assert f"'{env['RESPONSE_EXCHANGE_NAME']}'" in refused(
        producer, env["RESPONSE_EXCHANGE_NAME"], "response", {"id": "fake"}
    )


def test_an_internal_message_the_dispatcher_did_not_seal_is_dropped_unrun(
    secured: tuple[Broker, Worker, Users],
) -> None:
    broker, worker, _ = secured
    internal = Queue(broker.instance.env()["CELERY_QUEUE_NAME"], durable=True, no_declare=True)
    sent = task()
    headers = {"task": "dispatcher.submit", "id": "forged-1", "argsrepr": "", "kwargsrepr": ""}
    # With the broker's admin user: even a user who may write to the internal queue is refused.
    Producer(broker.conn.default_channel).publish(
        [[sent, {"correlation_id": "c-1"}], {}, {}],
        serializer="json",
        routing_key=internal.name,
        headers=headers,
    )
    deadline = time.monotonic() + 30
    while "dropped internal message 'forged-1' (dispatcher.submit)" not in worker.log():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.3)
    assert kubectl("-n", "dispatcher", "get", "job", sent["id"], check=False).returncode != 0
    assert broker.no_more_responses(1) == []
    assert broker.consumers(broker.task_queue.name) == 1  # and the worker carries on


def test_secrets_never_show_in_logs_answers_settings_or_metrics(
    secured: tuple[Broker, Worker, Users],
) -> None:
    broker, worker, users = secured
    secrets_used = [users.passwords["dispatcher"], SIGNING_KEY]
    ok, bad = task(), {"id": "t-bad", "image": 42}
    broker.publish(ok)
    broker.publish(bad)
    broker.publish(task(), reply_to="not-a-reply-queue")
    answers = [
        m.body if isinstance(m.body, str) else m.body.decode()
        for m in broker.responses(3, timeout=90)
    ]
    env = {**broker.instance.env(), "HEALTH_PORT": "0"}
    config = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "config"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    bad_setting = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "config"],
        env={**env, "INTERNAL_SIGNING_KEY": SIGNING_KEY + ",short"},
        capture_output=True, text=True, timeout=60, check=False,
    ).stderr  # fmt: skip

    port = broker.instance.extra["HEALTH_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()

    assert "dispatcher_tasks_received_total 3.0" in metrics
    assert "INTERNAL_SIGNING_KEY=********" in config
    assert "AMQP_PASSWORD=********" in config
    assert bad_setting.startswith("dispatcher: invalid setting INTERNAL_SIGNING_KEY: key 2")
    for text in [worker.log(), *answers, config, bad_setting, metrics]:
        for secret in secrets_used:
            assert secret not in text


def test_the_definitions_document_creates_both_users_on_a_real_broker(
    local_stack: dict[str, str], tmp_path: Path
) -> None:
    """What the manifests' broker loads at start, imported into the stack's broker."""
    name = "d" + uuid.uuid4().hex[:8]
    passwords = {"dispatcher": secrets.token_hex(16), "producer": secrets.token_hex(16)}
    users = {"dispatcher": f"{name}-dispatcher", "producer": f"{name}-producer"}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMQP_")},
        "AMQP_USER": users["dispatcher"],
        "AMQP_PASSWORD": passwords["dispatcher"],
        "PRODUCER_AMQP_PASSWORD": passwords["producer"],
    }
    made = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "permissions", "--definitions",
         "--producer-user", users["producer"]],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert passwords["dispatcher"] not in made.stdout
    path = tmp_path / "definitions.json"
    path.write_text(made.stdout)
    rabbitmqctl("import_definitions", str(path))
    url = "amqp://{}:{}@" + f"{first_node()}//"
    try:
        with Connection(url.format(users["dispatcher"], passwords["dispatcher"])) as conn:
            conn.connect()  # the hashed password is the dispatcher's
        granted = rabbitmqctl("list_user_permissions", users["dispatcher"]).stdout
        assert "dispatcher\\.internal" in granted
        assert "amq\\.default" in granted
        internal = [[{"id": "t-1"}, {}], {}, {}]
        producer = url.format(users["producer"], passwords["producer"])
        assert "amq.default" in refused(producer, "", "dispatcher.internal", internal)
    finally:
        for user in users.values():
            rabbitmqctl("delete_user", user)
