"""Node liveness: a node is lost after `lost_after_s` without a heartbeat *seen by this leader*.

Only heartbeats observed while continuously leading count: when leadership starts again (a
failover, or this scheduler resumed after a pause and took the lease back) or Redis was away
(nobody could heartbeat), every node is judged from that moment on, never from a clock reading
taken before it. The clock is passed in, so the rules are tested with a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Liveness:
    lost_after_s: float
    clock: Callable[[], float] = time.monotonic
    _since: float | None = None  # start of the current unbroken observation
    _seen: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        """Judge every node from now on (leadership began, or heartbeats could not arrive)."""
        self._since = self.clock()
        self._seen.clear()

    def observe(self, node_id: str) -> None:
        self._seen[node_id] = self.clock()

    def forget(self, node_id: str) -> None:
        self._seen.pop(node_id, None)

    def silence_s(self, node_id: str) -> float:
        now = self.clock()
        since = self._since if self._since is not None else now
        return now - max(self._seen.get(node_id, since), since)

    def lost(self, node_ids: Iterable[str]) -> list[str]:
        """The nodes silent for at least `lost_after_s` (a node silent exactly that long is lost)."""
        if self._since is None:
            return []
        return [node_id for node_id in node_ids if self.silence_s(node_id) >= self.lost_after_s]
