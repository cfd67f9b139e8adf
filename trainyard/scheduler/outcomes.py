"""Applying worker events to the database, compare-and-set on the attempt number (SPEC §2 invariant 2).

Every write names the attempt it is about; a write for an attempt that is no longer current
changes no row, is counted as stale and answered with a stop message for that attempt.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trainyard.db.engine import rowcount
from trainyard.db.models import Attempt, Event, Job, Node, Part
from trainyard.spec import AttemptReason, JobState

log = logging.getLogger(__name__)

RETRY_BACKOFF_BASE_S = 1.0
RETRY_BACKOFF_MAX_S = 300.0
# Reasons that put the job back in the queue without using one of its retries.
REQUEUE_REASONS = frozenset({"node_lost", "node_shutdown", "preempted"})


@dataclass
class Effects:
    """What the scheduler must do after the transaction commits (messages, never DB writes)."""

    stops: list[tuple[str, str, int, str]] = field(default_factory=list)  # node, job, attempt, reason
    ended_attempts: list[tuple[str, int]] = field(default_factory=list)
    stale_writes: int = 0


def retry_delay_s(retry_number: int) -> float:
    """Exponential backoff with full jitter: a job that keeps failing yields to the others."""
    ceiling = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S * (2 ** max(0, retry_number - 1)))
    return random.uniform(ceiling / 2, ceiling)


def _record_stale(session: Session, effects: Effects, event: dict[str, Any], now: datetime) -> None:
    effects.stale_writes += 1
    session.add(
        Event(
            at=now,
            kind="stale_rejected",
            job_id=event.get("job_id"),
            attempt=event.get("attempt"),
            node_id=event.get("node"),
            detail={"event": event.get("kind")},
        )
    )


def part_started(session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    job_id, attempt, rank = event["job_id"], int(event["attempt"]), int(event["rank"])
    changed = rowcount(session.execute(
        update(Part)
        .where(
            Part.job_id == job_id,
            Part.attempt == attempt,
            Part.rank == rank,
            Part.active.is_(True),
            Part.state == "scheduled",
            Part.node_id == event["node"],
        )
        .values(state="running", started_at=now)
    ))
    if not changed:
        part = session.get(Part, (job_id, attempt, rank))
        if part is None or not part.active or part.node_id != event["node"]:
            _record_stale(session, effects, event, now)
            effects.stops.append((event["node"], job_id, attempt, "stale"))
        return
    # The job becomes running with its first running part (CAS on state and attempt).
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.state == JobState.SCHEDULED.value)
        .values(state=JobState.RUNNING.value, updated_at=now)
    )
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == job_id, Attempt.number == attempt, Attempt.state == "scheduled")
        .values(state="running", started_at=now)
    )


def part_exited(session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    job_id, attempt, rank = event["job_id"], int(event["attempt"]), int(event["rank"])
    reason = str(event.get("reason") or "exit")
    exit_code = event.get("exit_code")
    changed = rowcount(session.execute(
        update(Part)
        .where(
            Part.job_id == job_id,
            Part.attempt == attempt,
            Part.rank == rank,
            Part.active.is_(True),
            Part.node_id == event["node"],
        )
        .values(
            active=False,
            state="exited",
            reason=reason,
            exit_code=exit_code,
            ended_at=now,
            logs_complete=bool(event.get("logs_complete", True)),
        )
    ))
    if not changed:
        _record_stale(session, effects, event, now)
        return
    if rank == 0 and event.get("metrics"):  # what trainyard.report last said (CAS: this attempt only)
        session.execute(update(Job).where(Job.id == job_id, Job.attempt == attempt)
                        .values(metrics=event["metrics"], metrics_step=event.get("metrics_step")))
    end_attempt_if_done(session, job_id, attempt, now, effects, failed_part=(reason != "exit" or exit_code != 0))


def logs_done(session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    """A node finished uploading a part's logs after reporting its exit (the store had been down)."""
    job_id, attempt, rank = event["job_id"], int(event["attempt"]), int(event["rank"])
    # Only the node whose exit report was accepted may finalise the part's logs (fencing).
    changed = rowcount(session.execute(
        update(Part)
        .where(
            Part.job_id == job_id,
            Part.attempt == attempt,
            Part.rank == rank,
            Part.node_id == event["node"],
            Part.state == "exited",
        )
        .values(logs_complete=True)
    ))
    if not changed:
        _record_stale(session, effects, event, now)
        return
    parts = session.scalars(select(Part).where(Part.job_id == job_id, Part.attempt == attempt)).all()
    if all(p.logs_complete for p in parts):
        session.execute(
            update(Attempt)
            .where(Attempt.job_id == job_id, Attempt.number == attempt, Attempt.ended_at.is_not(None))
            .values(logs_complete=True)
        )


def end_attempt_if_done(
    session: Session, job_id: str, attempt: int, now: datetime, effects: Effects, failed_part: bool = False
) -> None:
    parts = session.scalars(select(Part).where(Part.job_id == job_id, Part.attempt == attempt)).all()
    still_active = [p for p in parts if p.active]
    if still_active:
        if failed_part:
            # Gangs are one unit: one rank's end (failure, loss) tears down the others.
            for part in still_active:
                effects.stops.append((part.node_id, job_id, attempt, "gang_teardown"))
        return
    finish_attempt(session, job_id, attempt, parts, now, effects)


def _attempt_outcome(parts: list[Part], job: Job) -> tuple[str, int | None]:
    """(reason, exit code) of an attempt whose parts have all ended."""
    reasons = {p.reason or "exit" for p in parts}
    for special in ("cancelled", "wall_clock", "prepare_failed", "node_lost", "node_shutdown", "preempted"):
        if special in reasons:
            return special, _first_failure(parts)
    if job.cancel_requested:
        return "cancelled", _first_failure(parts)
    return "exit", _first_failure(parts) or 0


def _first_failure(parts: list[Part]) -> int | None:
    for part in sorted(parts, key=lambda p: p.rank):
        if part.exit_code not in (None, 0):
            return part.exit_code
    return None


def finish_attempt(session: Session, job_id: str, attempt: int, parts: Any, now: datetime, effects: Effects) -> None:
    job = session.get(Job, job_id)
    if job is None or job.attempt != attempt or JobState(job.state).is_terminal():
        return
    reason, exit_code = _attempt_outcome(list(parts), job)
    if reason == "node_shutdown":
        reason = AttemptReason.NODE_LOST.value
    values: dict[str, Any] = {"updated_at": now, "exit_code": exit_code}
    if reason in REQUEUE_REASONS and not job.cancel_requested:
        values.update(state=JobState.QUEUED.value, attempt=attempt + 1, not_before=None)
        attempt_state = "requeued"
    elif reason == "exit" and exit_code == 0:
        values.update(state=JobState.SUCCEEDED.value, ended_at=now)
        attempt_state = "succeeded"
    elif reason == "cancelled":
        values.update(state=JobState.CANCELLED.value, ended_at=now)
        attempt_state = "cancelled"
    elif reason in ("exit", "prepare_failed") and job.retries_used < job.max_retries:
        delay_s = retry_delay_s(job.retries_used + 1)
        values.update(
            state=JobState.QUEUED.value,
            attempt=attempt + 1,
            retries_used=job.retries_used + 1,
            not_before=now + timedelta(seconds=delay_s),
        )
        attempt_state = "failed"
    else:
        values.update(state=JobState.FAILED.value, ended_at=now)
        attempt_state = "failed"
    # CAS: only the current attempt of a non-terminal job may move it.
    moved = rowcount(session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.state.in_(("scheduled", "running")))
        .values(**values)
    ))
    if not moved:
        return
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == job_id, Attempt.number == attempt)
        .values(state=attempt_state, reason=reason, ended_at=now, logs_complete=all(p.logs_complete for p in parts))
    )
    effects.ended_attempts.append((job_id, attempt))
    if values["state"] == JobState.QUEUED.value:
        session.add(Event(at=now, kind="requeued", job_id=job_id, attempt=attempt, detail={"reason": reason}))


def teardown_attempt(
    session: Session,
    job_id: str,
    attempt: int,
    reason: str,
    now: datetime,
    effects: Effects,
    lost_nodes: frozenset[str] = frozenset(),
) -> None:
    """End an attempt from the scheduler's side (node lost, preempted): free its parts, requeue."""
    parts = session.scalars(select(Part).where(Part.job_id == job_id, Part.attempt == attempt)).all()
    for part in parts:
        if part.active:
            if part.node_id not in lost_nodes:
                effects.stops.append((part.node_id, job_id, attempt, reason))
            part.active, part.state, part.reason, part.ended_at = False, "lost", reason, now
    session.flush()
    finish_attempt(session, job_id, attempt, parts, now, effects)


def mark_node_lost(session: Session, node: Node, now: datetime, effects: Effects) -> int:
    """A node stopped heartbeating: every attempt with a part on it is torn down and requeued."""
    node.state = "lost"
    attempts = session.execute(
        select(Part.job_id, Part.attempt).where(Part.node_id == node.id, Part.active.is_(True))
    ).all()
    for job_id, attempt in set(attempts):
        teardown_attempt(
            session, job_id, attempt, AttemptReason.NODE_LOST.value, now, effects, lost_nodes=frozenset({node.id})
        )
    session.add(Event(at=now, kind="node_lost", node_id=node.id, detail={"attempts": len(set(attempts))}))
    return len(set(attempts))
