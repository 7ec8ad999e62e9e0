"""`dispatcher status` on the real stack: what an operator sees during a burst larger than the
node, and one finished task's timeline and log."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from harness.burst import BurstResult, run_burst
from harness.stack import LOCAL, Broker, Worker, run_cli

pytestmark = pytest.mark.cluster
Dispatcher = tuple[Broker, Worker]
BURST = 60
SLEEP = 20


def status_json(broker: Broker) -> dict[str, Any]:
    result = run_cli(broker, "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def counts(document: dict[str, Any]) -> dict[str, int]:
    return {state: value["count"] for state, value in document["states"].items()}


class BurstInBackground:
    """`run_burst` in a thread of its own, so the test can look while the tasks run."""

    def __init__(self, broker: Broker, count: int, seconds: float) -> None:
        self.result: BurstResult | None = None
        self._thread = threading.Thread(
            target=self._run, args=(broker, count, seconds), name="burst", daemon=True
        )

    def _run(self, broker: Broker, count: int, seconds: float) -> None:
        self.result = run_burst(broker, count, seconds, timeout=420)

    def __enter__(self) -> BurstInBackground:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=450)


@pytest.mark.settings(MAX_ACTIVE_JOBS="500", IMAGE_PULL_GRACE_SECONDS="5")
def test_status_shows_a_burst_larger_than_the_node_then_one_tasks_timeline(
    dispatcher: Dispatcher,
) -> None:
    broker, _ = dispatcher
    seen: list[dict[str, Any]] = []
    with BurstInBackground(broker, BURST, SLEEP) as burst:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            seen.append(status_json(broker))
            now = counts(seen[-1])
            if now["waiting_room"] > 0 and now["running"] > 0:
                break
            time.sleep(1)
        text = run_cli(broker, "status", timeout=60)
    (LOCAL / "logs" / "tests" / "status-during-burst.txt").write_text(text.stdout)

    assert burst.result is not None
    assert (burst.result.answered, burst.result.wrong, burst.result.duplicates) == (
        BURST,
        [],
        0,
    ), burst.result.summary()
    busiest = counts(seen[-1])
    assert busiest["waiting_room"] > 0, seen[-1]
    assert busiest["running"] > 0, seen[-1]
    assert sum(seen[-1]["nodes"].values()) == busiest["running"]
    queues = {queue["role"]: queue for queue in seen[-1]["queues"]}
    assert queues["tasks"]["name"] == broker.instance.env()["TASK_QUEUE_NAME"]
    assert queues["tasks"]["consumers"] == 1
    assert text.returncode == 0, text.stderr
    assert "waiting for room" in text.stdout
    assert "running per node" in text.stdout

    finished = next(iter(burst.result.answer_times))
    shown = run_cli(broker, "status", finished, timeout=60)
    (LOCAL / "logs" / "tests" / "status-of-a-task.txt").write_text(shown.stdout)
    assert shown.returncode == 0, shown.stderr
    assert f"task {finished}: answered" in shown.stdout
    for step in ("created", "scheduled", "started", "ended", "answered"):
        assert f"  {step}" in shown.stdout, shown.stdout
    assert shown.stdout.rstrip().endswith(f"  {finished}")  # the log's last line
    as_json = json.loads(run_cli(broker, "status", finished, "--json").stdout)
    assert [step["step"] for step in as_json["timeline"]] == [
        "created",
        "scheduled",
        "started",
        "ended",
        "answered",
    ]
    assert as_json["log_tail"] == f"{finished}\n"

    unknown = run_cli(broker, "status", "no-such-task")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("dispatcher: no Job for task no-such-task")
