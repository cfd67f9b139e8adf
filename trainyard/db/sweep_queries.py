"""Reading sweeps: the sweep object (state counts, progress), its leaderboard, and pages of sweeps."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trainyard.db.jobs import iso
from trainyard.db.models import Job, Sweep
from trainyard.spec import TERMINAL_STATES, JobState

STATES = tuple(state.value for state in JobState)
METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
LEADERBOARD_DEFAULT = 20


def state_counts(session: Session, sweep_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Jobs per state of each sweep (an index-only count on ix_jobs_sweep)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    if not sweep_ids:
        return counts
    query = select(Job.sweep_id, Job.state, func.count()).where(Job.sweep_id.in_(sweep_ids))
    rows = session.execute(query.group_by(Job.sweep_id, Job.state))
    for sweep_id, state, count in rows:
        counts[str(sweep_id)][state] = int(count)
    return counts


def sweep_state(sweep: Sweep, counts: dict[str, int]) -> str:
    """running while any job may still run; then finished, or cancelled when it was cancelled."""
    active = sum(counts.get(state, 0) for state in STATES if state not in TERMINAL_STATES)
    if sweep.cancel_requested:
        return "cancelling" if active else "cancelled"
    return "running" if active else "finished"


def latest_counts(sweep: Sweep, counts: dict[str, int]) -> dict[str, int]:
    """Counts of each point's latest run: jobs rerun inside the sweep are left out."""
    superseded = sweep.superseded or {}
    return {state: max(0, count - int(superseded.get(state, 0))) for state, count in counts.items()}


def sweep_dict(sweep: Sweep, all_counts: dict[str, int]) -> dict[str, Any]:
    """The sweep object of the API: definition, state counts and progress of each point's latest run.

    `total` counts every job of the sweep; `superseded`, those rerun by a later job of it; `points`,
    the rest (each point's latest run), which `counts` and `progress` are about.
    """
    counts = latest_counts(sweep, all_counts)
    superseded = sum((sweep.superseded or {}).values())
    points = sweep.total - superseded
    done = sum(counts.get(state, 0) for state in TERMINAL_STATES)
    return {
        "id": sweep.id,
        "name": sweep.name,
        "workspace": sweep.workspace,
        "experiment": sweep.experiment,
        "state": sweep_state(sweep, counts),
        "kind": sweep.kind,
        "parameters": list(sweep.parameters),
        "definition": sweep.definition,
        "max_concurrency": sweep.max_concurrency,
        "early_stopping": sweep.early_stopping,
        "total": sweep.total,
        "superseded": superseded,
        "points": points,
        "counts": dict(counts),
        "progress": round(done / points, 6) if points > 0 else 1.0,
        "cancel_requested": sweep.cancel_requested,
        "created_at": iso(sweep.created_at),
        "template": sweep.template,
    }


def load_sweep_dict(session: Session, sweep: Sweep) -> dict[str, Any]:
    return sweep_dict(sweep, state_counts(session, [sweep.id])[sweep.id])


def leaderboard(session: Session, sweep_id: str, metric: str, order: str, limit: int) -> list[dict[str, Any]]:
    """The sweep's points that reported `metric`, best first (`order` min or max), ties by submit order.

    A point rerun inside the sweep is ranked by its latest run only.
    """
    value = Job.metrics[metric].as_float()
    ranked = value.asc() if order == "min" else value.desc()
    rows = session.execute(
        select(Job.id, Job.name, Job.state, Job.params, Job.metrics, Job.metrics_step, value)
        .where(Job.sweep_id == sweep_id, Job.metrics.is_not(None), value.is_not(None), Job.superseded_by.is_(None))
        .order_by(ranked, Job.seq)
        .limit(limit)
    )
    return [
        {"rank": rank, "job_id": job_id, "name": name, "state": state, "params": params or {}, "value": score,
         "metrics": metrics or {}, "step": step}
        for rank, (job_id, name, state, params, metrics, step, score) in enumerate(rows, start=1)
    ]  # fmt: skip


# Jobs of a sweep looked at for the names of the metrics they report (the points report the same ones).
METRIC_SAMPLE_JOBS = 50


def metric_names(session: Session, sweep_id: str) -> list[str]:
    """Names of the metrics the sweep's points have reported, from its first jobs that reported any."""
    rows = session.scalars(
        select(Job.metrics).where(Job.sweep_id == sweep_id, Job.metrics.is_not(None)).limit(METRIC_SAMPLE_JOBS)
    )
    return sorted({name for metrics in rows for name in (metrics or {}) if METRIC_NAME.match(name)})


def list_sweeps(
    session: Session, workspace: str | None, limit: int, cursor: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of sweeps, newest first, and the cursor of the next page (None at the end)."""
    query = select(Sweep).order_by(Sweep.seq.desc()).limit(limit + 1)
    if workspace is not None:
        query = query.where(Sweep.workspace == workspace)
    if cursor is not None:
        query = query.where(Sweep.seq < cursor)
    found = session.scalars(query).all()
    page = found[:limit]
    counts = state_counts(session, [sweep.id for sweep in page])
    next_cursor = page[-1].seq if len(found) > limit else None
    return [sweep_dict(sweep, counts[sweep.id]) for sweep in page], next_cursor
