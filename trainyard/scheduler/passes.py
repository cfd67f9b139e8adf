"""One scheduling pass: snapshot the database, plan placements, write them, then dispatch them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard.db.engine import rowcount
from trainyard.db.models import Attempt, Job, Node, Part, utcnow
from trainyard.db.sweeps import sweep_limits
from trainyard.scheduler.dispatch import Dispatcher
from trainyard.scheduler.placement import JobView, NodeView, Placement, Snapshot, plan

# How much of the queue one pass looks at, by priority then age.
QUEUE_WINDOW = 20_000
_pending_written: dict[str, str] = {}


def _node_views(session: Session) -> list[NodeView]:
    used_cpus: dict[str, float] = defaultdict(float)
    used_gpus: dict[str, set[int]] = defaultdict(set)
    for node_id, cpus, gpus in session.execute(select(Part.node_id, Part.cpus, Part.gpus).where(Part.active.is_(True))):
        used_cpus[node_id] += cpus
        used_gpus[node_id].update(gpus or [])
    views = []
    for node in session.scalars(select(Node).where(Node.state.in_(("up", "draining")))):
        views.append(
            NodeView(
                id=node.id,
                pool=node.pool,
                address=node.address,
                cpus=float(node.slots),
                gpus=list(node.gpus),
                free_cpus=float(node.slots) - used_cpus[node.id],
                free_gpus=[g for g in node.gpus if g not in used_gpus[node.id]],
                schedulable=node.state == "up",
                memory_bytes=node.memory_bytes,
                labels=dict(node.labels or {}),
            )
        )
    return views


def _queued_views(session: Session) -> list[JobView]:
    now = utcnow()
    rows = session.execute(
        select(
            Job.id,
            Job.pool,
            Job.priority,
            Job.seq,
            Job.workspace,
            Job.nodes,
            Job.cpus,
            Job.gpus,
            Job.memory_bytes,
            Job.max_wall_clock_s,
            Job.preemptible,
            Job.sweep_id,
        )
        .where(
            Job.state == "queued", Job.cancel_requested.is_(False), or_(Job.not_before.is_(None), Job.not_before <= now)
        )
        .order_by(Job.priority.desc(), Job.seq)
        .limit(QUEUE_WINDOW)
    ).tuples()
    return [
        JobView(
            id=r[0],
            pool=r[1],
            priority=r[2],
            seq=r[3],
            workspace=r[4],
            nodes=r[5],
            cpus=r[6],
            gpus=r[7],
            memory_bytes=r[8],
            max_wall_clock_s=r[9],
            preemptible=r[10],
            sweep_id=r[11],
        )
        for r in rows
    ]


def _write_placement(session: Session, placement: Placement, attempts: dict[str, int]) -> bool:
    """Claim the job (CAS queued → scheduled on its attempt) and write its attempt and all its parts."""
    job_id = placement.job_id
    attempt = attempts[job_id]
    now = utcnow()
    claimed = rowcount(session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued", Job.attempt == attempt, Job.cancel_requested.is_(False))
        .values(state="scheduled", pending_reason=None, updated_at=now)
    ))
    if not claimed:
        return False
    session.execute(insert(Attempt).values(job_id=job_id, number=attempt, state="scheduled", created_at=now))
    session.execute(
        insert(Part),
        [
            {
                "job_id": job_id,
                "attempt": attempt,
                "rank": p.rank,
                "node_id": p.node_id,
                "gpus": p.gpus,
                "cpus": p.cpus,
                "active": True,
                "state": "scheduled",
            }
            for p in placement.parts
        ],
    )
    return True


def _write_pending(session: Session, pending: dict[str, str]) -> None:
    changed = [
        {"jid": job_id, "reason": reason}
        for job_id, reason in pending.items()
        if _pending_written.get(job_id) != reason
    ]
    if not changed:
        return
    session.connection().execute(
        update(Job.__table__)  # type: ignore[arg-type]
        .where(Job.__table__.c.id == bindparam("jid"), Job.__table__.c.state == "queued")
        .values(pending_reason=bindparam("reason")),
        changed,
    )
    for row in changed:
        _pending_written[row["jid"]] = row["reason"]
    if len(_pending_written) > 500_000:
        _pending_written.clear()


def run_pass(sessions: sessionmaker[Session], dispatcher: Dispatcher) -> int:
    """Place what fits; returns how many jobs were placed."""
    with sessions.begin() as session:
        queued = _queued_views(session)
        if not queued:
            return 0
        nodes = _node_views(session)
        # Each sweep's max_concurrency against its jobs scheduled or running now (QueueLimits holds the rest).
        sweep_max, sweep_running = sweep_limits(session, {job.sweep_id for job in queued if job.sweep_id})
        snapshot = Snapshot(nodes=nodes, queued=queued, sweep_max_concurrency=sweep_max, sweep_running=sweep_running)
        result = plan(snapshot)
        attempts: dict[str, Any] = {}
        if result.placements:
            placed_ids = [p.job_id for p in result.placements]
            attempts = dict(session.execute(select(Job.id, Job.attempt).where(Job.id.in_(placed_ids))).tuples().all())
        written = [(p.job_id, attempts[p.job_id]) for p in result.placements if _write_placement(session, p, attempts)]
        _write_pending(session, result.pending)
    if written:
        with sessions.begin() as session:
            dispatcher.send_parts(session, written)
    return len(written)
