"""Dashboard pages (GET): jobs, a job, sweeps, a sweep and its plot, nodes and pools.

Each page calls the REST routes' own functions with the session's principal, so a page shows
exactly what `GET /v1/...` would answer that token: the same queries (the jobs page is
`list_jobs`, one index walk per page whatever the filters), the same workspace checks (another
workspace's job is a 404 here too), the same serialisation.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from trainyard import sweep_plot
from trainyard.api import jobs, nodes, outputs, sweeps
from trainyard.api.dashboard.render import PAGE_HEADERS, TERMINAL_STATES, render
from trainyard.api.dashboard.sessions import DashboardUser, current_user
from trainyard.db import sweep_queries
from trainyard.spec import JobState

router = APIRouter(prefix="/ui", include_in_schema=False)

JOBS_PAGE_SIZE = 100
SWEEPS_PAGE_SIZE = 50
LEADERBOARD_ROWS = 20
MAX_CURSOR = 2**63 - 1
JOB_STATES = tuple(state.value for state in JobState)


def _blank_is_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    state: str | None = None,
    experiment: str | None = None,
    workspace: str | None = None,
    sweep: str | None = None,
    cursor: int | None = Query(None, ge=0, le=MAX_CURSOR),
    user: DashboardUser = Depends(current_user),
) -> Response:
    filters = {
        "state": _blank_is_none(state),
        "experiment": _blank_is_none(experiment),
        "workspace": _blank_is_none(workspace),
        "sweep": _blank_is_none(sweep),
    }
    page = jobs.list_jobs(request, **filters, name_prefix=None, limit=JOBS_PAGE_SIZE, cursor=cursor, who=user.who)
    template = "_jobs_table.html" if request.headers.get("HX-Request") else "jobs.html"
    return render(request, template, user, page=page, filters=filters, states=JOB_STATES, cursor=cursor)


def _job_context(request: Request, job_id: str, user: DashboardUser) -> dict[str, Any]:
    job = jobs.get_job(request, job_id, who=user.who)
    return {"job": job, "terminal": job["state"] in TERMINAL_STATES}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, user: DashboardUser = Depends(current_user)) -> Response:
    context = _job_context(request, job_id, user)
    data_problem = None
    try:
        found = outputs.list_outputs(request, job_id, attempt=None, who=user.who)
        manifests = outputs.list_manifests(request, job_id, attempt=None, who=user.who)["manifests"]
    except HTTPException as exc:
        if exc.status_code != 503:
            raise
        found, manifests, data_problem = {"outputs": [], "refused": []}, [], str(exc.detail)
    ranks = range(max(1, int(context["job"].get("nodes") or 1)))
    return render(
        request, "job.html", user, **context, outputs=found, manifests=manifests, data_problem=data_problem,
        ranks=ranks,
    )  # fmt: skip


@router.get("/jobs/{job_id}/status", response_class=HTMLResponse)
def job_status(request: Request, job_id: str, user: DashboardUser = Depends(current_user)) -> Response:
    """The part of a job's page that changes while it runs (htmx polls it until the job has ended)."""
    return render(request, "_job_status.html", user, **_job_context(request, job_id, user))


@router.get("/jobs/{job_id}/outputs/{key}")
def download_output(request: Request, job_id: str, key: str, user: DashboardUser = Depends(current_user)) -> Any:
    response = outputs.download_output(request, job_id, key, who=user.who)
    listed = outputs.list_outputs(request, job_id, attempt=None, who=user.who)["outputs"]
    path = next((f["path"] for f in listed if f["key"] == key), key)
    filename = path.rsplit("/", 1)[-1].replace('"', "") or key
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(
    request: Request,
    cursor: int | None = Query(None, ge=0, le=MAX_CURSOR),
    user: DashboardUser = Depends(current_user),
) -> Response:
    page = sweeps.list_sweeps(request, workspace=None, limit=SWEEPS_PAGE_SIZE, cursor=cursor, who=user.who)
    return render(request, "sweeps.html", user, page=page, cursor=cursor)


def _metric_choice(
    request: Request, sweep_id: str, user: DashboardUser, metric: str | None
) -> tuple[str | None, list[str]]:
    sweeps.get_sweep(request, sweep_id, metric=None, order="min", top=1, who=user.who)  # 404 before anything else
    with request.app.state.sessions() as session:
        names = sweep_queries.metric_names(session, sweep_id)
    chosen = metric if metric in names else (names[0] if names else None)
    return chosen, names


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(
    request: Request,
    sweep_id: str,
    metric: str | None = None,
    order: str = Query("min", pattern="^(min|max)$"),
    user: DashboardUser = Depends(current_user),
) -> Response:
    chosen, names = _metric_choice(request, sweep_id, user, metric)
    sweep = sweeps.get_sweep(request, sweep_id, metric=chosen, order=order, top=LEADERBOARD_ROWS, who=user.who)
    template = "_sweep_progress.html" if request.headers.get("HX-Request") else "sweep.html"
    return render(request, template, user, sweep=sweep, metric=chosen, metrics=names, order=order)


@router.get("/sweeps/{sweep_id}/plot.png")
def sweep_plot_png(
    request: Request,
    sweep_id: str,
    metric: str,
    order: str = Query("min", pattern="^(min|max)$"),
    user: DashboardUser = Depends(current_user),
) -> Response:
    """The metric against each parameter and against the step it was reported at (trainyard/sweep_plot.py)."""
    sweep = sweeps.get_sweep(request, sweep_id, metric=metric, order=order, top=sweeps.LEADERBOARD_MAX, who=user.who)
    image = io.BytesIO()
    sweep_plot.plot_metric(
        sweep["leaderboard"], list(sweep["parameters"]), metric, image, title=f"{sweep['name']}: {metric}", steps=True
    )
    return Response(image.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request, user: DashboardUser = Depends(current_user)) -> Response:
    node_list = nodes.list_nodes(request, who=user.who)["nodes"]
    pools = nodes.list_pools(request, who=user.who)["pools"]
    template = "_nodes_table.html" if request.headers.get("HX-Request") else "nodes.html"
    return render(request, template, user, nodes=node_list, pools=pools, now=datetime.now(UTC))


@router.get("/nodes/{node_id}/setup-log")
def node_setup_log(request: Request, node_id: str, user: DashboardUser = Depends(current_user)) -> Response:
    response: Response = nodes.node_logs(request, node_id, who=user.who)
    response.headers.update(PAGE_HEADERS)
    return response


@router.get("", include_in_schema=False)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)
