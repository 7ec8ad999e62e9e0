"""The one retry policy of the Celery tasks: how long to wait, and what each failure means.

:func:`classify` turns an exception raised inside a task (and the task's retry count) into one
`Handling`: retry after a delay, answer with an error, or raise. Broker trouble is waited out
however long it lasts (the message is never dropped); a transient Kubernetes error is retried
with :func:`backoff` and then answered (submit, cancel) or retried for ever (finalize); what
cannot pass by itself is answered at once, or, in finalize, retried, since the Job and so its
answer wait in the cluster. Each task states its `Policy`; the rules are here only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amqp.exceptions import MessageNacked
from celery.exceptions import Reject, Retry
from kombu.exceptions import KombuError, OperationalError

from dispatcher.errors import KubeError, TaskConflictError, TransientKubeError

BROKER_ERRORS = (KombuError, OperationalError, MessageNacked, ConnectionError, OSError)

MAX_ATTEMPTS = 12
"""Retries of a transient Kubernetes error before answering with it: about seven minutes
(1 + 2 + 4 + … + 60 s; :func:`retry_window` says it in words, from these numbers)."""

LOG_ATTEMPTS = 8
"""After this many attempts at finalizing a Job (about three minutes), a log read that still
fails (the node is gone, the kubelet does not answer) is given up: the task is answered with its
exit code and an error saying its logs could not be read."""

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): 1, 2, 4 … capped at 60."""
    return float(min(60, 2**attempt))


def waited(attempts: int) -> float:
    """Seconds spent waiting between the first try and the last of `attempts` retries."""
    return sum(backoff(attempt) for attempt in range(attempts))


def retry_window(attempts: int = MAX_ATTEMPTS) -> str:
    """How long `attempts` retries last, in the words the docs and the error answer use:
    'about seven minutes'."""
    minutes = round(waited(attempts) / 60)
    spoken = _NUMBERS[minutes] if minutes < len(_NUMBERS) else str(minutes)
    return f"about {spoken} minute{'s' if minutes != 1 else ''}"


# --- what a Celery task does after a failure ----------------------------------------------------


class Action(enum.Enum):
    RETRY = "retry"  # run the task again after `delay` seconds
    ANSWER = "answer"  # publish an error answer and end the task
    RAISE = "raise"  # let it out: Celery's own Retry/Reject, or a defect the task does not answer


class Cause(enum.Enum):
    CELERY = "celery"  # a Retry or Reject already decided
    BROKER = "broker"  # the broker refused or went away: waited out however long it lasts
    TRANSIENT = "transient"  # a Kubernetes error that may pass (429, 5xx, no connection)
    PERMANENT = "permanent"  # a Kubernetes error that will not pass by itself
    CONFLICT = "conflict"  # another task holds the id
    DEFECT = "defect"  # anything else: a bug of ours


@dataclass(frozen=True)
class Policy:
    """What one Celery task does with each cause of failure."""

    attempts: int | None
    """Retries of a transient Kubernetes error before it is answered; None: retried for ever
    (finalize: the Job, and so the answer, waits in the cluster)."""
    permanent: Action
    """A permanent Kubernetes error or a conflict: ANSWER it, or RETRY (only a person can fix
    it, and the task's work waits in the cluster meanwhile)."""
    defect: Action
    explain: bool = True
    """Answer a permanent Kubernetes error with its own text; else with INTERNAL_ERROR (the
    text is for the operator, e.g. RBAC that forbids the call)."""


SUBMIT = Policy(MAX_ATTEMPTS, Action.ANSWER, Action.ANSWER)
CANCEL = Policy(MAX_ATTEMPTS, Action.ANSWER, Action.RAISE, explain=False)
FINALIZE = Policy(None, Action.RETRY, Action.RETRY)

INTERNAL_ERROR = "internal error of the dispatcher; its log has the details"
API_UNAVAILABLE = (
    f"the Kubernetes API stayed unavailable for {retry_window()} of retries; the task did not run"
)


@dataclass(frozen=True)
class Handling:
    """The decision on one failure: what to do, why, after how long, with which answer."""

    action: Action
    cause: Cause
    delay: float = 0.0  # seconds before the retry
    error: str | None = None  # the answer's error text (ANSWER)


def classify(exc: BaseException, attempt: int, policy: Policy) -> Handling:
    """How a task that failed with `exc` on its retry number `attempt` (0 first) goes on."""
    if isinstance(exc, Retry | Reject):
        return Handling(Action.RAISE, Cause.CELERY)
    delay = backoff(min(attempt, 6))
    if isinstance(exc, TransientKubeError):
        if policy.attempts is None or attempt < policy.attempts:
            return Handling(Action.RETRY, Cause.TRANSIENT, delay)
        return Handling(Action.ANSWER, Cause.TRANSIENT, error=API_UNAVAILABLE)
    if isinstance(exc, TaskConflictError | KubeError):
        cause = Cause.CONFLICT if isinstance(exc, TaskConflictError) else Cause.PERMANENT
        text = str(exc) if policy.explain else INTERNAL_ERROR
        return _by(policy.permanent, cause, delay, text)
    if isinstance(exc, BROKER_ERRORS):
        return Handling(Action.RETRY, Cause.BROKER, delay)
    return _by(policy.defect, Cause.DEFECT, delay, INTERNAL_ERROR)


def _by(action: Action, cause: Cause, delay: float, error: str) -> Handling:
    if action is Action.RETRY:
        return Handling(action, cause, delay)
    return Handling(action, cause, error=error if action is Action.ANSWER else None)
