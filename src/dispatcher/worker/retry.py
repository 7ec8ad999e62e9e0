"""The one retry policy for Kubernetes calls made from Celery tasks."""

from __future__ import annotations

MAX_ATTEMPTS = 12
"""About seven minutes (1 + 2 + 4 + … + 60 s) of retrying a transient Kubernetes error before
answering with it."""

LOG_ATTEMPTS = 8
"""After this many attempts at finalizing a Job (about three minutes), a log read that still
fails (the node is gone, the kubelet does not answer) is given up: the task is answered with its
exit code and an error saying its logs could not be read."""


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): 1, 2, 4 … capped at 60."""
    return float(min(60, 2**attempt))
