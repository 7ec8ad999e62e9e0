"""The stack's broker: RabbitMQ from its own Debian trixie root (stack/build-rabbitmq.sh), run by
recorded PID, configured as RabbitMQ 4.3 behaves by default; with BROKER_NODES=3, a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp.exceptions import InternalError
from harness.stack import REPO, pinned_versions, rabbitmqctl, stack_env
from kombu import Connection, Queue

pytestmark = pytest.mark.cluster
RUN = Path("/run/dispatcher-stack")


def nodes() -> int:
    return int(stack_env().get("BROKER_NODES", "1"))


def url(node: int = 1) -> str:
    """guest's URL of broker node `node` (node N listens on 5672 + 10*(N-1))."""
    return f"amqp://guest:guest@127.0.0.1:{5672 + 10 * (node - 1)}//"


def node_pid(node: int) -> int:
    name = "rabbitmq" if node == 1 else f"rabbitmq-{node}"
    return int((RUN / "pids" / f"{name}.pid").read_text())


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"broker-test-{uuid.uuid4().hex[:8]}"
    yield name
    with Connection(url()) as conn:
        conn.default_channel.queue_delete(name)


def test_the_broker_is_the_pinned_rabbitmq_of_its_root() -> None:
    version = rabbitmqctl("eval", "rabbit_misc:version().").stdout.strip()
    assert version == f'"{pinned_versions()["RABBITMQ_VERSION"]}"'
    cache = os.environ.get("STACK_CACHE", "/var/cache/dispatcher-stack")
    root = f"{cache}/rabbitmq-{pinned_versions()['RABBITMQ_VERSION']}"
    for node in range(1, nodes() + 1):
        pid = node_pid(node)  # the recorded PID is the node's Erlang VM itself, in the root
        assert os.readlink(f"/proc/{pid}/root") == root
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp"


def test_rabbitmqctl_lists_queues_with_their_type(queue_name: str) -> None:
    with Connection(url()) as conn:
        Queue(queue_name, durable=True, queue_arguments={"x-queue-type": "quorum"})(
            conn.default_channel
        ).declare()
    listed = subprocess.run(
        ["bash", "stack/rabbitmqctl.sh", "1", "-q", "list_queues", "name", "type"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert f"{queue_name}\tquorum" in listed.splitlines()


def test_rabbitmqctl_refuses_a_node_the_stack_does_not_have() -> None:
    result = subprocess.run(
        ["bash", "stack/rabbitmqctl.sh", str(nodes() + 1), "status"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_a_transient_non_exclusive_queue_is_refused_as_in_rabbitmq_4_3() -> None:
    with Connection(url()) as conn, pytest.raises(InternalError, match="transient_nonexcl_queues"):
        conn.default_channel.queue_declare(f"transient-{uuid.uuid4().hex[:8]}", durable=False)


def test_global_qos_is_not_permitted() -> None:
    raw = rabbitmqctl("eval", "rabbit_deprecated_features:is_permitted(global_qos).").stdout
    # The first call also prints the warning the node logs, before or after the result.
    assert "false" in [line.strip() for line in raw.splitlines()], raw


three_nodes = pytest.mark.skipif(
    not (REPO / ".local/env").exists() or nodes() != 3, reason="needs BROKER_NODES=3 make up"
)


@three_nodes
def test_three_nodes_run_as_one_cluster() -> None:
    running = json.loads(rabbitmqctl("cluster_status", "--formatter", "json").stdout)
    assert sorted(running["running_nodes"]) == [
        "dispatcher-2@localhost",
        "dispatcher-3@localhost",
        "dispatcher@localhost",
    ]


@three_nodes
def test_a_quorum_queue_has_a_member_on_every_node(queue_name: str) -> None:
    with Connection(url(2)) as conn:
        Queue(queue_name, durable=True, queue_arguments={"x-queue-type": "quorum"})(
            conn.default_channel
        ).declare()
    status = subprocess.run(
        ["bash", "stack/rabbitmqctl.sh", "3", "quorum_status", queue_name, "--formatter", "json"],
        cwd=REPO, env={**os.environ, "RABBITMQ_TOOL": "rabbitmq-queues"},
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    members = {row["Node Name"]: row["Membership"] for row in json.loads(status)}
    assert members == {
        "dispatcher@localhost": "voter",
        "dispatcher-2@localhost": "voter",
        "dispatcher-3@localhost": "voter",
    }
