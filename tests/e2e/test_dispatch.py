"""Message in, response out: the dispatcher on the real broker and the real cluster."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness.stack import Broker, Worker, kubectl, run_cli, stack_env
from kombu import Producer

from dispatcher.cli import EXIT_TIMEOUT

pytestmark = pytest.mark.cluster
Dispatcher = tuple[Broker, Worker]


def task(*script: str, **fields: Any) -> dict[str, Any]:
    """A task running `sh -c SCRIPT` in the test image with the claim at /work."""
    document: dict[str, Any] = {
        "id": "t-" + uuid.uuid4().hex[:10],
        "image": stack_env()["TEST_IMAGE"],
        "volume_mount_path": "/work",
    }
    if script:
        document["cmd"] = ["/bin/sh", "-c"]
        document["args"] = list(script)
    document.update(fields)
    return document


def jobs_of(broker: Broker) -> list[str]:
    selector = f"job-dispatcher.io/instance={broker.instance.name}"
    out = kubectl("-n", "dispatcher", "get", "jobs", "-l", selector, "-o", "name").stdout
    return out.split()


def wait_for_jobs(broker: Broker, count: int, timeout: float = 60) -> list[str]:
    """The instance's Jobs once there are `count` of them (or whatever exists at the timeout)."""
    deadline = time.monotonic() + timeout
    names = jobs_of(broker)
    while len(names) != count and time.monotonic() < deadline:
        time.sleep(0.3)
        names = jobs_of(broker)
    return names


def test_success_returns_output_and_exit_zero(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task('echo "hello from $TASK_ID"')
    broker.publish(sent)

    assert broker.response() == {
        "id": sent["id"],
        "output": f"hello from {sent['id']}\n",
        "exit": 0,
    }


def test_non_zero_exit_returns_stderr_in_output_and_no_error(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo to-stdout; echo to-stderr >&2; exit 7")
    broker.publish(sent)

    response = broker.response()
    assert response["exit"] == 7
    assert sorted(response["output"].splitlines()) == ["to-stderr", "to-stdout"]
    assert "error" not in response


def test_job_reads_the_seeded_claim_file_from_its_working_directory(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("pwd; cat seed.txt", volume_mount_path="/mnt/shared", working_dir="/mnt/shared")
    broker.publish(sent)

    assert broker.response()["output"] == "/mnt/shared\nseeded by the local stack\n"


def test_json_output_comes_back_byte_exact(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    document = {"b": [1, 2.5, None], "a": 'é ünïcødé \\u00e9 "quoted"', "nested": {"x": True}}
    text = json.dumps(document, ensure_ascii=False, indent=1)
    sent = task(f"printf '%s' '{text}'")
    broker.publish(sent)

    response = broker.response()
    assert response["output"] == text
    assert json.loads(response["output"]) == document


def test_non_utf8_output_is_replaced_not_fatal(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task(r"printf 'ok \377\376 end\n'; exit 0")
    broker.publish(sent)

    assert broker.response()["output"] == "ok \ufffd\ufffd end\n"


def test_a_command_reading_stdin_gets_eof_and_finishes(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("cat; echo after-eof")
    broker.publish(sent)

    assert broker.response(timeout=60) == {"id": sent["id"], "output": "after-eof\n", "exit": 0}


def test_reply_to_and_correlation_id_are_honoured(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    channel = broker.conn.channel()
    reply_queue, _, _ = channel.queue_declare("", exclusive=True)
    sent = task("echo rpc")
    broker.publish(sent, reply_to=reply_queue, correlation_id="corr-42")

    deadline = time.monotonic() + 60
    while (message := channel.basic_get(reply_queue, no_ack=True)) is None:
        assert time.monotonic() < deadline, "no response on the reply_to queue"
        time.sleep(0.2)
    assert json.loads(message.body) == {"id": sent["id"], "output": "rpc\n", "exit": 0}
    assert message.properties["correlation_id"] == "corr-42"
    assert message.properties["content_type"] == "application/json"
    assert message.properties["delivery_mode"] == 2
    assert message.properties["message_id"].startswith(sent["id"] + ".")
    assert broker.no_more_responses(1) == []  # not also on the response exchange


def test_a_reply_to_not_allowed_is_answered_on_the_response_exchange_only(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    channel = broker.conn.channel()
    victim = f"victim-{uuid.uuid4().hex[:8]}"  # a queue the producer does not own
    channel.queue_declare(victim, durable=True, auto_delete=True)
    sent = task("echo never")
    broker.publish(sent, reply_to=victim, correlation_id="corr-7")

    messages = broker.responses(1, timeout=30)
    assert json.loads(messages[0].body) == {
        "id": sent["id"],
        "error": f"reply_to: {victim!r} is not a reply queue this dispatcher answers to "
        "(allowed: amq.gen-*, amq.rabbitmq.reply-to*); this answer went to the response exchange",
    }
    assert messages[0].properties["correlation_id"] == "corr-7"
    assert channel.basic_get(victim, no_ack=True) is None
    assert kubectl("-n", "dispatcher", "get", "job", sent["id"], check=False).returncode != 0


@pytest.mark.settings(MAX_OUTPUT_BYTES="1024")
def test_output_over_the_cap_keeps_the_tail_and_says_it_was_cut(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done")
    broker.publish(sent)

    output = broker.response()["output"]
    first, _, rest = output.partition("\n")
    assert first.startswith("[output truncated: first ")
    assert first.endswith(" bytes omitted]")
    assert rest.endswith("line-498\nline-499\n")
    assert len(rest.encode()) <= 1024


def test_the_same_message_delivered_twice_makes_one_job_and_one_response(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task("sleep 3; echo once")
    broker.publish(sent)
    broker.publish(sent)

    assert wait_for_jobs(broker, 1) == [f"job.batch/{sent['id']}"]
    assert broker.response() == {"id": sent["id"], "output": "once\n", "exit": 0}
    assert broker.no_more_responses(3) == []


def test_the_same_id_with_a_different_task_is_answered_with_a_conflict(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    first = task("sleep 5; echo first")
    broker.publish(first)
    assert wait_for_jobs(broker, 1)
    broker.publish({**first, "args": ["echo second"]})

    conflict = broker.response(timeout=30)
    assert conflict["id"] == first["id"]
    assert "different task" in conflict["error"]
    assert first["id"] in conflict["error"]
    assert broker.response() == {"id": first["id"], "output": "first\n", "exit": 0}


@pytest.mark.settings(IMAGE_PULL_GRACE_SECONDS="5")
def test_a_missing_image_is_answered_within_the_grace_period_and_the_job_removed(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task(image="localhost/no-such-image:1.0")
    started = time.monotonic()
    broker.publish(sent)

    response = broker.response(timeout=60)
    assert set(response) == {"id", "error"}
    assert response["error"].startswith("image 'localhost/no-such-image:1.0' could not be pulled")
    assert time.monotonic() - started < 40
    assert wait_for_jobs(broker, 0, timeout=30) == []


@pytest.mark.settings(JOB_MAX_RUN_SECONDS="3")
def test_a_task_over_the_maximum_run_time_gets_deadline_exceeded_with_its_logs(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task("echo started; sleep 60; echo never")
    broker.publish(sent)

    response = broker.response(timeout=90)
    assert response["error"] == "deadline exceeded: the task ran longer than 3 s"
    assert response["output"] == "started\n"
    assert "exit" not in response


INVALID = [
    pytest.param(b"not json at all", None, "message: is not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage", None, "message: is not UTF-8", id="not-utf8"),
    pytest.param(b'["a", "list"]', None, "message: must be a JSON object, got array", id="array"),
    pytest.param(b'"just a string"', None, "got string", id="string"),
    pytest.param(b"{}", None, "id: is required", id="empty-object"),
    pytest.param({"id": 12}, None, "id: must be a string, got number", id="id-number"),
    pytest.param({"id": "Upper"}, "Upper", "id: must be an RFC 1035 label", id="id-capitals"),
    pytest.param({"id": "a" * 64}, "a" * 64, "id: must be at most 63 characters", id="id-too-long"),
    pytest.param({"id": "ok-1"}, "ok-1", "image: is required", id="no-image"),
    pytest.param({"id": "ok-2", "image": ""}, "ok-2", "image: must not be empty", id="empty-image"),
    pytest.param(
        {"id": "ok-3", "image": "busybox:1", "volume_mount_path": "relative/path"},
        "ok-3",
        "volume_mount_path: must be an absolute path",
        id="relative-mount",
    ),
    pytest.param(
        {"id": "ok-4", "image": "busybox:1", "volume_mount_path": "/w", "args": "echo hi"},
        "ok-4",
        "args: must be an array of strings, got string",
        id="args-string",
    ),
    pytest.param(
        {"id": "ok-5", "image": "busybox:1", "volume_mount_path": "/w", "cmd": ["sh", 5]},
        "ok-5",
        "cmd[1]: must be a string, got number",
        id="cmd-item-number",
    ),
    pytest.param(
        {"id": "ok-6", "image": "busybox:1", "volume_mount_path": "/w/../etc"},
        "ok-6",
        "volume_mount_path:",
        id="mount-dotdot",
    ),
    pytest.param(
        {"id": "ok-7", "image": "busybox:1", "volume_mount_path": "/w", "working_dir": ""},
        "ok-7",
        "working_dir: must not be empty",
        id="empty-working-dir",
    ),
    pytest.param(
        b'{"id": "big", "pad": "' + b"x" * 70000 + b'"}',
        "big",
        "message: is 70",
        id="oversized",
    ),
]


def test_invalid_messages_are_each_answered_and_the_consumer_stays_alive(
    dispatcher: Dispatcher,
) -> None:
    broker, worker = dispatcher
    for param in INVALID:
        body, _, _ = param.values
        broker.publish(body if isinstance(body, bytes) else json.dumps(body).encode())

    responses = [json.loads(m.body) for m in broker.responses(len(INVALID), timeout=60)]
    for param, response in zip(INVALID, responses, strict=True):
        _, task_id, error = param.values
        assert response.get("id") == task_id, param.id
        assert error in response["error"], (param.id, response)
        assert set(response) <= {"id", "error"}
        assert "Traceback" not in response["error"]
        assert "Error(" not in response["error"]
    assert worker.proc is not None
    assert worker.proc.poll() is None
    sent = task("echo still-alive")
    broker.publish(sent)
    assert broker.response()["output"] == "still-alive\n"


def test_unknown_fields_and_attempts_to_choose_privileges_are_ignored(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task(
        "id -u; cat /proc/self/status | grep CapEff",
        namespace="kube-system",
        serviceAccountName="default",
        privileged=True,
        hostPath="/etc",
        securityContext={"privileged": True},
    )
    broker.publish(sent)

    response = broker.response()
    assert response["exit"] == 0
    uid, caps = response["output"].splitlines()
    assert uid == "65532"  # JOB_RUN_AS_USER: never root unless JOB_ALLOW_ROOT
    assert caps.split() == ["CapEff:", "0000000000000000"]


def submit_wait(
    broker: Broker, sent: dict[str, Any], folder: Path, timeout: str
) -> subprocess.CompletedProcess[str]:
    """`dispatcher submit FILE --wait --wait-timeout T` as a user runs it, FILE (in `folder`)
    holding the task `sent`."""
    path = folder / f"{sent['id']}.json"
    path.write_text(json.dumps(sent))
    return run_cli(broker, "submit", str(path), "--wait", "--wait-timeout", timeout)


def test_cli_submit_wait_prints_the_response_and_exits_with_the_jobs_code(
    dispatcher: Dispatcher, tmp_path: Path
) -> None:
    broker, _ = dispatcher
    sent = task("echo from-cli; exit 4")

    result = submit_wait(broker, sent, tmp_path, "90")

    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout) == {"id": sent["id"], "output": "from-cli\n", "exit": 4}
    assert broker.no_more_responses(1) == []  # answered on the caller's reply queue only


def test_submit_wait_run_again_after_a_timeout_gets_the_answer_and_none_is_dropped(
    dispatcher: Dispatcher, tmp_path: Path
) -> None:
    broker, _ = dispatcher
    sent = task("sleep 6; echo late")

    gave_up = submit_wait(broker, sent, tmp_path, "1")  # its private reply queue goes with it
    again = submit_wait(broker, sent, tmp_path, "90")  # the same task: joins the Job's routes

    assert gave_up.returncode == EXIT_TIMEOUT, gave_up.stderr
    assert again.returncode == 0, again.stderr
    answer = {"id": sent["id"], "output": "late\n", "exit": 0}
    assert json.loads(again.stdout) == answer
    # The first caller's queue no longer exists: its copy is kept on the response queue.
    assert broker.response(timeout=30) == answer
    assert broker.no_more_responses(2) == []


def test_a_task_sent_again_after_its_answer_gets_the_same_answer_without_a_second_run(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task("cat /proc/sys/kernel/random/uuid")  # different on every run
    broker.publish(sent)
    (first,) = broker.responses(1)

    broker.publish(sent, correlation_id="late-retry")  # a producer's retry, after the answer
    (again,) = broker.responses(1, timeout=30)
    broker.publish({**sent, "args": ["echo other"]})  # another task under the same id

    assert json.loads(again.body) == json.loads(first.body)  # the same run's output
    assert again.properties["message_id"] == first.properties["message_id"]
    assert again.properties["correlation_id"] == "late-retry"
    conflict = broker.response(timeout=30)
    assert conflict == {
        "id": sent["id"],
        "error": f"id: a different task with id '{sent['id']}' is running or was just answered; "
        "use a new id",
    }
    assert wait_for_jobs(broker, 1, timeout=1) == [f"job.batch/{sent['id']}"]  # kept a while


@pytest.mark.settings(IDEMPOTENCY_WINDOW_SECONDS="2")
def test_after_the_idempotency_window_the_id_is_free_again(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("cat /proc/sys/kernel/random/uuid")
    broker.publish(sent)
    first = broker.response()

    assert wait_for_jobs(broker, 0, timeout=60) == []  # Kubernetes deleted it (its TTL)
    broker.publish(sent)
    second = broker.response()

    assert second["exit"] == first["exit"] == 0
    assert second["output"] != first["output"]  # ran again


def test_pickle_is_neither_accepted_on_the_task_queue_nor_run_from_the_internal_queue(
    dispatcher: Dispatcher,
) -> None:
    broker, worker = dispatcher
    sent = task("echo never")
    broker.publish(pickle.dumps(sent), content_type="application/x-python-serialize")
    assert broker.response(timeout=30) == {"error": "message: is not UTF-8 text"}

    internal = f"{broker.instance.name}.internal"  # the worker declared it
    Producer(broker.conn.default_channel).publish(
        {"task": sent, "route": {}},
        serializer="pickle",
        routing_key=internal,
        headers={"task": "dispatcher.submit", "id": "pickled-1", "argsrepr": "", "kwargsrepr": ""},
    )
    deadline = time.monotonic() + 30
    while "Refusing to deserialize untrusted content of type pickle" not in worker.log():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    assert wait_for_jobs(broker, 0, timeout=2) == []
    assert broker.consumers(broker.task_queue.name) == 1  # and the worker carries on


@pytest.mark.parametrize(
    ("cause", "logged"),
    [
        pytest.param(
            "its service account (INTERNAL_SERVICE_ACCOUNT_NAME) is missing",
            'serviceaccount "no-such-account" not found',
            marks=pytest.mark.settings(
                INTERNAL_SERVICE_ACCOUNT_NAME="no-such-account", IMAGE_PULL_GRACE_SECONDS="5"
            ),
            id="no-service-account",
        ),
        pytest.param(  # JOB_ALLOW_ROOT leaves the user to the image: `restricted` refuses it
            "it violates the namespace's Pod Security level",
            'violates PodSecurity "restricted',
            marks=pytest.mark.settings(JOB_ALLOW_ROOT="true", IMAGE_PULL_GRACE_SECONDS="5"),
            id="root-allowed-in-a-restricted-namespace",
        ),
    ],
)
def test_a_pod_that_cannot_be_created_is_answered_with_the_reason_and_the_job_removed(
    dispatcher: Dispatcher, cause: str, logged: str
) -> None:
    broker, worker = dispatcher
    sent = task("echo never")
    broker.publish(sent)

    response = broker.response(timeout=60)
    assert set(response) == {"id", "error"}
    assert response["error"] == f"the pod could not be created: {cause}"
    assert logged in worker.log()  # the names stay in the worker's log
    assert wait_for_jobs(broker, 0, timeout=30) == []


def test_a_job_deleted_by_someone_else_is_answered(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("sleep 60")
    broker.publish(sent, correlation_id="corr-del")
    assert wait_for_jobs(broker, 1)
    pod = f"batch.kubernetes.io/job-name={sent['id']}"
    kubectl("-n", "dispatcher", "wait", "pod", "-l", pod, "--for=condition=Ready", "--timeout=60s")

    kubectl("-n", "dispatcher", "delete", "job", sent["id"], "--wait=false")

    assert broker.response(timeout=60) == {
        "id": sent["id"],
        "error": "the Job was deleted before it finished (its pod had started)",
    }
    assert broker.no_more_responses(2) == []
    assert wait_for_jobs(broker, 0, timeout=30) == []  # answered, the Job is let go of
