"""Writing a pass's plan: claims compare-and-set from `queued` on the attempt number, then the attempts.

A placement is written only if its job is still `queued`, on the attempt the pass read, and not
being cancelled; a gang's N parts are inserted in the same transaction as its claim (all or
nothing). The transaction commits only while this scheduler holds the lease (scheduler/lease.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import bindparam, insert, update
from sqlalchemy.orm import Session

from trainyard.db.engine import rowcount
from trainyard.db.models import Attempt, Job, Part, utcnow
from trainyard.scheduler.placement import Placement
from trainyard.spec import AttemptState, JobState, PartState

PENDING_CACHE_MAX = 500_000


class ClaimRace(Exception):
    """A batch claim changed fewer rows than planned: someone (a cancel) got there first."""


@dataclass
class ClaimWriter:
    _pending_written: dict[str, str] = field(default_factory=dict)

    def reset(self) -> None:
        self._pending_written.clear()

    def claim_batch(self, session: Session, placements: list[Placement], attempts: dict[str, int]) -> None:
        table = Job.__table__
        result = session.connection().execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("jid"), table.c.attempt == bindparam("num"),
                   table.c.state == JobState.QUEUED.value, table.c.cancel_requested.is_(False),
                   table.c.waiting_on == 0)
            .values(state=JobState.SCHEDULED.value, pending_reason=None, updated_at=utcnow()),
            [{"jid": p.job_id, "num": attempts[p.job_id]} for p in placements],
        )  # fmt: skip
        if not session.connection().dialect.supports_sane_multi_rowcount or result.rowcount != len(placements):
            raise ClaimRace

    def claim_each(self, session: Session, placements: list[Placement], attempts: dict[str, int]) -> list[Placement]:
        won = []
        for placement in placements:
            claimed = rowcount(session.execute(
                update(Job)
                .where(Job.id == placement.job_id, Job.state == JobState.QUEUED.value,
                       Job.attempt == attempts[placement.job_id], Job.cancel_requested.is_(False),
                       Job.waiting_on == 0)
                .values(state=JobState.SCHEDULED.value, pending_reason=None, updated_at=utcnow())
            ))  # fmt: skip
            if claimed:
                won.append(placement)
        return won

    def insert_attempts(self, session: Session, placements: list[Placement], attempts: dict[str, int]) -> None:
        now = utcnow()
        # Core inserts (executemany), not the ORM's bulk path: nothing here needs the identity map.
        connection = session.connection()
        connection.execute(
            insert(Attempt.__table__),  # type: ignore[arg-type]
            [{"job_id": p.job_id, "number": attempts[p.job_id], "state": AttemptState.SCHEDULED.value,
              "created_at": now} for p in placements],
        )  # fmt: skip
        connection.execute(
            insert(Part.__table__),  # type: ignore[arg-type]
            [{"job_id": p.job_id, "attempt": attempts[p.job_id], "rank": part.rank, "node_id": part.node_id,
              "gpus": part.gpus, "cpus": part.cpus, "active": True, "state": PartState.SCHEDULED.value}
             for p in placements for part in p.parts],
        )  # fmt: skip

    def write_pending(self, session: Session, pending: dict[str, str]) -> None:
        changed = [
            {"jid": job_id, "reason": reason}
            for job_id, reason in pending.items()
            if self._pending_written.get(job_id) != reason
        ]
        if not changed:
            return
        table = Job.__table__
        session.connection().execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("jid"), table.c.state == JobState.QUEUED.value)
            .values(pending_reason=bindparam("reason")),
            changed,
        )
        if len(self._pending_written) > PENDING_CACHE_MAX:
            self._pending_written.clear()
        self._pending_written.update({row["jid"]: row["reason"] for row in changed})
