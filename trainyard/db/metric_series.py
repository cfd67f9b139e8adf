"""Reading a job's live metrics series (GET /v1/jobs/{id}/metrics): pages in report order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.db.jobs import iso
from trainyard.db.models import MetricPoint

MAX_PAGE = 10_000


@dataclass(frozen=True)
class SeriesQuery:
    """Which points: of one attempt (None: all), with these metrics (None: all), after a step, after a cursor."""

    names: frozenset[str] | None = None
    attempt: int | None = None
    since_step: int | None = None
    cursor: int = 0
    limit: int = 1000


def series_page(session: Session, job_id: str, query: SeriesQuery) -> dict[str, Any]:
    """`{"job_id", "points": [{step, time, attempt, values}], "next_cursor"}`: next_cursor is None on the last page."""
    stmt = select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.id > query.cursor)
    if query.attempt is not None:
        stmt = stmt.where(MetricPoint.attempt == query.attempt)
    if query.since_step is not None:
        stmt = stmt.where(MetricPoint.step > query.since_step)
    # Ordered by attempt, then as reported: an attempt's series is contiguous and in step order.
    rows = session.scalars(stmt.order_by(MetricPoint.id).limit(query.limit)).all()
    points = []
    for row in rows:
        values = dict(row.values or {})
        if query.names is not None:
            values = {name: value for name, value in values.items() if name in query.names}
            if not values:
                continue
        points.append({"step": row.step, "time": iso(row.at), "attempt": row.attempt, "values": values})
    next_cursor = str(rows[-1].id) if len(rows) == query.limit else None
    return {"job_id": job_id, "points": points, "next_cursor": next_cursor}
