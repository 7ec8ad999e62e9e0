"""The hand-over thread: sends in order off the consumer's thread; results are settled on the
thread that calls `settle` (the consumer's), never on the sender's."""

from __future__ import annotations

import select
import threading

from dispatcher.amqp.handover import HandOver


def wait_readable(fd: int) -> None:
    assert select.select([fd], [], [], 5)[0], "the hand-over never signalled"


def test_each_send_is_settled_in_order_on_the_settling_thread() -> None:
    watched: list[int] = []
    handover = HandOver(watch=watched.append)
    sent: list[int] = []
    settled: list[tuple[int, bool, str]] = []
    for i in range(50):
        handover.submit(
            lambda i=i: sent.append(i),
            lambda ok, i=i: settled.append((i, ok, threading.current_thread().name)),
        )
    while len(settled) < 50:
        wait_readable(watched[0])
        handover.settle()
    handover.close()

    assert sent == list(range(50))
    me = threading.current_thread().name
    assert settled == [(i, True, me) for i in range(50)]
    assert handover.pending() == 0


def test_a_send_that_fails_is_settled_as_not_sent_and_the_next_goes_on() -> None:
    handover = HandOver()
    results: list[tuple[str, bool]] = []

    def broken() -> None:
        raise ConnectionResetError(104, "broker connection lost")

    handover.submit(broken, lambda ok: results.append(("first", ok)))
    handover.submit(lambda: None, lambda ok: results.append(("second", ok)))
    handover.close()  # waits for the sender, then settles

    assert results == [("first", False), ("second", True)]
