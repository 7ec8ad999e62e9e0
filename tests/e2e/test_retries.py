"""Retries by failure cause on the real cluster: the Job controller runs the pod again for the
listed exit codes, the one answer lists every attempt, and a cancel in the backoff, a pod past
its deadline and a worker killed between attempts keep it to exactly one right answer."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from harness.stack import Instance, kubectl, running
from kombu import Exchange, Queue

from tests.e2e.test_dispatch import Dispatcher, task, wait_for_jobs
from tests.e2e.test_resilience import answers_after_restart

pytestmark = pytest.mark.cluster

# Counts its runs in a file on the shared claim (named after the task, so runs of the suite do
# not meet) and exits with EXIT until run number PASS, which succeeds.
COUNTED = (
    'n=$(( $(cat "/work/$TASK_ID.runs" 2>/dev/null || echo 0) + 1 )); '
    'echo "$n" > "/work/$TASK_ID.runs"; echo "attempt $n"; '
    'if [ "$n" -lt {passes} ]; then exit {code}; fi'
)


def counted(passes: int, code: int = 3) -> str:
    return COUNTED.replace("{passes}", str(passes)).replace("{code}", str(code))


def job_of(task_id: str) -> dict[str, Any] | None:
    out = kubectl("-n", "dispatcher", "get", "jobs", "-o", "json").stdout
    return next((j for j in json.loads(out)["items"] if j["metadata"]["name"] == task_id), None)


def pods_of(task_id: str) -> list[dict[str, Any]]:
    selector = f"job-dispatcher.io/task-id={task_id}"
    out = kubectl("-n", "dispatcher", "get", "pods", "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def wait_for_failed(task_id: str, count: int, timeout: float = 120) -> dict[str, Any]:
    """The Job once `count` of its pods failed and it waits out its backoff (no pod active)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_of(task_id)
        status = (job or {}).get("status") or {}
        if status.get("failed", 0) >= count and not status.get("active"):
            assert job is not None
            return job
        time.sleep(0.2)
    raise AssertionError(f"Job {task_id} did not fail {count} pods: {job_of(task_id)}")


def assert_attempts(response: dict[str, Any], exits: list[int]) -> None:
    """`attempts` holds one run per exit code, oldest first, each on a node with its times."""
    attempts = response["attempts"]
    assert [a["exit"] for a in attempts] == exits
    assert all(a["error"] is None and a["node"] for a in attempts), attempts
    starts = [datetime.fromisoformat(a["start"]) for a in attempts]
    ends = [datetime.fromisoformat(a["end"]) for a in attempts]
    assert all(start <= end for start, end in zip(starts, ends, strict=True))
    assert starts == sorted(starts)
    assert all(a.keys() == {"exit", "error", "node", "start", "end"} for a in attempts)


def test_a_task_that_fails_twice_then_succeeds_answers_exit_zero_with_three_attempts(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task(counted(3), retries=2)
    broker.publish(sent)

    response = broker.response(timeout=240)  # two backoffs: 10 s, then 20 s
    assert {k: v for k, v in response.items() if k != "attempts"} == {
        "id": sent["id"],
        "output": "attempt 3\n",
        "exit": 0,
    }
    assert_attempts(response, [3, 3, 0])
    assert len(pods_of(sent["id"])) == 3
    assert broker.no_more_responses(3) == []


def test_an_exit_code_not_listed_is_not_retried(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo failing; exit 4", retries=2, retry_on_exit_codes=[3])
    broker.publish(sent)

    assert broker.response(timeout=120) == {"id": sent["id"], "output": "failing\n", "exit": 4}
    time.sleep(12)  # past the first backoff: no second pod came
    assert len(pods_of(sent["id"])) == 1
    assert broker.no_more_responses(1) == []


def test_retries_used_up_answer_the_last_exit_with_every_attempt(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task("echo failing; exit 3", retries=2, retry_on_exit_codes=[3])
    broker.publish(sent)

    response = broker.response(timeout=240)
    assert {k: v for k, v in response.items() if k != "attempts"} == {
        "id": sent["id"],
        "output": "failing\n",
        "exit": 3,
    }
    assert_attempts(response, [3, 3, 3])
    assert broker.no_more_responses(3) == []


def test_a_cancel_during_the_backoff_stops_the_task_with_one_answer(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task("echo started; exit 3", retries=3)
    broker.publish(sent)
    wait_for_failed(sent["id"], 1)  # the Job controller waits 10 s before the next pod

    broker.publish({"cancel": sent["id"]})

    assert broker.response(timeout=60) == {
        "id": sent["id"],
        "output": "started\n",
        "error": "cancelled",
    }
    assert wait_for_jobs(broker, 0, timeout=30) == []
    deadline = time.monotonic() + 60
    while pods_of(sent["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pods_of(sent["id"]) == []  # no next attempt was left behind
    assert broker.no_more_responses(15) == []  # past the backoff: nothing more


@pytest.mark.settings(JOB_MAX_RUN_SECONDS="600")
def test_a_run_past_its_deadline_ends_the_task_however_many_retries_are_left(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    sent = task("echo started; sleep 60; echo never", timeout_seconds=3, retries=2)
    broker.publish(sent)

    assert broker.response(timeout=90) == {
        "id": sent["id"],
        "output": "started\n",
        "error": "deadline exceeded: the task ran longer than 3 s",
    }
    assert wait_for_jobs(broker, 0, timeout=30) == []
    time.sleep(12)  # past the first backoff: no second pod came
    assert len(pods_of(sent["id"])) <= 1
    assert broker.no_more_responses(1) == []


PROGRESS_EXCHANGE = "e2e.retries.progress"


@pytest.mark.settings(PROGRESS_EXCHANGE_NAME=PROGRESS_EXCHANGE)
def test_each_retry_is_told_once_as_a_progress_event(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task(counted(2, code=75), retries=1, retry_on_exit_codes=[75])
    listener = Queue(
        "",
        Exchange(PROGRESS_EXCHANGE, type="topic", durable=True),
        routing_key=sent["id"],
        exclusive=True,
        auto_delete=True,
    )(broker.conn.channel())
    listener.declare()
    broker.publish(sent, correlation_id="c-retries")

    response = broker.response(timeout=180)
    assert (response["exit"], [a["exit"] for a in response["attempts"]]) == (0, [75, 0])
    events = []
    deadline = time.monotonic() + 10
    while len(events) < 4 and time.monotonic() < deadline:
        message = listener.get(no_ack=True)
        if message is None:
            time.sleep(0.2)
            continue
        events.append((json.loads(message.body), message.properties))

    assert [body["state"] for body, _ in events] == ["queued", "running", "retrying", "succeeded"]
    retrying, properties = events[2]
    assert (retrying["attempt"], retrying["exit"]) == (1, 75)
    assert properties["message_id"].endswith(".retrying.1")
    assert listener.get(no_ack=True) is None


def test_a_worker_killed_between_attempts_still_gives_one_answer_with_every_attempt(
    log_dir: Path,
) -> None:
    instance = Instance()
    with running(instance, log_dir) as (broker, worker):
        sent = task(counted(3), retries=2)
        broker.publish(sent)
        wait_for_failed(sent["id"], 1)
        worker.kill(signal.SIGKILL)  # no worker while the Job runs its second attempt

        wait_for_failed(sent["id"], 2, timeout=120)
        [response] = answers_after_restart(instance, broker, log_dir, 1)
    assert {k: v for k, v in response.items() if k != "attempts"} == {
        "id": sent["id"],
        "output": "attempt 3\n",
        "exit": 0,
    }
    assert_attempts(response, [3, 3, 0])


def test_the_same_task_sent_again_while_it_retries_joins_it(dispatcher: Dispatcher) -> None:
    broker, _ = dispatcher
    sent = task(counted(2), retries=1)
    broker.publish(sent)
    wait_for_failed(sent["id"], 1)

    broker.publish(sent)  # a redelivery, or the producer sending it again

    response = broker.response(timeout=120)
    assert (response["output"], response["exit"]) == ("attempt 2\n", 0)
    assert [a["exit"] for a in response["attempts"]] == [3, 0]
    assert len(pods_of(sent["id"])) == 2  # one Job, run twice, not a second Job
    assert broker.no_more_responses(3) == []
