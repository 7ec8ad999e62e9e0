"""The one retry policy for Kubernetes calls made from Celery tasks."""

from __future__ import annotations

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
