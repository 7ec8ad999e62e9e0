"""MAX_ACTIVE_JOBS: room for more Jobs, counted from the watch plus this worker's hand-overs."""

from __future__ import annotations

from dispatcher.core.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_room_is_the_limit_less_active_jobs_and_hand_overs_not_yet_seen() -> None:
    active = [3]
    gate = Admission(5, lambda: active[0])

    gate.handed_over("t-1")

    assert gate.room() == 1
    gate.handed_over("t-2")
    assert gate.room() == 0
    active[0] = 5  # the watch now shows both Jobs ...
    gate.settled("t-1")
    gate.settled("t-2")  # ... and they stop counting twice
    assert gate.room() == 0
    active[0] = 2  # three Jobs ended
    assert gate.room() == 3


def test_no_room_before_the_active_jobs_are_known() -> None:
    gate = Admission(5, lambda: None)  # the Job watch has not listed yet

    assert gate.room() == 0


def test_no_limit_means_room_even_before_the_watch_listed() -> None:
    gate = Admission(0, lambda: None)

    assert gate.room() > 1_000_000


def test_a_hand_over_that_never_became_a_job_stops_counting_after_its_ttl() -> None:
    clock = Clock()
    gate = Admission(2, lambda: 0, pending_ttl=120.0, clock=clock)
    gate.handed_over("t-1")
    gate.handed_over("t-2")
    assert gate.room() == 0

    clock.now += 121

    assert gate.room() == 2
    assert gate.pending() == 0
