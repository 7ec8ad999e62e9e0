"""AMQP over TLS on the real broker: the stack's RabbitMQ serves TLS on 5671 with a certificate
of the stack's own CA; the worker and the CLI speak it, verify the broker's certificate and name,
and can present a client certificate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.stack import Broker, Instance, Worker, rabbitmqctl, running, stack_env

from dispatcher.client import AsyncClient
from dispatcher.config import Settings
from dispatcher.errors import ClientError
from dispatcher.messages.response import Response

pytestmark = pytest.mark.cluster


def tls_env(**extra: str) -> dict[str, str]:
    env = stack_env()
    return {
        "AMQP_TLS": "true",
        "AMQP_HOST": "localhost",
        "AMQP_PORT": env["STACK_AMQPS_PORT"],
        "AMQP_CA_FILE": env["STACK_CA_FILE"],
        **extra,
    }


def tls_connections() -> int:
    listed = rabbitmqctl("list_connections", "ssl").stdout.split()
    return listed.count("true")


@pytest.fixture
def over_tls(local_stack: dict[str, str], log_dir: Path) -> Iterator[tuple[Broker, Worker]]:
    """A worker that reaches the broker over TLS only (the test's own client stays plain)."""
    with running(Instance(extra=tls_env()), log_dir) as pair:
        yield pair


def task() -> dict[str, str | list[str]]:
    return {
        "id": "t-" + uuid.uuid4().hex[:10],
        "image": stack_env()["TEST_IMAGE"],
        "volume_mount_path": "/work",
        "cmd": ["/bin/sh", "-c", "echo over-tls"],
    }


def cli(broker: Broker, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        env={**broker.instance.env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_worker_speaking_tls_answers_a_task(over_tls: tuple[Broker, Worker]) -> None:
    broker, _ = over_tls
    assert tls_connections() >= 1  # the worker consumes over TLS (the test's own client: plain)

    sent = task()
    broker.publish(sent)

    assert broker.response(timeout=90) == {"id": sent["id"], "output": "over-tls\n", "exit": 0}
    assert tls_connections() >= 2  # and publishes over TLS too


def test_the_cli_presents_a_client_certificate(
    over_tls: tuple[Broker, Worker], tmp_path: Path
) -> None:
    broker, _ = over_tls
    env = stack_env()
    sent = task()
    path = tmp_path / "task.json"
    path.write_text(json.dumps(sent))

    result = cli(
        broker,
        "submit",
        str(path),
        "--wait",
        "--wait-timeout",
        "90",
        AMQP_CERT_FILE=env["STACK_AMQP_CLIENT_CERT"],
        AMQP_KEY_FILE=env["STACK_AMQP_CLIENT_KEY"],
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == "over-tls\n"


def test_the_async_client_speaks_tls_and_checks_the_brokers_name(
    over_tls: tuple[Broker, Worker],
) -> None:
    broker, _ = over_tls
    env = stack_env()
    with_certificate = Settings.from_env(
        {
            **broker.instance.env(),
            "AMQP_CERT_FILE": env["STACK_AMQP_CLIENT_CERT"],
            "AMQP_KEY_FILE": env["STACK_AMQP_CLIENT_KEY"],
        }
    )
    other_name = Settings.from_env(
        {**broker.instance.env(), "AMQP_SERVER_NAME": "not-the-broker.example"}
    )
    sent = task()

    async def run() -> Response:
        async with AsyncClient(with_certificate) as client:
            return await client.run(sent, timeout=90)

    assert asyncio.run(run()) == Response(id=str(sent["id"]), output="over-tls\n", exit=0)
    with pytest.raises(ClientError, match=r"^cannot connect to RabbitMQ at localhost:") as caught:
        asyncio.run(AsyncClient(other_name).connect())
    assert "Hostname mismatch" in str(caught.value)


def test_a_broker_certificate_of_another_ca_or_name_is_refused(
    over_tls: tuple[Broker, Worker], tmp_path: Path
) -> None:
    broker, _ = over_tls
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key",
         "-out", "other-ca.crt", "-days", "1", "-subj", "/CN=someone-else"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task()))

    started = time.monotonic()
    other_ca = cli(broker, "submit", str(path), AMQP_CA_FILE=str(tmp_path / "other-ca.crt"))
    other_name = cli(broker, "submit", str(path), AMQP_SERVER_NAME="not-the-broker.example")

    for result in (other_ca, other_name):
        assert result.returncode == 1
        assert result.stderr.startswith("dispatcher: cannot connect to RabbitMQ at localhost:")
        assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "Hostname mismatch" in other_name.stderr
    assert time.monotonic() - started < 60
    assert broker.no_more_responses(1) == []  # nothing was sent


def test_a_tls_file_that_cannot_be_used_stops_the_worker_at_once(
    local_stack: dict[str, str],
) -> None:
    instance = Instance(extra=tls_env(AMQP_CA_FILE="/nonexistent/ca.crt"))

    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "worker"],
        env=instance.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr == (
        "dispatcher: invalid setting AMQP_CA_FILE: cannot be read as PEM CA certificates: "
        "No such file or directory\n"
    )
