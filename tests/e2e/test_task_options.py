"""Per-task options within the operator's limits, cancellation and progress events, on the real
broker and the real cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness.stack import Broker, kubectl
from kombu import Exchange, Queue

from tests.e2e.test_dispatch import Dispatcher, task, wait_for_jobs

pytestmark = pytest.mark.cluster


def pod_of(task_id: str) -> dict[str, Any] | None:
    out = kubectl(
        "-n",
        "dispatcher",
        "get",
        "pods",
        "-l",
        f"job-dispatcher.io/task-id={task_id}",
        "-o",
        "json",
    ).stdout
    items = json.loads(out)["items"]
    return items[0] if items else None


def wait_for_pod(
    task_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = pod_of(task_id)
        if pod is not None and ready(pod):
            return pod
        time.sleep(0.5)
    raise AssertionError(f"the pod of {task_id} did not get there: {pod_of(task_id)}")


def running(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running"


def unschedulable(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions") or []
    return any(c.get("reason") == "Unschedulable" for c in conditions)


def pulling_fails(pod: dict[str, Any]) -> bool:
    statuses = pod["status"].get("containerStatuses") or []
    reasons = {(s.get("state") or {}).get("waiting", {}).get("reason") for s in statuses}
    return bool(reasons & {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"})


def by_id(responses: list[Any]) -> dict[str, dict[str, Any]]:
    decoded = [json.loads(message.body) for message in responses]
    return {document["id"]: document for document in decoded}


# --- task fields --------------------------------------------------------------------------------


def test_env_reaches_the_container_beside_task_id(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task('echo "$GREETING $TASK_ID"', env={"GREETING": "hello there"})
    broker.publish(sent)

    assert broker.response(timeout=90) == {
        "id": sent["id"],
        "output": f"hello there {sent['id']}\n",
        "exit": 0,
    }


@pytest.mark.settings(JOB_MAX_RUN_SECONDS="600")
def test_a_tasks_own_timeout_stops_it_with_its_logs_so_far(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo started; sleep 60; echo never", timeout_seconds=3)
    broker.publish(sent)

    response = broker.response(timeout=90)
    assert response == {
        "id": sent["id"],
        "output": "started\n",
        "error": "deadline exceeded: the task ran longer than 3 s",
    }


def test_resources_become_the_containers_requests_in_the_cluster(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("sleep 4; echo ok", resources={"cpu": "250m", "memory": "96Mi"})
    broker.publish(sent)

    pod = wait_for_pod(sent["id"], lambda pod: True)
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "250m",
        "memory": "96Mi",
    }
    assert broker.response(timeout=90) == {"id": sent["id"], "output": "ok\n", "exit": 0}


@pytest.mark.settings(
    TASK_MAX_ENV_VARS="2",
    TASK_MAX_ENV_BYTES="64",
    TASK_MAX_CPU="500m",
    TASK_MAX_MEMORY="256Mi",
    JOB_MAX_RUN_SECONDS="120",
)
def test_every_bound_is_answered_with_the_field_and_the_limit(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    cases = {
        "env-count": (
            {"env": {"A": "1", "B": "2", "C": "3"}},
            "env: must have at most 2 variables (TASK_MAX_ENV_VARS), got 3",
        ),
        "env-bytes": (
            {"env": {"A": "x" * 100}},
            "env: names and values must total at most 64 bytes (TASK_MAX_ENV_BYTES), got 101",
        ),
        "env-reserved": (
            {"env": {"TASK_ID": "x"}},
            "env.TASK_ID: is set by the dispatcher and cannot be overridden",
        ),
        "env-name": (
            {"env": {"A-B": "x"}},
            "env.A-B: names must be letters, digits and '_', not starting with a digit",
        ),
        "timeout": (
            {"timeout_seconds": 121},
            "timeout_seconds: must be a whole number of "
            "seconds from 1 to 120 (JOB_MAX_RUN_SECONDS), got 121",
        ),
        "cpu": (
            {"resources": {"cpu": "1"}},
            "resources.cpu: must be at most 500m (TASK_MAX_CPU), got '1'",
        ),
        "memory": (
            {"resources": {"memory": "1Gi"}},
            "resources.memory: must be at most 256Mi (TASK_MAX_MEMORY), got '1Gi'",
        ),
        "resource": (
            {"resources": {"nvidia.com/gpu": "1"}},
            "resources.nvidia.com/gpu: is not a resource a task may request; allowed: cpu, memory",
        ),
    }
    sent = {}
    for case, (fields, _) in cases.items():
        sent[case] = task("echo never", **fields)
        broker.publish(sent[case])

    answers = by_id(broker.responses(len(cases), timeout=60))
    for case, (_, error) in cases.items():
        task_id = sent[case]["id"]
        assert answers[task_id] == {"id": task_id, "error": f"{error}"}, case
    assert wait_for_jobs(broker, 0, timeout=5) == []  # none of them made a Job


# --- cancel ------------------------------------------------------------------------------------


def cancel(broker: Broker, task_id: str, **properties: Any) -> None:
    broker.publish({"cancel": task_id}, **properties)


def test_cancel_while_running_answers_once_with_the_logs_so_far(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo started; sleep 300; echo never")
    broker.publish(sent)
    wait_for_pod(sent["id"], running)
    time.sleep(1)  # let it print

    cancel(broker, sent["id"])

    assert broker.response(timeout=60) == {
        "id": sent["id"],
        "output": "started\n",
        "error": "cancelled",
    }
    assert wait_for_jobs(broker, 0, timeout=30) == []
    deadline = time.monotonic() + 60
    while pod_of(sent["id"]) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pod_of(sent["id"]) is None  # stopped, not left running
    assert broker.no_more_responses(2) == []


def test_cancel_while_queued_for_room_and_of_the_running_blocker(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    # Two tasks that each need most of the 2-CPU node: the second waits for room.
    blocker = task("echo blocking; sleep 300", resources={"cpu": "1500m"})
    queued = task("echo never", resources={"cpu": "1500m"})
    broker.publish(blocker)
    wait_for_pod(blocker["id"], running)
    broker.publish(queued)
    wait_for_pod(queued["id"], unschedulable)

    cancel(broker, queued["id"], correlation_id="cancel-queued")
    cancel(broker, blocker["id"])

    # The queued task's answer goes to its own route and to the cancel's (another correlation
    # id); the blocker's cancel came the same way as the task, so it is answered once.
    messages = broker.responses(3, timeout=60)
    answers = sorted(
        (json.loads(m.body)["id"], m.properties.get("correlation_id", ""), m.body) for m in messages
    )
    cancelled = json.dumps({"id": queued["id"], "error": "cancelled"}, separators=(",", ":"))
    stopped = {"id": blocker["id"], "output": "blocking\n", "error": "cancelled"}
    assert [(task_id, cid) for task_id, cid, _ in answers] == sorted(
        [(queued["id"], ""), (queued["id"], "cancel-queued"), (blocker["id"], "")]
    )
    for task_id, _, body in answers:
        if task_id == queued["id"]:
            assert (body if isinstance(body, str) else body.decode()) == cancelled
        else:
            assert json.loads(body) == stopped
    assert wait_for_jobs(broker, 0, timeout=30) == []
    assert broker.no_more_responses(2) == []


@pytest.mark.settings(IMAGE_PULL_GRACE_SECONDS="600")
def test_cancel_while_stuck_pulling_its_image(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task(image="localhost/no-such-image:1.0")
    broker.publish(sent)
    wait_for_pod(sent["id"], pulling_fails)

    cancel(broker, sent["id"])

    assert broker.response(timeout=60) == {"id": sent["id"], "error": "cancelled"}
    assert wait_for_jobs(broker, 0, timeout=30) == []


def test_a_cancel_with_nothing_to_stop_says_what_it_did_to_the_canceller(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    done = task("echo done")
    broker.publish(done)
    assert broker.response(timeout=90)["output"] == "done\n"

    cancel(broker, "no-such-task", correlation_id="c-unknown")
    cancel(broker, done["id"])  # answered, kept for the idempotency window
    cancel(broker, "Not A Label")

    answers = [json.loads(m.body) for m in broker.responses(3, timeout=60)]
    assert {
        "id": "no-such-task",
        "error": "cancelled: task 'no-such-task' had no Job yet; if it arrives within 86400 s "
        "(CANCEL_TOMBSTONE_SECONDS) it is answered 'cancelled' without running",
    } in answers
    assert {
        "id": done["id"],
        "error": f"cancel: task '{done['id']}' is not in progress: it has already ended",
    } in answers
    assert any(a.get("error", "").startswith("cancel: must be an RFC 1035 label") for a in answers)


# --- progress -----------------------------------------------------------------------------------


PROGRESS_EXCHANGE = "e2e.progress"


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME=PROGRESS_EXCHANGE)
def test_progress_events_of_one_task_arrive_in_order(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("sleep 2; echo done")
    listener = Queue(
        "",
        Exchange(PROGRESS_EXCHANGE, type="topic", durable=True),
        routing_key=sent["id"],  # this task's events only
        exclusive=True,
        auto_delete=True,
    )(broker.conn.channel())
    listener.declare()
    broker.publish(sent, correlation_id="c-progress")
    assert broker.response(timeout=90) == {"id": sent["id"], "output": "done\n", "exit": 0}

    events = []
    deadline = time.monotonic() + 10
    while len(events) < 3 and time.monotonic() < deadline:
        message = listener.get(no_ack=True)
        if message is None:
            time.sleep(0.2)
            continue
        events.append((json.loads(message.body), message.properties))

    assert [body["state"] for body, _ in events] == ["queued", "running", "succeeded"]
    assert events[1][0]["node"]
    assert events[2][0]["exit"] == 0
    assert all(body["id"] == sent["id"] for body, _ in events)
    assert all(props["correlation_id"] == "c-progress" for _, props in events)
    assert listener.get(no_ack=True) is None  # one event per state change


def test_a_burst_larger_than_the_node_with_half_of_it_cancelled(dispatcher: Dispatcher) -> None:
    """40 tasks on a node with room for about 20: half are cancelled, running or still waiting
    for room; each of the 40 gets exactly one right answer."""
    broker, _ = dispatcher
    sent = [task("echo started; sleep 10; echo finished") for _ in range(40)]
    for document in sent:
        broker.publish(document)
    wait_for_jobs(broker, 40, timeout=60)
    doomed = {document["id"] for document in sent[::2]}
    for task_id in sorted(doomed):
        broker.publish({"cancel": task_id})

    answers = [json.loads(m.body) for m in broker.responses(40, timeout=240)]
    assert sorted(a["id"] for a in answers) == sorted(d["id"] for d in sent)  # one each
    for answer in answers:
        if answer["id"] in doomed:
            assert answer["error"] == "cancelled", answer
            assert answer.get("output", "started\n") == "started\n"  # absent when it never ran
        else:
            assert answer == {"id": answer["id"], "output": "started\nfinished\n", "exit": 0}
    # The cancelled Jobs are gone; those that ran to their end stay for the idempotency window.
    kept = wait_for_jobs(broker, 20, timeout=60)
    assert sorted(name.split("/")[1] for name in kept) == sorted(
        d["id"] for d in sent if d["id"] not in doomed
    )
    assert broker.no_more_responses(3) == []
