"""The webhook outbox: rows written in the transaction that ends a job (or its sweep), read by the notifier.

Writers call `record_job_ends` with the ids of jobs they may just have ended, inside their own
transaction (for the scheduler: fenced by its lease), so an ended job and its notifications commit
together or not at all. Nothing is sent here: a receiver that is down can never slow a writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from trainyard.db.engine import rowcount
from trainyard.db.models import Job, Notification, Sweep, WorkspaceSettings
from trainyard.notify import new_delivery_id
from trainyard.spec import TERMINAL_STATES, JobState, NotifyTarget, state_values

CHUNK = 500
_UNENDED = tuple(state.value for state in JobState if state not in TERMINAL_STATES)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# Built once: the scheduler runs them in every transaction that ends jobs.
_ENDED_OF = select(Job.id, Job.workspace, Job.state, Job.notify, Job.sweep_id).where(
    Job.id.in_(bindparam("ids", expanding=True)), Job.state.in_(state_values(TERMINAL_STATES))
)
_WORKSPACE_NOTIFY = select(WorkspaceSettings.workspace, WorkspaceSettings.notify).where(
    WorkspaceSettings.workspace.in_(bindparam("names", expanding=True))
)


def _targets(stored: list[dict[str, Any]] | None) -> list[NotifyTarget]:
    return [NotifyTarget.model_validate(t) for t in stored or []]


def _workspace_targets(session: Session, workspaces: Iterable[str]) -> dict[str, list[NotifyTarget]]:
    rows = session.execute(_WORKSPACE_NOTIFY, {"names": sorted(set(workspaces))})
    return {name: _targets(notify) for name, notify in rows}


def _rows_for(kind: str, subject_id: str, workspace: str, state: str, targets: list[NotifyTarget],
              now: datetime) -> list[dict[str, Any]]:  # fmt: skip
    urls = list(dict.fromkeys(t.url for t in targets if t.fires_on(state)))  # one row per URL
    return [
        {"id": new_delivery_id(), "subject_kind": kind, "subject_id": subject_id, "workspace": workspace,
         "url": url, "event": f"{kind}.{state}", "status": PENDING, "attempts": 0, "next_attempt_at": now,
         "created_at": now}
        for url in urls
    ]  # fmt: skip


EndedJob = tuple[str, str, str, Any, str | None]  # id, workspace, state, notify, sweep_id


def record_job_ends(
    session: Session, job_ids: Iterable[str], now: datetime, known: dict[str, EndedJob] | None = None
) -> int:
    """Outbox rows for those of `job_ids` that are terminal, and for sweeps whose last point this was.

    A job's own targets fire, and its workspace's unless it is a sweep point (a sweep's end is one
    notification, not one per point). `known`: jobs whose ended row the caller has in hand (the
    scheduler, which just wrote it), not read again. Returns the number of rows written.
    """
    known = known or {}
    ids = sorted(set(job_ids) - set(known))
    rows: list[dict[str, Any]] = []
    sweep_ids: set[str] = set()
    batches = [list(known.values())] if known else []
    for start in range(0, len(ids), CHUNK):
        batches.append(list(session.execute(_ENDED_OF, {"ids": ids[start : start + CHUNK]}).all()))
    for ended in batches:
        if not ended:
            continue
        by_workspace = _workspace_targets(session, (w for _, w, _, _, _ in ended))
        for job_id, workspace, state, notify, sweep_id in ended:
            targets = _targets(notify) + ([] if sweep_id else by_workspace.get(workspace, []))
            rows.extend(_rows_for("job", job_id, workspace, state, targets, now))
            if sweep_id:
                sweep_ids.add(sweep_id)
    for sweep_id in sorted(sweep_ids):
        rows.extend(_sweep_end_rows(session, sweep_id, now))
    if rows:
        session.execute(insert(Notification), rows)
    return len(rows)


def sweep_state(session: Session, sweep_id: str) -> str | None:
    """A sweep's end state (None while a point has not ended): failed, else cancelled, else succeeded."""
    current = select(Job.id).where(Job.sweep_id == sweep_id, Job.superseded_by.is_(None))
    # States named (IN, not NOT IN) so that each is an index seek on ix_jobs_sweep, however big the sweep.
    if session.execute(current.where(Job.state.in_(_UNENDED)).limit(1)).first():
        return None
    for state in ("failed", "cancelled"):
        if session.execute(current.where(Job.state == state).limit(1)).first():
            return state
    return "succeeded"


def _sweep_end_rows(session: Session, sweep_id: str, now: datetime) -> list[dict[str, Any]]:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return []
    targets = _targets(sweep.notify) + _workspace_targets(session, [sweep.workspace]).get(sweep.workspace, [])
    if not targets:
        return []
    state = sweep_state(session, sweep_id)
    if state is None:
        return []
    # Ended before (and not rerun since: a rerun moves updated_at): already recorded.
    sent = select(Notification.id).where(
        Notification.subject_id == sweep_id, Notification.created_at >= sweep.updated_at
    )
    if session.execute(sent.limit(1)).first():
        return []
    return _rows_for("sweep", sweep_id, sweep.workspace, state, targets, now)


def notifications_of(session: Session, subject_id: str) -> list[dict[str, Any]]:
    """Delivery state for `job show` / `sweep show`: `[{id, url, event, status, attempts, …}]`."""
    rows = session.scalars(
        select(Notification).where(Notification.subject_id == subject_id).order_by(Notification.created_at)
    )
    return [
        {"id": n.id, "url": n.url, "event": n.event, "status": n.status, "attempts": n.attempts,
         "last_status_code": n.last_status_code, "last_error": n.last_error,
         "delivered_at": n.delivered_at.isoformat().replace("+00:00", "Z") if n.delivered_at else None}
        for n in rows
    ]  # fmt: skip


# -- the notifier's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    id: str
    subject_kind: str
    subject_id: str
    workspace: str
    url: str
    event: str
    attempts: int


def claim_due(session: Session, now: datetime, lease_s: float, limit: int) -> list[Due]:
    """Take up to `limit` due rows: compare-and-set of the claim, so two notifiers never send one row
    at once (a notifier that dies mid-send leaves a claim that expires: at-least-once)."""
    free = or_(Notification.claimed_until.is_(None), Notification.claimed_until < now)
    rows = session.scalars(
        select(Notification)
        .where(Notification.status == PENDING, Notification.next_attempt_at <= now, free)
        .order_by(Notification.next_attempt_at)
        .limit(limit)
    ).all()
    won = []
    for row in rows:
        claimed = rowcount(session.execute(
            update(Notification).where(Notification.id == row.id, Notification.status == PENDING, free)
            .values(claimed_until=now + timedelta(seconds=lease_s))
        ))  # fmt: skip
        if claimed:
            won.append(Due(row.id, row.subject_kind, row.subject_id, row.workspace, row.url, row.event, row.attempts))
    return won


def record_try(session: Session, delivery_id: str, *, delivered: bool, next_at: datetime | None, now: datetime,
               status_code: int | None, error: str | None) -> None:  # fmt: skip
    """One try's outcome: delivered, due again at `next_at`, or (next_at None) given up as failed."""
    values: dict[str, Any] = {"attempts": Notification.attempts + 1, "claimed_until": None,
                              "last_status_code": status_code,
                              "last_error": error[:500] if error else None}  # fmt: skip
    if delivered:
        values.update(status=DELIVERED, delivered_at=now)
    elif next_at is None:
        values.update(status=FAILED)
    else:
        values.update(next_attempt_at=next_at)
    session.execute(update(Notification).where(Notification.id == delivery_id, Notification.status == PENDING)
                    .values(**values))  # fmt: skip
