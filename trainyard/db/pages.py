"""Newest-first pages of jobs that stay index walks of one page with a million jobs.

A page is `ORDER BY seq DESC LIMIT n` (cursor: `seq < c`). Left alone, both databases may walk
the seq index and filter, which reads half the table when the matches are old: a sweep's jobs
sit together in seq order, and PostgreSQL assumes they are spread evenly (measured: 380 ms for
a page of an old sweep among 1M jobs). So each filter set names the `(columns…, seq)` index
that serves it and asks for that index's own order: `ORDER BY col DESC, …, seq DESC`, which
returns the same rows in the same order, since the columns are fixed by the filter. The filter
on those columns is written `col >= v AND col <= v`: PostgreSQL drops `col = v` columns from
the ORDER BY (they are constant) and would be back to the seq index; a range it keeps. Only the
index's last filter column is written so: earlier ones stay equalities, which SQLite needs to
use the columns after them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from trainyard.db.models import Job

# Equality filters each index serves, in its column order (seq comes last); best first.
_INDEXES: tuple[tuple[str, ...], ...] = (
    ("sweep_id", "state"),  # ix_jobs_sweep
    ("sweep_id",),  # ix_jobs_sweep_seq
    ("workspace", "experiment"),  # ix_jobs_experiment
    ("workspace", "state"),  # ix_jobs_workspace_state_seq
    ("experiment",),  # ix_jobs_experiment_seq
    ("state",),  # ix_jobs_state_seq
    ("workspace",),  # ix_jobs_workspace_seq
)


def index_columns(equals: dict[str, Any]) -> tuple[str, ...]:
    """The leading columns of the index that serves these equality filters (none: the seq index)."""
    return next((columns for columns in _INDEXES if set(columns) <= set(equals)), ())


def page_query(equals: dict[str, Any], conditions: list[ColumnElement[bool]], limit: int) -> Any:
    """SELECT of up to `limit` jobs with `column == value` for each of `equals` and `conditions`, newest first."""
    leading = index_columns(equals)
    ranged = leading[-1] if leading else None
    where = [
        and_(getattr(Job, name) >= value, getattr(Job, name) <= value)
        if name == ranged
        else getattr(Job, name) == value
        for name, value in equals.items()
    ]
    order = [getattr(Job, name).desc() for name in leading] + [Job.seq.desc()]
    return select(Job).where(*where, *conditions).order_by(*order).limit(limit)


def job_page(session: Session, equals: dict[str, Any], conditions: list[ColumnElement[bool]], limit: int) -> list[Job]:
    return list(session.scalars(page_query(equals, conditions, limit)).all())
