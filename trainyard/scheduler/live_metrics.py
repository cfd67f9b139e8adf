"""Live metrics: `metrics` events stored as a job's series, and sweeps' early stopping rules applied.

A running part's rank 0 sends what `trainyard.report` wrote about once a second (workers/
job_metrics.py). Each batch is applied in the leader's fenced transaction, compare-and-set on
the part (this attempt, active, on the node that sent it) and on the attempt's file offset (a
batch that lands twice starts before what is stored: ignored). An attempt keeps at most
MAX_POINTS_PER_ATTEMPT points; past it, points are dropped (counted in the event log once) but
the job's latest values (`metrics` on the job object) still follow every batch.

Early stopping (trainyard/early_stopping.py decides) runs for sweeps whose points reported,
at most once per EVAL_PERIOD_S each; a point to stop is flagged `cancel_requested` with
`end_reason = early_stopped` (compare-and-set on its attempt and state), and the cancel path
(housekeeping.CancelStops) stops it on its node, so its slot goes to the sweep's next point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from trainyard import early_stopping
from trainyard.db.engine import rowcount
from trainyard.db.models import Attempt, Event, Job, MetricPoint, Part, Sweep
from trainyard.scheduler.outcomes import Effects, record_stale
from trainyard.spec import ACTIVE_STATES, JobState, state_values

MAX_POINTS_PER_ATTEMPT = 10_000
EVAL_PERIOD_S = 1.0
MAX_TIME_S = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a datetime holds
MAX_STEP = 2**63 - 1


def _latest(points: list[dict[str, Any]]) -> tuple[dict[str, float], int | None]:
    last: dict[str, float] = {}
    step = None
    for point in points:
        for name, value in (point.get("values") or {}).items():
            if (finite := _finite(value)) is not None:
                last[name] = finite
        if (reported := _step(point)) is not None:
            step = reported
    return last, step


def apply_metrics(session: Session, events: list[dict[str, Any]], now: datetime, effects: Effects) -> set[str]:
    """Store the batches that are current; returns the sweeps whose points reported."""
    if not events:
        return set()
    job_ids = sorted({str(e["job_id"]) for e in events})
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    parts = {(p.job_id, p.attempt, p.rank): p for p in session.scalars(select(Part).where(Part.job_id.in_(job_ids)))}
    attempts = {(a.job_id, a.number): a for a in session.scalars(select(Attempt).where(Attempt.job_id.in_(job_ids)))}
    rows: list[dict[str, Any]] = []
    sweeps: set[str] = set()
    for event in events:
        key = (str(event["job_id"]), int(event["attempt"]), int(event["rank"]))
        part, job, row = parts.get(key), jobs.get(key[0]), attempts.get(key[:2])
        if part is None or not part.active or part.node_id != event["node"] or job is None or row is None:
            record_stale(session, effects, event, now)
            continue
        if int(event["offset"]) < (row.metrics_offset or 0):
            continue  # this batch landed already (the outbox retried it)
        points = list(event.get("points") or [])
        stored = row.metrics_points or 0
        room = max(0, MAX_POINTS_PER_ATTEMPT - stored)
        rows.extend(_row(job, key[1], point, now) for point in points[:room])
        if len(points) > room and stored <= MAX_POINTS_PER_ATTEMPT:  # the first batch past the cap: said once
            detail = {"limit": MAX_POINTS_PER_ATTEMPT}
            session.add(Event(at=now, kind="metrics_capped", job_id=job.id, attempt=key[1], detail=detail))
        row.metrics_points = stored + len(points) if len(points) <= room else MAX_POINTS_PER_ATTEMPT + 1
        row.metrics_offset = int(event["end"])
        last, step = _latest(points)
        if last and job.attempt == key[1]:
            job.metrics = {**(job.metrics or {}), **last}
            job.metrics_step = step if step is not None else job.metrics_step
        if job.sweep_id is not None:
            sweeps.add(job.sweep_id)
    if rows:
        session.execute(insert(MetricPoint), rows)
    return sweeps


def _row(job: Job, attempt: int, point: dict[str, Any], now: datetime) -> dict[str, Any]:
    when = point.get("time")
    at = now  # a point without its own time (or one no datetime can hold) is dated when it landed
    if isinstance(when, (int, float)) and not isinstance(when, bool) and 0 < when < MAX_TIME_S:
        at = datetime.fromtimestamp(float(when), UTC)
    values = {str(name): _finite(value) for name, value in (point.get("values") or {}).items()}
    return {"job_id": job.id, "sweep_id": job.sweep_id, "attempt": attempt, "step": _step(point), "at": at,
            "values": values}  # fmt: skip


def _step(point: dict[str, Any]) -> int | None:
    """A point's step, if it has one a 64-bit column holds."""
    step = point.get("step")
    if isinstance(step, int) and not isinstance(step, bool) and -MAX_STEP <= step <= MAX_STEP:
        return step
    return None


def _finite(value: Any) -> float | None:
    """A stored value: a finite number, else None (as the node writes it). NaN and ±inf are not
    JSON: PostgreSQL refuses them, which would roll back the whole batch of events with them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def sweep_series(session: Session, sweep_id: str, metric: str) -> tuple[dict[str, early_stopping.Series], set[str]]:
    """(each current point's series of `metric` on its current attempt, the points still running)."""
    current = session.execute(
        select(Job.id, Job.attempt, Job.state, Job.cancel_requested).where(
            Job.sweep_id == sweep_id, Job.superseded_by.is_(None)
        )
    )
    attempt_of: dict[str, int] = {}
    running: set[str] = set()
    for job_id, attempt, state, cancel_requested in current:
        attempt_of[job_id] = attempt
        if state in (JobState.SCHEDULED.value, JobState.RUNNING.value) and not cancel_requested:
            running.add(job_id)
    series: dict[str, list[tuple[int, float]]] = {}
    points = session.execute(
        select(MetricPoint.job_id, MetricPoint.attempt, MetricPoint.step, MetricPoint.values)
        .where(MetricPoint.sweep_id == sweep_id)
        .order_by(MetricPoint.id)
    )
    for job_id, attempt, step, values in points:
        value = (values or {}).get(metric)
        if attempt_of.get(job_id) != attempt or step is None or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        series.setdefault(job_id, []).append((int(step), float(value)))
    for values in series.values():
        values.sort(key=lambda pair: pair[0])
    return dict(series), running


def stop_points(session: Session, job_ids: Iterable[str], sweep_id: str, now: datetime) -> list[str]:
    """Flag points for the cancel path with reason early_stopped; compare-and-set on their attempt and state."""
    stopped = []
    for job_id, attempt in session.execute(select(Job.id, Job.attempt).where(Job.id.in_(list(job_ids)))):
        changed = rowcount(
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempt == attempt, Job.cancel_requested.is_(False),
                       Job.state.in_(state_values(ACTIVE_STATES)))
                .values(cancel_requested=True, end_reason=early_stopping.EARLY_STOPPED, updated_at=now)
            )
        )  # fmt: skip
        if changed:
            stopped.append(job_id)
            detail = {"sweep": sweep_id}
            session.add(Event(at=now, kind=early_stopping.EARLY_STOPPED, job_id=job_id, attempt=attempt, detail=detail))
    return stopped


class EarlyStopper:
    """The sweeps to judge (their points reported since), each at most once per EVAL_PERIOD_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, period_s: float = EVAL_PERIOD_S):
        self.clock, self.period_s = clock, period_s
        self.dirty: set[str] = set()
        self._judged_at: dict[str, float] = {}

    def reset(self) -> None:
        self._judged_at.clear()

    def run(self, session: Session, now: datetime) -> list[str]:
        """Judge the sweeps that are due; returns the points flagged to stop."""
        tick = self.clock()
        due = sorted(s for s in self.dirty if tick - self._judged_at.get(s, float("-inf")) >= self.period_s)
        if not due:
            return []
        rules: dict[str, Any] = dict(
            session.execute(
                select(Sweep.id, Sweep.early_stopping).where(Sweep.id.in_(due), Sweep.early_stopping.is_not(None))
            ).all()
        )
        stopped: list[str] = []
        for sweep_id in due:
            self.dirty.discard(sweep_id)
            self._judged_at[sweep_id] = tick
            if rules.get(sweep_id):
                rule = early_stopping.EarlyStopping.model_validate(rules[sweep_id])
                series, running = sweep_series(session, sweep_id, rule.metric)
                to_stop = early_stopping.decide(rule, series, running)
                if to_stop:
                    stopped += stop_points(session, to_stop, sweep_id, now)
        if len(self._judged_at) > 10_000:
            self._judged_at = {k: v for k, v in self._judged_at.items() if tick - v < 3600}
        return stopped
