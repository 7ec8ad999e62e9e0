"""The one retry policy: exponential backoff, capped; and what each failure means per task."""

from __future__ import annotations

import pytest
from amqp.exceptions import MessageNacked
from celery.exceptions import Reject, Retry

from dispatcher.errors import ForbiddenError, TaskConflictError, TransientKubeError
from dispatcher.worker.retry import (
    API_UNAVAILABLE,
    CANCEL,
    FINALIZE,
    INTERNAL_ERROR,
    MAX_ATTEMPTS,
    SUBMIT,
    Action,
    Cause,
    Handling,
    Policy,
    backoff,
    classify,
)


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [
        pytest.param(0, 1.0, id="first-retry"),
        pytest.param(1, 2.0, id="second"),
        pytest.param(2, 4.0, id="doubles"),
        pytest.param(5, 32.0, id="last-below-cap"),
        pytest.param(6, 60.0, id="capped"),
        pytest.param(MAX_ATTEMPTS - 1, 60.0, id="last-attempt"),
        pytest.param(1000, 60.0, id="far-beyond"),
    ],
)
def test_backoff_doubles_from_one_second_up_to_a_minute(attempt: int, seconds: float) -> None:
    assert backoff(attempt) == seconds


# --- what each failure means, per task ---------------------------------------------------------

OUTAGE = TransientKubeError("create Job t-1: ConnectError: connection refused")
FORBIDDEN = ForbiddenError("create Job t-1: jobs.batch is forbidden (HTTP 403)", 403)
CONFLICT = TaskConflictError("t-1")


@pytest.mark.parametrize(
    ("policy", "exc", "attempt", "handling"),
    [
        pytest.param(SUBMIT, Retry(), 0, Handling(Action.RAISE, Cause.CELERY), id="celery-retry"),
        pytest.param(SUBMIT, Reject("x"), 0, Handling(Action.RAISE, Cause.CELERY), id="reject"),
        pytest.param(
            SUBMIT, MessageNacked(), 100, Handling(Action.RETRY, Cause.BROKER, 60.0), id="broker"
        ),
        pytest.param(
            FINALIZE, OSError("reset"), 0, Handling(Action.RETRY, Cause.BROKER, 1.0), id="socket"
        ),
        pytest.param(
            SUBMIT, OUTAGE, 2, Handling(Action.RETRY, Cause.TRANSIENT, 4.0), id="api-down-retried"
        ),
        pytest.param(
            SUBMIT,
            OUTAGE,
            MAX_ATTEMPTS,
            Handling(Action.ANSWER, Cause.TRANSIENT, error=API_UNAVAILABLE),
            id="api-down-for-good",
        ),
        pytest.param(
            FINALIZE,
            OUTAGE,
            MAX_ATTEMPTS + 50,
            Handling(Action.RETRY, Cause.TRANSIENT, 60.0),
            id="finalize-waits-out-the-api",
        ),
        pytest.param(
            SUBMIT,
            FORBIDDEN,
            0,
            Handling(Action.ANSWER, Cause.PERMANENT, error=str(FORBIDDEN)),
            id="submit-answers-a-permanent-error-with-its-text",
        ),
        pytest.param(
            CANCEL,
            FORBIDDEN,
            0,
            Handling(Action.ANSWER, Cause.PERMANENT, error=INTERNAL_ERROR),
            id="cancel-keeps-the-operators-text-in-the-log",
        ),
        pytest.param(
            FINALIZE,
            FORBIDDEN,
            3,
            Handling(Action.RETRY, Cause.PERMANENT, 8.0),
            id="finalize-retries-what-a-person-must-fix",
        ),
        pytest.param(
            SUBMIT,
            CONFLICT,
            0,
            Handling(Action.ANSWER, Cause.CONFLICT, error=str(CONFLICT)),
            id="conflict",
        ),
        pytest.param(
            SUBMIT,
            KeyError("spec"),
            0,
            Handling(Action.ANSWER, Cause.DEFECT, error=INTERNAL_ERROR),
            id="submit-answers-a-defect",
        ),
        pytest.param(CANCEL, KeyError("x"), 0, Handling(Action.RAISE, Cause.DEFECT), id="cancel"),
        pytest.param(
            FINALIZE, KeyError("x"), 0, Handling(Action.RETRY, Cause.DEFECT, 1.0), id="finalize"
        ),
    ],
)
def test_each_failure_is_retried_answered_or_raised_by_the_tasks_policy(
    policy: Policy, exc: Exception, attempt: int, handling: Handling
) -> None:
    assert classify(exc, attempt, policy) == handling
