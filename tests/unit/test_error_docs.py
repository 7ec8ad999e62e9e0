"""Every error answer the code can make is in docs/operations.md's table of answers.

Each text is made by the code itself, with what varies (names, numbers, the cluster's words)
set to markers; the fixed words between the markers must appear in the table, where `…` or `N`
stands for what varies. Every outcome and every error constant of the code must be among the
texts, so a new kind of answer fails here until it is documented."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import httpx2
import pytest

from dispatcher.config import Settings
from dispatcher.core import cancel, intake
from dispatcher.errors import InvalidTaskError, TaskConflictError
from dispatcher.kube import kueue, outcome
from dispatcher.kube.client import error_from_response
from dispatcher.kube.outcome import Outcome
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import parse_task

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
TABLE = DOC.read_text().split("## Common answers and what they mean", 1)[1].split("\n## ")[0]
WORDS = "zzvarieszz"  # a name or the cluster's words
NUMBER = 987654
SCHEDULER = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
SCHEDULER += "1 Preemption is not helpful for scheduling."
NOT_CREATED = (  # FailedCreate messages of each cause, and one of no known cause
    "serviceaccount x not found",
    "exceeded quota: q, requested: cpu=9, used: cpu=0, limited: cpu=1",
    "violates PodSecurity",
    "admission webhook x denied",
    "ValidatingAdmissionPolicy x denied",
    WORDS,
)
ERROR_MODULES = ("kube.outcome", "core.finalize", "core.cancel", "core.intake", "worker.tasks")


def ended(kind: str, **condition: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": kind, "status": "True", **condition}]}}


def pod(container: dict[str, Any], *, phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-12-05T04:00:00Z"},
        "spec": {"nodeName": "n", "containers": [{"name": "task", "image": WORDS}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "task", **container}], **status},
    }


def raised(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidTaskError) as caught:
        call(*args)
    return str(caught.value)


def outcome_texts() -> list[tuple[Outcome, str]]:
    """The error of every Outcome, made by the rules that decide it."""
    rules = {"max_run_seconds": NUMBER}
    oom = pod({"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}, phase="Failed")
    waiting = {"state": {"waiting": {"reason": "ErrImagePull", "message": WORDS}}}
    config = {"state": {"waiting": {"reason": "CreateContainerConfigError", "message": WORDS}}}
    scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    unschedulable = pod({}, conditions=[{**scheduled, "message": SCHEDULER}])
    verdicts = [
        outcome.judge_finished(ended("Failed", reason="DeadlineExceeded"), [], **rules),
        outcome.judge_finished(ended("Failed"), [oom], **rules),
        outcome.judge_finished(ended("Complete", reason=WORDS), [], **rules),
        outcome.judge_queue_timeout(NUMBER, WORDS),
        outcome.judge_not_admitted(WORDS),
        outcome.judge_deleted({}, [], **rules),
        outcome.judge_deleted({}, [pod({})], **rules),
        outcome.judge_deleted(ended("Complete"), [], **rules),
        outcome.judge_cancelled([]),
    ]
    for message in NOT_CREATED:
        verdicts.append(outcome.judge_not_created([{"reason": "FailedCreate", "message": message}]))
    stuck = [outcome.pod_stuck(pod(waiting)), outcome.pod_stuck(pod(config))]
    stuck.append(outcome.pod_stuck(unschedulable))
    texts = [(v.outcome, v.error) for v in verdicts if v is not None and v.error]
    return texts + [(s.outcome, s.message.replace(SCHEDULER, WORDS)) for s in stuck if s]


def other_texts() -> list[str]:
    """Every other error answer: validation at intake, submit, cancel, the API, the worker."""
    settings = Settings.from_env({"CANCEL_TOMBSTONE_SECONDS": str(NUMBER)})
    tasks = importlib.import_module("dispatcher.worker.tasks")
    finalize = importlib.import_module("dispatcher.core.finalize")
    control = intake.take(
        b'{"id": "t", "image": "i", "volume_mount_path": "/w"}',
        {},
        Settings.from_env({"TASK_ROUTING_KEY": WORDS}),
        control=True,
    )
    api = error_from_response(httpx2.Response(422, json={"message": WORDS}), f"create Job {WORDS}")
    return [
        raised(parse_task, b"not json").split(": Expecting")[0],
        raised(intake.check_reply_to, ReplyRoute(reply_to=WORDS), ("q.",)).replace("q.*", WORDS),
        raised(intake.check_deliveries, NUMBER, NUMBER),
        control.response.error,
        str(TaskConflictError(WORDS)),
        str(api).replace("422", str(NUMBER)),
        cancel.cancelled_before_start(WORDS, settings),
        cancel.not_in_progress_error(WORDS, cancel.Cancelled.ENDED),
        cancel.not_in_progress_error(WORDS, cancel.Cancelled.NO_SUCH_TASK),
        cancel.not_stopped_error(WORDS, WORDS),
        tasks.API_UNAVAILABLE,
        tasks.INTERNAL_ERROR,
        finalize.LOGS_UNAVAILABLE,
    ]


def fixed_words(text: str) -> list[str]:
    parts = text.replace(str(NUMBER), WORDS).split(WORDS)
    return [part.strip() for part in parts if len(part.strip()) >= 3]


TEXTS = [text for _, text in outcome_texts()] + other_texts()


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: t[:40])
def test_every_error_answer_is_in_the_table_of_answers(text: str) -> None:
    missing = [words for words in fixed_words(text) if words not in TABLE]

    assert not missing, f"docs/operations.md lacks {missing} (from {text!r})"


def test_every_outcome_that_is_an_error_has_a_text_above() -> None:
    covered = {kind for kind, _ in outcome_texts()}

    assert covered == set(Outcome) - {Outcome.SUCCEEDED}


def test_every_error_constant_of_the_code_is_among_the_texts_above() -> None:
    constants = {
        value
        for module in ERROR_MODULES
        for name, value in vars(importlib.import_module(f"dispatcher.{module}")).items()
        if name.lstrip("_").endswith(("_ERROR", "UNAVAILABLE")) and isinstance(value, str)
    }

    assert constants
    assert not [c for c in constants if not any(c in text for text in TEXTS)]


def test_kueues_deactivation_of_a_workload_is_in_the_table() -> None:
    evicted = [{"type": "Evicted", "status": "True", "message": WORDS}]
    workload = {"spec": {"active": False}, "status": {"conditions": evicted}}

    deactivated = kueue.never_admitted(workload)

    assert deactivated == f"Kueue deactivated the workload: {WORDS}"
    assert all(words in TABLE for words in fixed_words(deactivated))
