"""One scheduling pass: snapshot the database, plan placements, write them, then dispatch them.

The snapshot carries everything the planner weighs (see scheduler/views.py): free resources per
node, the queue, running attempts with what they hold and when they must end, sweep limits,
GPU quotas and recent use per workspace. Placements are written in one transaction — each job
claimed compare-and-set from `queued` on its attempt number — and only then sent to the nodes.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard.config import gpu_quotas
from trainyard.db.engine import rowcount
from trainyard.db.models import Attempt, Job, Node, Part, utcnow
from trainyard.db.sweeps import sweep_limits
from trainyard.scheduler.dispatch import Dispatcher
from trainyard.scheduler.placement import JobView, NodeView, PartPlacement, PassPlan, Placement, Snapshot, plan
from trainyard.scheduler.views import RunningPart, RunningView

# The queue one pass looks at: the highest priorities, plus the oldest jobs (which aging may
# have lifted above them), so that no job is out of sight for ever.
QUEUE_WINDOW = 20_000
OLDEST_WINDOW = 2_000
USAGE_WINDOW_S = 3600.0
USAGE_REFRESH_S = 10.0
GPU_WEIGHT = 8.0  # one GPU-second weighs as much as this many CPU-seconds in fair share
PREEMPT_GRACE_S = float(os.environ.get("TRAINYARD_PREEMPT_GRACE_S", "30"))
PENDING_CACHE_MAX = 500_000
FAST_WINDOW_MIN = 64
# How many slots' worth of not-yet-started parts a busy node may hold (see _send_ahead).
SEND_AHEAD_SLOTS = float(os.environ.get("TRAINYARD_SEND_AHEAD_SLOTS", "1"))

_QUEUED_COLUMNS = (
    Job.id, Job.pool, Job.priority, Job.seq, Job.workspace, Job.nodes, Job.cpus, Job.gpus,
    Job.memory_bytes, Job.max_wall_clock_s, Job.preemptible, Job.sweep_id, Job.submitted_at,
)  # fmt: skip


class _ClaimRace(Exception):
    """A batch claim changed fewer rows than planned: someone (a cancel) got there first."""


def _epoch_s(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass
class PassRunner:
    """Runs passes for the leading scheduler; keeps what need not be re-read every pass."""

    dispatcher: Dispatcher
    preempting: dict[tuple[str, int], float] = field(default_factory=dict)  # attempt → kill deadline (epoch s)
    _pending_written: dict[str, str] = field(default_factory=dict)
    _usage: dict[str, float] = field(default_factory=dict)
    _usage_at: float = 0.0
    last_plan: PassPlan | None = None
    _last_parts: list[tuple[Any, ...]] = field(default_factory=list)

    # -- snapshot ----------------------------------------------------------------------------

    def _active_parts(self, session: Session) -> list[tuple[Any, ...]]:
        return list(
            session.execute(
                select(Part.job_id, Part.attempt, Part.node_id, Part.cpus, Part.gpus, Job.memory_bytes, Job.priority,
                       Job.preemptible, Job.max_wall_clock_s, Job.workspace, Job.sweep_id, Job.cancel_requested,
                       Attempt.started_at, Attempt.created_at, Part.state)
                .join(Job, Job.id == Part.job_id)
                .join(Attempt, (Attempt.job_id == Part.job_id) & (Attempt.number == Part.attempt))
                .where(Part.active.is_(True))
            ).tuples()
        )  # fmt: skip

    def _node_views(self, session: Session, parts: list[tuple[Any, ...]]) -> list[NodeView]:
        used_cpus: dict[str, float] = defaultdict(float)
        used_gpus: dict[str, set[int]] = defaultdict(set)
        used_memory: dict[str, int] = defaultdict(int)
        for _job, _attempt, node_id, cpus, gpus, memory, *_ in parts:
            used_cpus[node_id] += cpus
            used_gpus[node_id].update(gpus or [])
            used_memory[node_id] += memory or 0
        views = []
        for node in session.scalars(select(Node).where(Node.state.in_(("up", "draining")))):
            free_memory = None if node.memory_bytes is None else node.memory_bytes - used_memory[node.id]
            views.append(
                NodeView(
                    id=node.id, pool=node.pool, address=node.address, cpus=float(node.slots), gpus=list(node.gpus),
                    free_cpus=float(node.slots) - used_cpus[node.id],
                    free_gpus=[g for g in node.gpus if g not in used_gpus[node.id]],
                    schedulable=node.state == "up", memory_bytes=node.memory_bytes,
                    free_memory_bytes=free_memory, labels=dict(node.labels or {}),
                )
            )  # fmt: skip
        return views

    def _running_views(self, parts: list[tuple[Any, ...]], now_s: float) -> list[RunningView]:
        by_attempt: dict[tuple[str, int], RunningView] = {}
        for job_id, attempt, node_id, cpus, gpus, memory, priority, preemptible, wall_s, *rest in parts:
            cancel_requested, started_at, created_at = rest[2], rest[3], rest[4]
            key = (job_id, attempt)
            view = by_attempt.get(key)
            if view is None:
                began_s = _epoch_s(started_at) or _epoch_s(created_at) or now_s
                deadline = self.preempting.get(key)
                view = RunningView(
                    job_id=job_id, attempt=attempt, priority=priority, preemptible=preemptible, node_ids=[],
                    expected_end_s=deadline if deadline is not None else began_s + wall_s,
                    stopping=deadline is not None or bool(cancel_requested),
                )  # fmt: skip
                by_attempt[key] = view
            view.node_ids.append(node_id)
            view.parts.append(RunningPart(node_id=node_id, cpus=cpus, gpus=list(gpus or []), memory_bytes=memory))
        live = set(by_attempt)
        self.preempting = {k: v for k, v in self.preempting.items() if k in live}
        return list(by_attempt.values())

    def _queued_views(self, session: Session, window: int = QUEUE_WINDOW) -> list[JobView]:
        now = utcnow()
        ready = (
            Job.state == "queued",
            Job.cancel_requested.is_(False),
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        top = session.execute(
            select(*_QUEUED_COLUMNS).where(*ready).order_by(Job.priority.desc(), Job.seq).limit(window)
        ).tuples()
        rows = {r[0]: r for r in top}
        if window == QUEUE_WINDOW and len(rows) >= QUEUE_WINDOW:
            oldest = session.execute(select(*_QUEUED_COLUMNS).where(*ready).order_by(Job.seq).limit(OLDEST_WINDOW))
            rows.update({r[0]: r for r in oldest.tuples()})
        return [
            JobView(
                id=r[0], pool=r[1], priority=r[2], seq=r[3], workspace=r[4], nodes=r[5], cpus=r[6], gpus=r[7],
                memory_bytes=r[8], max_wall_clock_s=r[9], preemptible=r[10], sweep_id=r[11],
                submitted_s=_epoch_s(r[12]),
            )
            for r in rows.values()
        ]

    def _workspace_usage(self, session: Session, parts: list[tuple[Any, ...]], now_s: float) -> dict[str, float]:
        """Weighted CPU+GPU seconds per workspace over the last hour (refreshed every few seconds)."""
        if time.monotonic() - self._usage_at < USAGE_REFRESH_S:
            return self._usage
        since = utcnow() - timedelta(seconds=USAGE_WINDOW_S)
        usage: dict[str, float] = defaultdict(float)
        rows = session.execute(
            select(Job.workspace, Job.nodes, Job.cpus, Job.gpus, Attempt.started_at, Attempt.ended_at)
            .join(Job, Job.id == Attempt.job_id)
            .where(Attempt.started_at.is_not(None), or_(Attempt.ended_at.is_(None), Attempt.ended_at >= since))
        ).tuples()  # fmt: skip
        window_start_s = now_s - USAGE_WINDOW_S
        for workspace, nodes, cpus, gpus, started_at, ended_at in rows:
            start_s = max(window_start_s, _epoch_s(started_at) or now_s)
            end_s = _epoch_s(ended_at) or now_s
            usage[workspace] += max(0.0, end_s - start_s) * nodes * (cpus + GPU_WEIGHT * gpus)
        self._usage, self._usage_at = dict(usage), time.monotonic()
        return self._usage

    def snapshot(self, session: Session, full: bool = True) -> Snapshot | None:
        parts = self._active_parts(session)
        self._last_parts = parts
        nodes = self._node_views(session, parts)
        window = QUEUE_WINDOW
        if not full:
            # Enough of the head of the queue to fill what is free and the nodes' backlogs.
            room = sum(max(0.0, n.free_cpus) + n.cpus * SEND_AHEAD_SLOTS for n in nodes if n.schedulable)
            window = min(QUEUE_WINDOW, FAST_WINDOW_MIN + 2 * int(room))
        queued = self._queued_views(session, window)
        if not queued:
            return None
        now_s = time.time()
        gpus_in_use: dict[str, int] = defaultdict(int)
        for row in parts:
            gpus_in_use[row[9]] += len(row[4] or [])
        sweep_max, sweep_running = sweep_limits(session, {job.sweep_id for job in queued if job.sweep_id})
        return Snapshot(
            nodes=nodes, queued=queued, running=self._running_views(parts, now_s),
            now_s=now_s, workspace_usage=self._workspace_usage(session, parts, now_s),
            sweep_max_concurrency=sweep_max, sweep_running=sweep_running,
            workspace_gpu_quota=gpu_quotas(), workspace_gpus_in_use=dict(gpus_in_use),
        )  # fmt: skip

    # -- writing -----------------------------------------------------------------------------

    def _claim_batch(self, session: Session, placements: list[Placement], attempts: dict[str, int]) -> None:
        table = Job.__table__
        result = session.connection().execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("jid"), table.c.attempt == bindparam("num"), table.c.state == "queued",
                   table.c.cancel_requested.is_(False))
            .values(state="scheduled", pending_reason=None, updated_at=utcnow()),
            [{"jid": p.job_id, "num": attempts[p.job_id]} for p in placements],
        )  # fmt: skip
        if not session.connection().dialect.supports_sane_multi_rowcount or result.rowcount != len(placements):
            raise _ClaimRace

    def _claim_each(self, session: Session, placements: list[Placement], attempts: dict[str, int]) -> list[Placement]:
        won = []
        for placement in placements:
            claimed = rowcount(session.execute(
                update(Job)
                .where(Job.id == placement.job_id, Job.state == "queued", Job.attempt == attempts[placement.job_id],
                       Job.cancel_requested.is_(False))
                .values(state="scheduled", pending_reason=None, updated_at=utcnow())
            ))  # fmt: skip
            if claimed:
                won.append(placement)
        return won

    def _insert_attempts(self, session: Session, placements: list[Placement], attempts: dict[str, int]) -> None:
        now = utcnow()
        session.execute(
            insert(Attempt),
            [{"job_id": p.job_id, "number": attempts[p.job_id], "state": "scheduled", "created_at": now}
             for p in placements],
        )  # fmt: skip
        session.execute(
            insert(Part),
            [{"job_id": p.job_id, "attempt": attempts[p.job_id], "rank": part.rank, "node_id": part.node_id,
              "gpus": part.gpus, "cpus": part.cpus, "active": True, "state": "scheduled"}
             for p in placements for part in p.parts],
        )  # fmt: skip

    def _write_pending(self, session: Session, pending: dict[str, str]) -> None:
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
            .where(table.c.id == bindparam("jid"), table.c.state == "queued")
            .values(pending_reason=bindparam("reason")),
            changed,
        )
        if len(self._pending_written) > PENDING_CACHE_MAX:
            self._pending_written.clear()
        self._pending_written.update({row["jid"]: row["reason"] for row in changed})

    def _preempt(self, session: Session, victims: Iterable[tuple[str, int]]) -> None:
        fresh = [v for v in victims if v not in self.preempting]
        if not fresh:
            return
        deadline_s = time.time() + PREEMPT_GRACE_S
        rows = session.execute(
            select(Part.node_id, Part.job_id, Part.attempt).where(
                Part.active.is_(True), Part.job_id.in_([job_id for job_id, _ in fresh])
            )
        ).tuples()
        wanted = set(fresh)
        for node_id, job_id, attempt in rows:
            if (job_id, attempt) in wanted:
                self.dispatcher.send_stop(node_id, job_id, attempt, "preempted", grace_s=PREEMPT_GRACE_S)
        for victim in fresh:
            self.preempting[victim] = deadline_s

    # -- the pass ----------------------------------------------------------------------------

    def run(self, sessions: sessionmaker[Session], full: bool = True) -> int:
        """Place what fits; returns how many jobs were placed. A fast pass (full=False) looks only at
        the head of the queue and leaves pending reasons as they are."""
        try:
            written = self._plan_and_write(sessions, batch_claim=True, full=full)
        except _ClaimRace:
            # A job was cancelled while being placed: plan again, claiming one job at a time.
            written = self._plan_and_write(sessions, batch_claim=False, full=full)
        if written:
            with sessions.begin() as session:
                self.dispatcher.send_parts(session, written)
        return len(written)

    def _send_ahead(self, snapshot: Snapshot, result: PassPlan) -> None:
        """Give busy nodes a small backlog of single-node CPU jobs, so a freed slot refills at once.

        Only where nothing else waits in the pool (no gang, GPU job or limited sweep could be
        overtaken) and never onto nodes reserved for a blocked job. The node starts them in order
        as slots free (workers/capacity.py); until then they hold no slot.
        """
        placed = {p.job_id for p in result.placements}
        waiting = [job for job in snapshot.queued if job.id not in placed]
        if not waiting:
            return
        limited = set(snapshot.sweep_max_concurrency)

        def simple(job: JobView) -> bool:
            return job.nodes == 1 and job.gpus == 0 and job.memory_bytes is None and job.sweep_id not in limited

        blocked_pools = {job.pool for job in waiting if not simple(job)}
        reserved = {node_id for r in result.reservations for node_id in r.node_ids}
        backlog: dict[str, float] = defaultdict(float)
        for row in self._last_parts:
            if row[-1] == "scheduled":
                backlog[row[2]] += row[3]
        for placement in result.placements:
            for part in placement.parts:
                backlog[part.node_id] += part.cpus
        nodes = [n for n in snapshot.nodes if n.schedulable and n.id not in reserved and n.pool not in blocked_pools]
        for job in sorted(waiting, key=lambda j: (-j.priority, j.seq)):
            if job.pool in blocked_pools:
                continue
            room = [n for n in nodes if n.pool == job.pool and n.cpus >= job.cpus
                    and backlog[n.id] + job.cpus <= n.cpus * SEND_AHEAD_SLOTS]  # fmt: skip
            if not room:
                continue
            node = min(room, key=lambda n: (backlog[n.id], n.id))
            backlog[node.id] += job.cpus
            result.placements.append(Placement(job.id, [PartPlacement(0, node.id, job.cpus, [])]))
            result.pending.pop(job.id, None)

    def _plan_and_write(self, sessions: sessionmaker[Session], batch_claim: bool, full: bool) -> list[tuple[str, int]]:
        with sessions.begin() as session:
            snapshot = self.snapshot(session, full)
            if snapshot is None:
                return []
            result = plan(snapshot)
            self._send_ahead(snapshot, result)
            self.last_plan = result
            written = self._write(session, result, batch_claim)
            if full:
                self._write_pending(session, result.pending)
                self._preempt(session, result.preemptions)
        return written

    def _write(self, session: Session, result: PassPlan, batch_claim: bool) -> list[tuple[str, int]]:
        if not result.placements:
            return []
        placed_ids = [p.job_id for p in result.placements]
        attempts = dict(session.execute(select(Job.id, Job.attempt).where(Job.id.in_(placed_ids))).tuples().all())
        placements = result.placements
        if batch_claim:
            self._claim_batch(session, placements, attempts)  # raises _ClaimRace: the transaction rolls back
        else:
            placements = self._claim_each(session, placements, attempts)
        if placements:
            self._insert_attempts(session, placements, attempts)
        return [(p.job_id, attempts[p.job_id]) for p in placements]
