"""Retries by failure cause: the task fields, the Job the Kubernetes Job controller retries on
its own (backoffLimit and pod failure policy), and the verdict with every attempt."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from dispatcher.errors import InvalidTaskError
from dispatcher.kube.conventions import RETRIES_ANNOTATION
from dispatcher.kube.jobspec import build_job
from dispatcher.kube.outcome import (
    Outcome,
    attempts_of,
    judge_attempt_deadline,
    judge_cancelled,
    judge_finished,
    will_retry,
)
from dispatcher.messages.response import Attempt, Response
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import TaskPolicy, parse_task

from .fakes import (
    COMPLETE,
    SETTINGS,
    TASK,
    FakeKube,
    KubeObject,
    condition,
    create_job_for,
    job_status,
    make_pod,
    terminated,
)

VALID = {"id": "t-1", "image": "localhost/testbox:1.0", "volume_mount_path": "/work"}


def body(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


# --- the task fields ---------------------------------------------------------------------------


def test_a_task_asks_for_retries_and_the_exit_codes_they_are_for() -> None:
    task = parse_task(body(retries=2, retry_on_exit_codes=[75, 3]))

    assert (task.retries, task.retry_on_exit_codes) == (2, (75, 3))
    assert task.to_json()["retries"] == 2
    assert task.to_json()["retry_on_exit_codes"] == [75, 3]


def test_without_retries_a_task_and_its_digest_are_as_before() -> None:
    plain, zero = parse_task(body()), parse_task(body(retries=0))

    assert (plain.retries, plain.retry_on_exit_codes) == (0, None)
    assert "retries" not in plain.to_json()
    assert zero.digest() == plain.digest()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param(
            {"retries": 6},
            "retries: must be a whole number from 0 to 5 (TASK_MAX_RETRIES), got 6",
            id="above-the-maximum",
        ),
        pytest.param(
            {"retries": -1},
            "retries: must be a whole number from 0 to 5 (TASK_MAX_RETRIES), got -1",
            id="negative",
        ),
        pytest.param(
            {"retries": "2"},
            "retries: must be a whole number from 0 to 5 (TASK_MAX_RETRIES), got string",
            id="string",
        ),
        pytest.param(
            {"retries": 1.5},
            "retries: must be a whole number from 0 to 5 (TASK_MAX_RETRIES), got 1.5",
            id="fraction",
        ),
        pytest.param(
            {"retries": True},
            "retries: must be a whole number from 0 to 5 (TASK_MAX_RETRIES), got boolean",
            id="boolean",
        ),
        pytest.param(
            {"retry_on_exit_codes": 3},
            "retry_on_exit_codes: must be an array of exit codes, got number",
            id="not-an-array",
        ),
        pytest.param(
            {"retry_on_exit_codes": []},
            "retry_on_exit_codes: must not be empty (leave it out: any non-zero exit code)",
            id="empty",
        ),
        pytest.param(
            {"retry_on_exit_codes": [3, 0]},
            "retry_on_exit_codes[1]: must be an exit code from 1 to 255, got 0",
            id="zero-is-success",
        ),
        pytest.param(
            {"retry_on_exit_codes": [256]},
            "retry_on_exit_codes[0]: must be an exit code from 1 to 255, got 256",
            id="above-255",
        ),
        pytest.param(
            {"retry_on_exit_codes": ["3"]},
            "retry_on_exit_codes[0]: must be an exit code from 1 to 255, got string",
            id="string-code",
        ),
        pytest.param(
            {"retry_on_exit_codes": [3, 4, 3]},
            "retry_on_exit_codes[2]: repeats exit code 3",
            id="duplicate",
        ),
    ],
)
def test_bad_retry_fields_are_refused_naming_the_field(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidTaskError) as refused:
        parse_task(body(**changes))

    assert str(refused.value) == error
    assert refused.value.task_id == "t-1"


def test_the_operator_can_turn_retries_off() -> None:
    with pytest.raises(InvalidTaskError, match=r"from 0 to 0 \(TASK_MAX_RETRIES\), got 1"):
        parse_task(body(retries=1), TaskPolicy(max_retries=0))


# --- the Job -----------------------------------------------------------------------------------


def spec(**task: Any) -> dict[str, Any]:
    job: dict[str, Any] = build_job(dataclasses.replace(TASK, **task), ReplyRoute("c-1"), SETTINGS)[
        "spec"
    ]
    return job


DISRUPTIONS = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def exit_rule(action: str, operator: str, values: list[int]) -> dict[str, Any]:
    return {
        "action": action,
        "onExitCodes": {"containerName": "task", "operator": operator, "values": values},
    }


def test_a_task_without_retries_gets_the_job_it_always_got() -> None:
    job = spec()

    assert job["backoffLimit"] == 0
    assert job["podFailurePolicy"] == {"rules": [DISRUPTIONS, exit_rule("FailJob", "NotIn", [0])]}
    assert RETRIES_ANNOTATION not in job["template"]["metadata"]["annotations"]
    assert spec(retry_on_exit_codes=(3,)) == job  # no retries: the codes change nothing


def test_retries_for_any_failure_count_every_non_zero_exit() -> None:
    job = spec(retries=2)

    assert job["backoffLimit"] == 2
    assert job["podFailurePolicy"] == {"rules": [DISRUPTIONS, exit_rule("Count", "NotIn", [0])]}
    assert job["template"]["metadata"]["annotations"][RETRIES_ANNOTATION] == "2"


def test_retries_for_listed_codes_fail_the_job_at_once_on_any_other() -> None:
    job = spec(retries=3, retry_on_exit_codes=(75, 3))

    assert job["backoffLimit"] == 3
    assert job["podFailurePolicy"]["rules"] == [
        DISRUPTIONS,
        exit_rule("FailJob", "NotIn", [3, 75]),  # sorted, as the API server wants
        exit_rule("Count", "In", [3, 75]),
    ]


# --- the attempts ------------------------------------------------------------------------------


def pod_of(job: KubeObject, suffix: str, second: int, **kwargs: Any) -> KubeObject:
    """A pod of `job` made `second` seconds after T0 (the order of the attempts)."""
    pod = make_pod(job, suffix, **kwargs)
    pod["metadata"]["creationTimestamp"] = f"2025-01-10T10:00:{second:02d}Z"
    return pod


def three_attempts(job: KubeObject) -> list[KubeObject]:
    return [
        pod_of(job, "c", 40, phase="Succeeded", state=terminated(0)),
        pod_of(job, "a", 0, phase="Failed", state=terminated(3, "Error")),
        pod_of(job, "b", 20, phase="Failed", state=terminated(137, "OOMKilled")),
    ]


def test_the_verdict_is_the_last_attempts_with_every_attempt_oldest_first() -> None:
    job = create_job_for(FakeKube())
    verdict = judge_finished(job, three_attempts(job), max_run_seconds=600)

    assert (verdict.outcome, verdict.pod_name, verdict.exit_code) == (
        Outcome.SUCCEEDED,
        "t-1-c",
        0,
    )
    assert verdict.attempts == (
        Attempt(exit=3, node="node-1", start="2025-01-10T10:00:00Z", end="2025-01-10T10:05:00Z"),
        Attempt(
            exit=137,
            error="the container was killed: out of memory (OOMKilled)",
            node="node-1",
            start="2025-01-10T10:00:00Z",
            end="2025-01-10T10:05:00Z",
        ),
        Attempt(exit=0, node="node-1", start="2025-01-10T10:00:00Z", end="2025-01-10T10:05:00Z"),
    )


def test_one_attempt_lists_none_and_a_disrupted_pod_is_no_attempt() -> None:
    job = create_job_for(FakeKube())
    evicted = pod_of(job, "a", 0, phase="Failed", state=terminated(137, "Error"))
    evicted["status"]["conditions"].append(condition("DisruptionTarget"))
    ran = pod_of(job, "b", 20, phase="Succeeded", state=terminated(0))

    assert attempts_of(job, [evicted, ran], max_run_seconds=600) == ()
    assert judge_finished(job, [ran], max_run_seconds=600).attempts == ()


def test_a_response_lists_its_attempts_only_when_there_were_several() -> None:
    one = Response(id="t-1", output="", exit=0, attempts=(Attempt(exit=0),))
    two = Response(id="t-1", exit=0, attempts=(Attempt(exit=3, node="n"), Attempt(exit=0)))

    assert one.encode() == b'{"id":"t-1","output":"","exit":0}'
    assert two.to_json()["attempts"] == [
        {"exit": 3, "error": None, "node": "n", "start": None, "end": None},
        {"exit": 0, "error": None, "node": None, "start": None, "end": None},
    ]
    assert Response.decode(two.encode()) == two


def test_a_cancel_during_the_backoff_keeps_the_logs_so_far_and_the_attempts() -> None:
    job = create_job_for(FakeKube())
    pods = three_attempts(job)[1:]  # two failed; the next one never came

    verdict = judge_cancelled(pods, job)

    assert (verdict.outcome, verdict.pod_name, verdict.error) == (
        Outcome.CANCELLED,
        "t-1-b",
        "cancelled",
    )
    assert [attempt.exit for attempt in verdict.attempts] == [3, 137]


@pytest.mark.parametrize(
    ("status", "retries", "expected"),
    [
        pytest.param(job_status(failed=1), 2, True, id="backoff-after-a-failure"),
        pytest.param(job_status(active=1, failed=2), 2, True, id="last-attempt-running"),
        pytest.param(job_status(active=1), 2, False, id="first-attempt"),
        pytest.param(job_status(failed=1), 0, False, id="no-retries"),
        pytest.param(job_status(failed=3), 2, False, id="retries-used-up"),
        pytest.param(
            job_status(condition("FailureTarget", reason="PodFailurePolicy"), failed=1),
            2,
            False,
            id="failed-by-policy",
        ),
        pytest.param(COMPLETE, 2, False, id="complete"),
    ],
)
def test_a_job_will_retry_only_while_it_has_failed_pods_and_retries_left(
    status: Any, retries: int, expected: bool
) -> None:
    job = {"spec": {"backoffLimit": retries}, "status": status}

    assert will_retry(job) is expected


def test_a_pod_past_its_deadline_ends_a_task_that_could_run_again() -> None:
    job = create_job_for(FakeKube(), dataclasses.replace(TASK, retries=2, timeout_seconds=30))
    late = pod_of(
        job, "a", 0, phase="Failed", state=terminated(137, "Error"), reason="DeadlineExceeded"
    )
    failed = pod_of(job, "a", 0, phase="Failed", state=terminated(3, "Error"))

    verdict = judge_attempt_deadline(job, [late], max_run_seconds=600)

    assert verdict is not None
    assert (verdict.outcome, verdict.exit_code, verdict.error) == (
        Outcome.DEADLINE_EXCEEDED,
        None,
        "deadline exceeded: the task ran longer than 30 s",
    )
    assert judge_attempt_deadline(job, [failed], max_run_seconds=600) is None


def test_the_jobs_backstop_deadline_leaves_room_for_every_attempt_and_its_backoff() -> None:
    one, three = spec(timeout_seconds=60), spec(timeout_seconds=60, retries=2)

    assert three["activeDeadlineSeconds"] - one["activeDeadlineSeconds"] == 2 * 60 + 10 + 20
    assert three["template"]["spec"]["activeDeadlineSeconds"] == 60  # each attempt's own
