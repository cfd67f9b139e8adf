"""Admission on the node: parts start only while their CPU slots fit, in the order they arrived.

The scheduler sends a part only onto slots its database shows free, so a part normally passes
at once. The gate is the node's own guard of the invariant that no slot is given to two running
parts: a part whose slot the scheduler freed a moment before this node finished releasing it
(the exit report goes out just before the release) waits here until it is free, or is stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WAIT_POLL_S = 0.5
EPSILON = 1e-9


class NodeCapacity:
    def __init__(self, slots: float):
        self.slots = float(slots)
        self._in_use = 0.0
        self._queue: list[int] = []  # tickets of waiting parts, oldest first
        self._next_ticket = 0
        self._cond = threading.Condition()

    def acquire(self, cpus: float, stopped: Callable[[], bool]) -> bool:
        """Wait for `cpus` slots in arrival order; False when the part was stopped while waiting."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append(ticket)
            try:
                while True:
                    if stopped():
                        return False
                    fits = self._in_use + cpus <= self.slots + EPSILON or self._in_use <= EPSILON
                    if self._queue[0] == ticket and fits:
                        self._in_use += cpus
                        return True
                    self._cond.wait(WAIT_POLL_S)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def release(self, cpus: float) -> None:
        with self._cond:
            self._in_use = max(0.0, self._in_use - cpus)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiters re-check whether they were stopped."""
        with self._cond:
            self._cond.notify_all()
