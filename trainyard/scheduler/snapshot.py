"""The snapshot one pass plans from: free resources per node, the queue, what runs, limits.

Read in the pass's transaction (scheduler/passes.py); see scheduler/views.py for the shapes.
Attempts being preempted (`stopping`, with their kill deadline) count as ending by then, so the
planner holds their room for the job that preempted them instead of preempting again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from trainyard.db.models import Attempt, Job, Node, Part, utcnow
from trainyard.db.sweeps import sweep_limits
from trainyard.scheduler.placement import JobView, NodeView, Snapshot
from trainyard.scheduler.views import RunningPart, RunningView
from trainyard.spec import SERVING_NODE_STATES, UNREADY_NODE_STATES, JobState, NodeState

# The queue one pass looks at: the highest priorities, plus the oldest jobs (which aging may
# have lifted above them), so that no job is out of sight for ever.
QUEUE_WINDOW = 20_000
OLDEST_WINDOW = 2_000
FAST_WINDOW_MIN = 64
USAGE_WINDOW_S = 3600.0
USAGE_REFRESH_S = 10.0
GPU_WEIGHT = 8.0  # one GPU-second weighs as much as this many CPU-seconds in fair share

_QUEUED_COLUMNS = (
    Job.id, Job.pool, Job.priority, Job.seq, Job.workspace, Job.nodes, Job.cpus, Job.gpus,
    Job.memory_bytes, Job.max_wall_clock_s, Job.preemptible, Job.sweep_id, Job.submitted_at,
    Job.host_paths, Job.attempt,
)  # fmt: skip
# The statements every pass runs, built once.
_READY = (
    Job.state == JobState.QUEUED.value,
    Job.waiting_on == 0,  # jobs waiting on dependencies stay out of sight until the gate releases them
    Job.cancel_requested.is_(False),
    or_(Job.not_before.is_(None), Job.not_before <= bindparam("now")),
)
_TOP_QUEUED = select(*_QUEUED_COLUMNS).where(*_READY).order_by(Job.priority.desc(), Job.seq).limit(bindparam("window"))
_OLDEST_QUEUED = select(*_QUEUED_COLUMNS).where(*_READY).order_by(Job.seq).limit(bindparam("window"))
_ACTIVE_PARTS = (
    select(Part.job_id, Part.attempt, Part.node_id, Part.cpus, Part.gpus, Job.memory_bytes, Job.priority,
           Job.preemptible, Job.max_wall_clock_s, Job.workspace, Job.sweep_id, Job.cancel_requested,
           Attempt.started_at, Attempt.created_at, Part.state)
    .join(Job, Job.id == Part.job_id)
    .join(Attempt, (Attempt.job_id == Part.job_id) & (Attempt.number == Part.attempt))
    .where(Part.active.is_(True))
)  # fmt: skip
_LISTED_NODES = select(
    Node.id, Node.pool, Node.state, Node.address, Node.slots, Node.gpus, Node.memory_bytes, Node.labels,
    Node.host_volumes,
).where(Node.state.in_((*SERVING_NODE_STATES, *UNREADY_NODE_STATES)))  # fmt: skip


def _epoch_s(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass
class SnapshotReader:
    """Builds snapshots; keeps what need not be re-read every pass (fair-share usage)."""

    preempting: dict[tuple[str, int], float] = field(default_factory=dict)  # attempt → kill deadline (epoch s)
    gpu_quotas: dict[str, int] = field(default_factory=dict)  # per workspace (TRAINYARD_GPU_QUOTAS); absent: none
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _usage: dict[str, float] = field(default_factory=dict)
    _usage_at: float = float("-inf")
    unready: dict[str, dict[str, int]] = field(default_factory=dict)  # pool → state → nodes, last snapshot

    def _active_parts(self, session: Session) -> list[tuple[Any, ...]]:
        return list(session.connection().execute(_ACTIVE_PARTS))

    def _node_views(self, session: Session, parts: list[tuple[Any, ...]]) -> list[NodeView]:
        used_cpus: dict[str, float] = defaultdict(float)
        used_gpus: dict[str, set[int]] = defaultdict(set)
        used_memory: dict[str, int] = defaultdict(int)
        for _job, _attempt, node_id, cpus, gpus, memory, *_ in parts:
            used_cpus[node_id] += cpus
            used_gpus[node_id].update(gpus or [])
            used_memory[node_id] += memory or 0
        views = []
        self.unready = {}
        for node in session.connection().execute(_LISTED_NODES):
            if node.state in UNREADY_NODE_STATES:
                counts = self.unready.setdefault(node.pool, {})
                counts[node.state] = counts.get(node.state, 0) + 1
                continue
            free_memory = None if node.memory_bytes is None else node.memory_bytes - used_memory[node.id]
            views.append(
                NodeView(
                    id=node.id, pool=node.pool, address=node.address, cpus=float(node.slots), gpus=list(node.gpus),
                    free_cpus=float(node.slots) - used_cpus[node.id],
                    free_gpus=[g for g in node.gpus if g not in used_gpus[node.id]],
                    schedulable=node.state == NodeState.UP, memory_bytes=node.memory_bytes,
                    free_memory_bytes=free_memory, labels=dict(node.labels or {}),
                    host_volumes=tuple(node.host_volumes or ()),
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
        params = {"now": utcnow(), "window": window}
        connection = session.connection()
        rows = {r[0]: r for r in connection.execute(_TOP_QUEUED, params)}
        if window == QUEUE_WINDOW and len(rows) >= QUEUE_WINDOW:
            oldest = connection.execute(_OLDEST_QUEUED, {**params, "window": OLDEST_WINDOW})
            rows.update({r[0]: r for r in oldest})
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
                submitted_s=_epoch_s(r[12]),
                host_paths=tuple(r[13]) if r[13] else (),
                attempt=r[14],
            )
            for r in rows.values()
        ]

    def _workspace_usage(self, session: Session, parts: list[tuple[Any, ...]], now_s: float) -> dict[str, float]:
        """Weighted CPU+GPU seconds per workspace over the last hour (refreshed every few seconds)."""
        if self.clock() - self._usage_at < USAGE_REFRESH_S:
            return self._usage
        since = utcnow() - timedelta(seconds=USAGE_WINDOW_S)
        usage: dict[str, float] = defaultdict(float)
        rows = session.execute(
            select(Job.workspace, Job.nodes, Job.cpus, Job.gpus, Attempt.started_at, Attempt.ended_at)
            .join(Job, Job.id == Attempt.job_id)
            .where(Attempt.started_at.is_not(None), or_(Attempt.ended_at.is_(None), Attempt.ended_at >= since))
        )  # fmt: skip
        window_start_s = now_s - USAGE_WINDOW_S
        for workspace, nodes, cpus, gpus, started_at, ended_at in rows:
            start_s = max(window_start_s, _epoch_s(started_at) or now_s)
            end_s = _epoch_s(ended_at) or now_s
            usage[workspace] += max(0.0, end_s - start_s) * nodes * (cpus + GPU_WEIGHT * gpus)
        self._usage, self._usage_at = dict(usage), self.clock()
        return self._usage

    def snapshot(self, session: Session, full: bool = True) -> Snapshot | None:
        # Read as Core statements on the transaction's connection (no ORM layer): flushed first.
        session.flush()
        parts = self._active_parts(session)
        nodes = self._node_views(session, parts)
        window = QUEUE_WINDOW
        if not full:
            # Enough of the head of the queue to fill what is free (and to see who preempts).
            room = sum(max(0.0, n.free_cpus) for n in nodes if n.schedulable)
            window = min(QUEUE_WINDOW, FAST_WINDOW_MIN + 2 * int(room))
        queued = self._queued_views(session, window)
        if not queued:
            return None
        now_s = self.wall()
        gpus_in_use: dict[str, int] = defaultdict(int)
        for row in parts:
            gpus_in_use[row[9]] += len(row[4] or [])
        sweep_max, sweep_running = sweep_limits(session, {job.sweep_id for job in queued if job.sweep_id})
        return Snapshot(
            nodes=nodes, queued=queued, running=self._running_views(parts, now_s),
            now_s=now_s, workspace_usage=self._workspace_usage(session, parts, now_s),
            sweep_max_concurrency=sweep_max, sweep_running=sweep_running,
            workspace_gpu_quota=self.gpu_quotas, workspace_gpus_in_use=dict(gpus_in_use),
            unready_nodes=self.unready,
        )  # fmt: skip
