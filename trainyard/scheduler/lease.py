"""Leadership: one scheduler leads, fenced by a lease row in the database.

The `scheduler_lease` row holds the leader's identity, an epoch and an expiry. Taking the lease
is a compare-and-set on the epoch it read (so two standbys cannot both win) and adds one to it;
renewing is a compare-and-set on (holder, epoch, not yet expired). Every write transaction of the
leader runs the same renewal as its last statement before commit (`fence`): if another
scheduler took the lease, or it expired, the statement changes no row and the whole transaction
rolls back. An epoch is one unbroken run of leadership, so a transaction that commits was the
leader's from its first read to its commit; a deposed or paused leader commits nothing.

Besides the database, the leader keeps a monotonic deadline (the lease minus a margin) and the
time of its last check: past the deadline, or after a gap longer than the lease (the process was
paused, or starved), it stops acting at once, drops leadership and, if it takes the lease again,
rebuilds from the database. Wall clocks only set expiries; safety rests on the epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, event, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from trainyard.db.engine import rowcount
from trainyard.db.models import SchedulerLease, utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
DEFAULT_LEASE_S = 6.0
RENEW_EVERY_S = 1.0
# The local deadline ends this much before the lease does in the database, for clock drift.
SAFETY_MARGIN_S = 1.0


class Deposed(Exception):
    """This scheduler no longer leads: what it was doing must not be committed."""


@dataclass
class LeaderLease:
    sessions: sessionmaker[Session]
    identity: str
    lease_s: float = DEFAULT_LEASE_S
    wall: Callable[[], datetime] = utcnow
    mono: Callable[[], float] = time.monotonic
    epoch: int | None = None
    _deadline: float = 0.0
    _checked_at: float = 0.0
    _renewed_at: float = 0.0

    # -- state ------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    def step_down(self, why: str) -> None:
        if self.epoch is not None:
            log.warning("scheduler %s steps down (epoch %d): %s", self.identity, self.epoch, why)
        self.epoch = None
        self._deadline = 0.0

    def check(self) -> None:
        """Raise Deposed unless the lease is still ours by the local clock and no pause came between."""
        if self.epoch is None:
            raise Deposed("not leading")
        now = self.mono()
        gap = now - self._checked_at
        self._checked_at = now
        if gap > self.lease_s:
            self.step_down(f"{gap:.1f} s passed between two steps (paused?), longer than the {self.lease_s:g} s lease")
            raise Deposed("paused past the lease")
        if now >= self._deadline:
            self.step_down("the lease ran out before it was renewed")
            raise Deposed("lease expired")

    # -- taking and keeping -----------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it is free (expired) or ours; True when this scheduler now leads."""
        started = self.mono()
        now = self.wall()
        with self.sessions.begin() as session:
            row = session.execute(
                select(SchedulerLease.epoch, SchedulerLease.holder, SchedulerLease.expires_at).where(
                    SchedulerLease.name == LEASE_NAME
                )
            ).first()
            if row is None:
                try:
                    with session.begin_nested():
                        session.execute(
                            insert(SchedulerLease).values(name=LEASE_NAME, holder="", epoch=0, expires_at=now)
                        )
                except IntegrityError:
                    pass  # another scheduler created it first
                observed = 0
            else:
                observed = int(row.epoch)
            won = rowcount(session.execute(
                update(SchedulerLease)
                .where(
                    SchedulerLease.name == LEASE_NAME,
                    SchedulerLease.epoch == observed,
                    or_(SchedulerLease.expires_at <= now, SchedulerLease.holder == self.identity),
                )
                .values(holder=self.identity, epoch=observed + 1, expires_at=now + timedelta(seconds=self.lease_s),
                        renewed_at=now)
            ))  # fmt: skip
        if not won:
            return False
        self.epoch = observed + 1
        self._deadline = started + self.lease_s - SAFETY_MARGIN_S
        self._checked_at = self._renewed_at = self.mono()
        log.info("scheduler %s leads (epoch %d)", self.identity, self.epoch)
        return True

    def keep(self) -> bool:
        """Called before each step: renew when due; False (and no longer leading) if it is lost."""
        try:
            self.check()
        except Deposed:
            return False
        if self.mono() - self._renewed_at < RENEW_EVERY_S:
            return True
        started = self.mono()
        with self.sessions.begin() as session:
            ok = self._renew(session)
        if not ok:
            self.step_down("another scheduler holds the lease")
            return False
        self._deadline = started + self.lease_s - SAFETY_MARGIN_S
        self._renewed_at = self.mono()
        return True

    def _renew(self, session: Session) -> bool:
        now = self.wall()
        params = {"b_holder": self.identity, "b_epoch": self.epoch, "b_now": now,
                  "b_expires": now + timedelta(seconds=self.lease_s)}  # fmt: skip
        # Core, not ORM: this runs in every write transaction of the leader, so it must be cheap.
        return bool(rowcount(session.connection().execute(_RENEW, params)))

    def fence(self, session: Session) -> None:
        """The last statement of every leader write transaction: commit only while the lease is ours.

        A transaction that wrote nothing commits nothing, so it needs no fence (and on SQLite
        does not take the write lock); what it read can only lead to idempotent messages.
        """
        self.check()
        session.flush()
        connection = session.connection()
        if not connection.info.pop(WROTE_KEY, False):
            return
        if not self._renew(session):
            self.step_down("the database says another scheduler leads (or the lease expired)")
            raise Deposed("fenced by the database")
        connection.info.pop(WROTE_KEY, None)

    def release(self) -> None:
        """Give the lease up (clean shutdown): a standby takes over at once instead of after expiry."""
        if self.epoch is None:
            return
        with self.sessions.begin() as session:
            session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == LEASE_NAME, SchedulerLease.holder == self.identity,
                       SchedulerLease.epoch == self.epoch)
                .values(expires_at=self.wall())
            )  # fmt: skip
        self.epoch = None


def fenced_sessions(sessions: sessionmaker[Session], lease: LeaderLease) -> sessionmaker[Session]:
    """A sessionmaker whose every commit that wrote first passes `lease.fence` (Deposed rolls it back)."""
    engine: Engine = sessions.kw["bind"]
    fenced: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
    if not event.contains(engine, "before_cursor_execute", _note_writes):
        event.listen(engine, "before_cursor_execute", _note_writes)

    @event.listens_for(fenced, "before_commit")
    def _fence(session: Session) -> None:
        lease.fence(session)

    # A rolled-back transaction may leave its mark on the connection: the next one is then fenced
    # though it may not need it, which is safe; a write is never left unfenced.
    return fenced


WROTE_KEY = "trainyard_wrote"
_WRITES = ("INSERT", "UPDATE", "DELETE")
_lease_table = SchedulerLease.__table__
_RENEW = (
    update(_lease_table)  # type: ignore[arg-type]
    .where(_lease_table.c.name == LEASE_NAME, _lease_table.c.holder == bindparam("b_holder"),
           _lease_table.c.epoch == bindparam("b_epoch"), _lease_table.c.expires_at > bindparam("b_now"))
    .values(expires_at=bindparam("b_expires"), renewed_at=bindparam("b_now"))
)  # fmt: skip


def _note_writes(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
    """Mark the connection of a transaction that wrote (the fence runs only for those)."""
    if statement.lstrip()[:6].upper() in _WRITES:
        conn.info[WROTE_KEY] = True


def current_leader(session: Session, now: datetime | None = None) -> tuple[str, int] | None:
    """(identity, epoch) of the scheduler holding an unexpired lease, or None."""
    row = session.execute(
        select(SchedulerLease.holder, SchedulerLease.epoch, SchedulerLease.expires_at).where(
            SchedulerLease.name == LEASE_NAME
        )
    ).first()
    if row is None or not row.holder or row.expires_at <= (now or utcnow()):
        return None
    return str(row.holder), int(row.epoch)
