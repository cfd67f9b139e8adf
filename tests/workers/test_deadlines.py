"""The node's deadline thread, on a clock the test moves."""

from __future__ import annotations

import threading
import time

from trainyard.workers.deadlines import COMPACT_ABOVE, Deadlines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _settle(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_actions_run_in_due_order_and_a_cancelled_one_never_runs() -> None:
    ran: list[str] = []
    done = threading.Event()
    deadlines = Deadlines()
    deadlines.call_later(0.3, lambda: (ran.append("late"), done.set()))
    deadlines.call_later(0.1, lambda: ran.append("early"))
    deadlines.call_later(0.2, lambda: ran.append("cancelled")).cancel()
    assert done.wait(5)
    assert ran == ["early", "late"]
    assert deadlines.pending() == 0


def test_a_sooner_deadline_wakes_the_waiting_thread() -> None:
    ran = threading.Event()
    deadlines = Deadlines()
    deadlines.call_later(3600, lambda: None)  # the thread now waits an hour
    started = time.monotonic()
    deadlines.call_later(0.05, ran.set)
    assert ran.wait(5) and time.monotonic() - started < 2


def test_nothing_runs_before_its_time_on_the_clock() -> None:
    clock = Clock()
    ran = threading.Event()
    deadlines = Deadlines(clock=clock)
    deadlines.call_later(10, ran.set)
    time.sleep(0.2)
    assert not ran.is_set()
    clock.now = 10.0
    deadlines.poke()
    assert ran.wait(5)


def test_a_failing_action_does_not_stop_the_others() -> None:
    ran = threading.Event()
    deadlines = Deadlines()
    deadlines.call_later(0.01, lambda: 1 / 0)
    deadlines.call_later(0.05, ran.set)
    assert ran.wait(5)


def test_cancelled_week_long_deadlines_do_not_pile_up() -> None:
    deadlines = Deadlines()
    for _ in range(COMPACT_ABOVE * 3):
        deadlines.call_later(7 * 86400, lambda: None).cancel()
    assert len(deadlines._heap) <= COMPACT_ABOVE * 2
    assert deadlines.pending() == 0
