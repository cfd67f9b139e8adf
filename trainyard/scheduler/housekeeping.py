"""Periodic work of the leader besides placing: stops for cancelled jobs, re-sending lost messages.

Both rules depend on time; the clocks are passed in so that tests can drive them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trainyard.db.models import Job, Part, utcnow
from trainyard.scheduler.outcomes import Effects
from trainyard.spec import JobState, PartState

log = logging.getLogger(__name__)

STOP_RESEND_S = 5.0
# A part still not started this long after dispatch, on a node whose later heartbeats do not list
# it, lost its message (Redis restarted or wiped): send it again. Nodes ignore duplicates.
REDISPATCH_AFTER_S = 15.0
REDISPATCH_HEARTBEAT_MARGIN_S = 4.0


class CancelStops:
    """Stop messages for every active part of a cancelled job, re-sent every STOP_RESEND_S until it ends."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._sent: dict[tuple[str, int], float] = {}

    def reset(self) -> None:
        self._sent.clear()

    def run(self, session: Session, effects: Effects, now: datetime | None = None) -> None:
        rows = session.execute(
            select(Part.node_id, Part.job_id, Part.attempt)
            .join(Job, (Job.id == Part.job_id) & (Job.attempt == Part.attempt))
            .where(Job.cancel_requested.is_(True), Part.active.is_(True))
        ).all()
        tick = self.clock()
        due: set[tuple[str, int]] = set()
        for node_id, job_id, attempt in rows:
            if tick - self._sent.get((job_id, attempt), float("-inf")) > STOP_RESEND_S:
                effects.stops.append((node_id, job_id, attempt, "cancelled"))
                due.add((job_id, attempt))
        self._sent.update(dict.fromkeys(due, tick))
        if len(self._sent) > 10_000:
            self._sent = {k: v for k, v in self._sent.items() if tick - v < 3600}
        # A cancelled job that is still queued has nothing running: it ends here.
        queued = select(Job.id).where(Job.cancel_requested.is_(True), Job.state == JobState.QUEUED.value)
        ending = list(session.scalars(queued))
        if ending:
            session.execute(
                update(Job)
                .where(Job.id.in_(ending), Job.state == JobState.QUEUED.value)
                .values(state=JobState.CANCELLED.value, ended_at=now or utcnow())
            )
            effects.ended_jobs.extend(ending)  # their notifications are recorded in this transaction


def lost_messages(
    session: Session,
    node_running: Mapping[str, tuple[datetime, set[tuple[str, int, int]]]],
    now: datetime | None = None,
) -> list[tuple[str, int]]:
    """Attempts with a part dispatched long ago, still not started, that its node's later heartbeats
    do not list: their messages were lost and must be sent again."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=REDISPATCH_AFTER_S)
    margin = timedelta(seconds=REDISPATCH_HEARTBEAT_MARGIN_S)
    rows = session.execute(
        select(Part.job_id, Part.attempt, Part.rank, Part.node_id, Part.dispatched_at).where(
            Part.active.is_(True), Part.state == PartState.SCHEDULED.value, Part.dispatched_at < cutoff
        )
    )
    resend: set[tuple[str, int]] = set()
    for job_id, attempt, rank, node_id, dispatched_at in rows:
        seen_at, running = node_running.get(node_id, (None, set()))
        heard_since = seen_at is not None and dispatched_at is not None and seen_at > dispatched_at + margin
        if heard_since and (job_id, attempt, rank) not in running:
            resend.add((job_id, attempt))
    return sorted(resend)
