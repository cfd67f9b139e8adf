"""Dependency edges in the database: stored at submit, shown with `job show`, and counted for a cancel.

Every edge adds one to its job's `waiting_on` and to its target's `dependants_waiting`; the
scheduler's gate (scheduler/gate.py) resolves edges and takes those counts down again. The counts
change only by increments and decrements in single UPDATE statements, so the API adding edges while
the gate resolves others loses no update on SQLite or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from trainyard.db.bulk import insert_dicts
from trainyard.db.models import Job, JobDependency, Sweep
from trainyard.dependencies import SweepProgress, Waiting, cascades, job_verdict, sweep_verdict, waiting_reason
from trainyard.spec import ACTIVE_STATES, JobState, state_values

WAITING = "waiting"
CHUNK = 500
CASCADE_MAX = 100_000
_ACTIVE = (JobState.QUEUED.value, *state_values(ACTIVE_STATES))


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency as stored: on job or sweep `target_id`, for condition `on`."""

    kind: str
    target_id: str
    on: str
    target_name: str | None = None

    @property
    def waiting(self) -> Waiting:
        return Waiting(self.kind, self.target_id, self.on, self.target_name)


def edge_rows(job_ids: Iterable[str], edges: Sequence[Edge]) -> list[dict[str, Any]]:
    return [{"job_id": job_id, "target_kind": e.kind, "target_id": e.target_id, "on": e.on, "status": WAITING,
             "resolved_at": None} for job_id in job_ids for e in edges]  # fmt: skip


def store_edges(session: Session, rows: Sequence[dict[str, Any]], stored: Mapping[tuple[str, str], int]) -> None:
    """Insert edge rows; add to `dependants_waiting` of targets already stored (kind, id) → edges.

    Targets inserted in the same call carry their count in their own row instead.
    """
    insert_dicts(session, JobDependency.__table__, rows)  # type: ignore[arg-type]
    bump_dependants(session, stored, +1)


def bump_dependants(session: Session, counts: Mapping[tuple[str, str], int], sign: int) -> None:
    """`dependants_waiting += sign * n` per target, one executemany per kind."""
    for kind, model in (("job", Job), ("sweep", Sweep)):
        params = [{"tid": tid, "n": sign * n} for (k, tid), n in counts.items() if k == kind and n]
        if params:
            table: Table = model.__table__  # type: ignore[assignment]
            session.connection().execute(
                update(table).where(table.c.id == bindparam("tid"))
                .values(dependants_waiting=table.c.dependants_waiting + bindparam("n")),
                params,
            )  # fmt: skip


def stored_targets(session: Session, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, id) → (workspace, name) of the targets that exist."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for kind, model in (("job", Job), ("sweep", Sweep)):
        ids = sorted({tid for k, tid in refs if k == kind})
        for start in range(0, len(ids), CHUNK):
            rows = session.execute(
                select(model.id, model.workspace, model.name).where(model.id.in_(ids[start : start + CHUNK]))
            )
            found.update({(kind, i): (w, n) for i, w, n in rows})
    return found


def sweep_progress(session: Session, sweep_id: str) -> SweepProgress:
    """A sweep's points as dependencies see them: a few index look-ups (ix_jobs_sweep), not a count."""

    def has(*states: str) -> bool:
        query = select(Job.id).where(Job.sweep_id == sweep_id, Job.state.in_(states)).limit(1)
        return session.execute(query).first() is not None

    total = session.execute(select(Sweep.total).where(Sweep.id == sweep_id)).scalar() or 0
    return SweepProgress(points=int(total), active=has(*_ACTIVE), any_failed=has(JobState.FAILED.value),
                         any_cancelled=has(JobState.CANCELLED.value))  # fmt: skip


def load_dependencies(session: Session, job_id: str) -> list[dict[str, Any]]:
    """A job's dependencies for `job show`: target, condition, edge status and the target's state now."""
    edges = session.scalars(select(JobDependency).where(JobDependency.job_id == job_id).order_by(JobDependency.id))
    shown = []
    for edge in edges:
        if edge.target_kind == "job":
            row = session.execute(select(Job.name, Job.state).where(Job.id == edge.target_id)).first()
            name, state = (row[0], row[1]) if row is not None else (None, None)
            verdict = job_verdict(edge.on, state) if state else None
        else:
            sweep = session.get(Sweep, edge.target_id)
            progress = sweep_progress(session, edge.target_id)
            name, state, verdict = (sweep.name if sweep else None), progress.state, sweep_verdict(edge.on, progress)
        shown.append({edge.target_kind: edge.target_id, "on": edge.on, "name": name, "state": state,
                      "status": edge.status, "condition": verdict.value if verdict else "open"})  # fmt: skip
    return shown


def cancel_cascade(session: Session, job_id: str) -> int:
    """How many waiting dependants end `cancelled` (dependency_failed), transitively, if `job_id` is cancelled.

    Only edges for `succeeded` or `failed` cascade (a cancelled job still `ended`); a cancelled sweep
    point makes its sweep's `succeeded` impossible too.
    """
    frontier = [job_id]
    seen = {job_id}
    while frontier and len(seen) <= CASCADE_MAX:
        targets: list[tuple[str, str]] = [("job", j) for j in frontier]
        sweeps = session.execute(select(Job.sweep_id).where(Job.id.in_(frontier), Job.sweep_id.is_not(None)))
        targets += [("sweep", str(s)) for s in {row[0] for row in sweeps}]
        frontier = []
        for start in range(0, len(targets), CHUNK):
            ids = [tid for _, tid in targets[start : start + CHUNK]]
            rows = session.execute(
                select(JobDependency.job_id, JobDependency.target_kind, JobDependency.on)
                .join(Job, Job.id == JobDependency.job_id)
                .where(JobDependency.target_id.in_(ids), JobDependency.status == WAITING,
                       Job.state == JobState.QUEUED.value)
            )  # fmt: skip
            for dependant, kind, on in rows:
                impossible = cascades(on) if kind == "job" else on == "succeeded"
                if impossible and dependant not in seen:
                    seen.add(dependant)
                    frontier.append(dependant)
    return len(seen) - 1


def waiting_reasons(session: Session, job_ids: Sequence[str]) -> dict[str, str]:
    """The pending reason of each job from its edges still waiting (jobs with none left are absent)."""
    edges: dict[str, list[Edge]] = {}
    for start in range(0, len(job_ids), CHUNK):
        rows = session.execute(
            select(JobDependency.job_id, JobDependency.target_kind, JobDependency.target_id, JobDependency.on)
            .where(JobDependency.job_id.in_(job_ids[start : start + CHUNK]), JobDependency.status == WAITING)
            .order_by(JobDependency.id)
        )  # fmt: skip
        for job_id, kind, target_id, on in rows:
            edges.setdefault(job_id, []).append(Edge(kind, target_id, on))
    targets = stored_targets(session, {(e.kind, e.target_id) for es in edges.values() for e in es})
    return {
        job_id: waiting_reason([Waiting(e.kind, e.target_id, e.on, targets.get((e.kind, e.target_id), ("", ""))[1])
                                for e in es])
        for job_id, es in edges.items()
    }  # fmt: skip
