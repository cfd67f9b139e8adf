"""`GET /v1/jobs/{id}/metrics`: what the job reported with `trainyard.report`, while it runs and after."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from trainyard.api.auth import Principal, require
from trainyard.api.errors import request_problem
from trainyard.api.schemas import plausible_id
from trainyard.db.metric_series import MAX_PAGE, SeriesQuery, series_page
from trainyard.db.models import Job

router = APIRouter(prefix="/v1")

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job in your workspace"}}


def _cursor(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 18:
        problem = request_problem(["query", "cursor"], "not a cursor this API returned")
        raise HTTPException(status_code=422, detail=[problem])
    return int(value)


@router.get(
    "/jobs/{job_id}/metrics",
    summary="A job's reported metrics over steps: [{step, time, attempt, values}], paged",
    responses=_NOT_FOUND,
)
def job_metrics(
    request: Request,
    job_id: str,
    name: list[str] | None = Query(None, max_length=100, description="only these metrics (repeat or comma-separate)"),
    attempt: int | None = Query(None, ge=1, le=2**31 - 1),
    since_step: int | None = Query(None, ge=-1, le=2**62, description="only points after this step"),
    cursor: str | None = Query(None, max_length=20, description="next_cursor of the previous page"),
    limit: int = Query(1000, ge=1, le=MAX_PAGE),
    who: Principal = require("viewer"),
) -> Any:
    names = frozenset(n.strip() for item in name for n in item.split(",") if n.strip()) if name else None
    query = SeriesQuery(names=names, attempt=attempt, since_step=since_step, cursor=_cursor(cursor), limit=limit)
    with request.app.state.sessions() as session:
        job = session.get(Job, job_id) if plausible_id(job_id) else None
        if job is None or not who.sees(job.workspace):
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return series_page(session, job_id, query)
