"""The one retry policy for Kubernetes calls made from Celery tasks."""

from __future__ import annotations

MAX_ATTEMPTS = 12
"""About seven minutes (1 + 2 + 4 + … + 60 s) of retrying a transient Kubernetes error before
answering with it."""


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0-based): 1, 2, 4 … capped at 60."""
    return float(min(60, 2**attempt))
