"""The one retry policy: exponential backoff for transient Kubernetes errors, capped."""

from __future__ import annotations

import pytest

from dispatcher.worker.retry import MAX_ATTEMPTS, backoff


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
