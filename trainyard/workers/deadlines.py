"""One timer thread per node for every part's deadlines (its wall clock, its first checkpoint sync).

A `threading.Timer` per part costs a thread start and a thread for the part's whole life; most
parts end long before their deadlines. Here the deadlines wait in one heap, served by one thread
started on first use. Actions run on that thread, so they must return at once: whatever may
block (stopping a process tree with a grace period) starts a thread of its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

COMPACT_ABOVE = 1000


class Deadline:
    """A pending action; `cancel()` before it is due and it never runs."""

    __slots__ = ("action", "cancelled", "due_s", "owner")

    def __init__(self, due_s: float, action: Callable[[], None], owner: Deadlines):
        self.due_s, self.action, self.cancelled, self.owner = due_s, action, False, owner

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.owner.cancelled()


class Deadlines:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cancelled = 0

    def cancelled(self) -> None:
        """One more deadline was cancelled; past half the heap they are dropped (week-long wall clocks)."""
        with self._wake:
            self._cancelled += 1
            if self._cancelled > COMPACT_ABOVE and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def call_later(self, delay_s: float, action: Callable[[], None]) -> Deadline:
        deadline = Deadline(self.clock() + delay_s, action, self)
        with self._wake:
            heapq.heappush(self._heap, (deadline.due_s, next(self._seq), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is deadline:
                self._wake.notify()  # due before whatever the thread waits for
        return deadline

    def poke(self) -> None:
        """Make the thread look at its clock again now (a clock that is not the wall's moved)."""
        with self._wake:
            self._wake.notify()

    def pending(self) -> int:
        """Deadlines neither due nor cancelled (cancelled ones leave the heap when they come due)."""
        with self._wake:
            return sum(1 for _, _, d in self._heap if not d.cancelled)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > self.clock():
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - self.clock())
                    self._wake.wait(timeout)
                _, _, deadline = heapq.heappop(self._heap)
                if deadline.cancelled:
                    self._cancelled -= 1
                    continue
                deadline.cancelled = True  # ran: a later cancel() is a no-op
            try:
                deadline.action()
            except Exception:
                log.exception("a deadline's action failed")


# The node's one instance (agent and part runner); tests make their own with a clock of theirs.
NODE_DEADLINES = Deadlines()
