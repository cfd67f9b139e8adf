"""One scheduling pass: snapshot the database, plan placements, write them, then dispatch them.

Priority is an invariant, so nothing is sent to a node ahead of time: a part message goes out
only for a placement the planner made on resources that are free now (or were freed for it by
preemption). A freed slot therefore always goes to the highest effective-priority job that fits
among those queued when the pass runs; the pass runs on every batch of events (a part exit frees
room), so the round trip is one event read, one transaction and one send.

The dependency gate (scheduler/gate.py) runs first in the same transaction: it releases jobs
whose dependencies were met and ends those whose dependencies can never be.

Placements are written in one transaction — each job claimed compare-and-set from `queued` on
its attempt number (scheduler/claims.py) — committed only while this scheduler holds the lease
(scheduler/lease.py), and only then sent to the nodes. Stops for preempted attempts are sent
after the commit too: a deposed leader preempts nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trainyard.config import PREEMPT_GRACE_S
from trainyard.db import notifications
from trainyard.db.models import Part, utcnow
from trainyard.scheduler.claims import ClaimRace, ClaimWriter
from trainyard.scheduler.dispatch import Dispatcher, Outgoing
from trainyard.scheduler.gate import DependencyGate
from trainyard.scheduler.placement import PassPlan, plan
from trainyard.scheduler.snapshot import SnapshotReader
from trainyard.scheduler.views import Placement


@dataclass
class PassOutcome:
    placed: list[tuple[str, int]] = field(default_factory=list)
    stops: list[tuple[str, str, int, str, float]] = field(default_factory=list)  # node, job, attempt, reason, grace
    outgoing: Outgoing | None = None


@dataclass
class PassRunner:
    """Runs passes for the leading scheduler; keeps what need not be re-read every pass."""

    dispatcher: Dispatcher
    preempt_grace_s: float = PREEMPT_GRACE_S
    wall: Callable[[], float] = time.time
    reader: SnapshotReader = field(default_factory=SnapshotReader)
    writer: ClaimWriter = field(default_factory=ClaimWriter)
    gate: DependencyGate = field(default_factory=DependencyGate)
    last_plan: PassPlan | None = None
    unstamped: list[tuple[str, int]] = field(default_factory=list)  # sent, to mark dispatched next pass
    # The dependency gate runs in every full pass, and in a fast one only after a job ended that
    # others may depend on (Effects.gate_due): most ends release nothing, and it costs two queries.
    gate_due: bool = True

    def reset(self) -> None:
        """Leadership (re)started: what an earlier term wrote or stopped is re-read from the database."""
        self.writer.reset()
        self.reader.preempting.clear()
        self.unstamped.clear()  # the new term's reconcile re-sends whatever is unstamped
        self.gate_due = True

    def run(self, sessions: sessionmaker[Session], full: bool = True) -> int:
        """Place what fits; returns how many jobs were placed. A fast pass (full=False) looks only at
        the head of the queue and leaves pending reasons as they are."""
        try:
            outcome = self._plan_and_write(sessions, batch_claim=True, full=full)
        except ClaimRace:
            # A job was cancelled while being placed: plan again, claiming one job at a time.
            outcome = self._plan_and_write(sessions, batch_claim=False, full=full)
        for node_id, job_id, attempt, reason, grace_s in outcome.stops:
            self.dispatcher.send_stop(node_id, job_id, attempt, reason, grace_s=grace_s)
        if outcome.outgoing is not None:
            self.dispatcher.publish(outcome.outgoing)
            self.unstamped.extend(outcome.outgoing.attempts)
        return len(outcome.placed)

    def _plan_and_write(self, sessions: sessionmaker[Session], batch_claim: bool, full: bool) -> PassOutcome:
        outcome = PassOutcome()
        preempting_before = dict(self.reader.preempting)
        stamping = list(self.unstamped)
        try:
            with sessions.begin() as session:
                # What the last pass sent is marked dispatched here, one transaction later: a
                # leader that dies between a commit and its send leaves the parts unstamped, and
                # the next leader sends them again (nodes ignore a second message for a part).
                self.dispatcher.stamp(session, stamping)
                # Dependencies first: a job whose last one was just met is placed in this same pass,
                # and one that can never run ends now (cheap when nothing ended: an index look-up).
                if full or self.gate_due:
                    gated = self.gate.run(session)
                    if gated.cancelled:  # ended with reason dependency_failed: notified like any end
                        notifications.record_job_ends(session, gated.cancelled, utcnow())
                snapshot = self.reader.snapshot(session, full)
                if snapshot is not None:
                    result = plan(snapshot)
                    self.last_plan = result
                    attempts = {view.id: view.attempt for view in snapshot.queued}
                    placements = self._write(session, result, attempts, batch_claim)
                    outcome.placed = [(p.job_id, attempts[p.job_id]) for p in placements]
                    if full:
                        self.writer.write_pending(session, result.pending)
                    # Preemption decided in any pass: the high job must not wait for the next full one.
                    outcome.stops = self._preempt(session, result.preemptions)
                    if placements:
                        # The messages are built in the transaction that placed them, sent after it commits.
                        addresses = {node.id: node.address for node in snapshot.nodes}
                        outcome.outgoing = self.dispatcher.prepare_placed(session, placements, attempts, addresses)
        except BaseException:
            self.reader.preempting = preempting_before  # nothing was committed: nothing is stopping
            raise
        del self.unstamped[: len(stamping)]
        self.gate_due = False
        return outcome

    def _write(
        self, session: Session, result: PassPlan, attempts: dict[str, int], batch_claim: bool
    ) -> list[Placement]:
        """Claim the placements on the attempt numbers the snapshot read; returns those claimed."""
        placements = result.placements
        if not placements:
            return []
        if batch_claim:
            self.writer.claim_batch(session, placements, attempts)  # raises ClaimRace: the transaction rolls back
        else:
            placements = self.writer.claim_each(session, placements, attempts)
        if placements:
            self.writer.insert_attempts(session, placements, attempts)
        return placements

    def _preempt(self, session: Session, victims: Iterable[tuple[str, int]]) -> list[tuple[str, str, int, str, float]]:
        """Stops (sent after commit) for the victims; their room counts as held until the kill deadline."""
        fresh = [v for v in victims if v not in self.reader.preempting]
        if not fresh:
            return []
        grace_s = self.preempt_grace_s
        rows = session.execute(
            select(Part.node_id, Part.job_id, Part.attempt).where(
                Part.active.is_(True), Part.job_id.in_([job_id for job_id, _ in fresh])
            )
        )
        wanted = set(fresh)
        stops = [(node_id, job_id, attempt, "preempted", grace_s) for node_id, job_id, attempt in rows
                 if (job_id, attempt) in wanted]  # fmt: skip
        deadline_s = self.wall() + grace_s
        for victim in fresh:
            self.reader.preempting[victim] = deadline_s
        return stops
