"""Sweep routes: submit a sweep, show it (counts, progress, leaderboard), add points, rerun, cancel, list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainyard import retrying, sweeps, transport
from trainyard.api.auth import Principal, require
from trainyard.api.dependencies import plan_dependencies
from trainyard.api.fit import unfit_problems
from trainyard.api.schemas import ErrorResponse, ValidationFailed, nul_fields, plausible_id
from trainyard.api.volumes import resolve_volumes
from trainyard.config import secret
from trainyard.crypto import encrypt_secrets
from trainyard.db import sweep_queries
from trainyard.db.jobs import NewJob
from trainyard.db.models import Sweep
from trainyard.db.notifications import notifications_of
from trainyard.db.sweeps import SweepConflict, add_points, cancel_sweep, create_sweep, rerun_points, sweep_digest
from trainyard.spec import SpecError

router = APIRouter(prefix="/v1")

LIST_LIMIT_MAX = 1000
LEADERBOARD_MAX = 10_000
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such sweep"}}
_CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"model": ErrorResponse, "description": "the sweep is cancelled, or its idempotency key is taken"},
    422: {"model": ValidationFailed, "description": "the sweep is invalid: every problem is named"},
}


class SweepOut(BaseModel):
    """The sweep object: definition, `counts` per job state, `progress` (0-1) and, when asked, `leaderboard`."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    workspace: str
    experiment: str
    state: str
    kind: str
    parameters: list[str]
    max_concurrency: int | None
    early_stopping: dict[str, Any] | None = None
    total: int
    superseded: int
    points: int
    counts: dict[str, int]
    progress: float


class SweepRerun(BaseModel):
    """`POST /v1/sweeps/{id}:rerun`: `failed` reruns only the points that failed or were cancelled."""

    model_config = ConfigDict(extra="forbid")

    failed: bool = False


class RerunJob(BaseModel):
    id: str
    rerun_of: str


class SweepRerunOut(SweepOut):
    """The sweep after the rerun, and each new job with the job it reruns."""

    reruns: list[RerunJob]


class SweepPage(BaseModel):
    sweeps: list[SweepOut]
    next_cursor: int | None


def _refused(problems: list[dict[str, str]]) -> HTTPException:
    return HTTPException(status_code=422, detail={"message": "invalid sweep", "problems": problems})


def _parse(request: Request, body: dict[str, Any], who: Principal) -> tuple[sweeps.SweepSpec, str | None]:
    """The checked sweep and its template's secrets, encrypted (422 naming every problem)."""
    if nul_fields(body):
        raise _refused([{"field": f, "reason": "NUL characters are not allowed"} for f in nul_fields(body)])
    data = sweeps.split_flat(body)
    if isinstance(data.get("template"), dict) and "workspace" not in data["template"] and who.workspace is not None:
        data = {**data, "template": {**data["template"], "workspace": who.workspace}}
    try:
        spec = sweeps.parse_sweep_spec(data)
    except SpecError as exc:
        raise _refused(exc.problems) from None
    problems: list[dict[str, str]] = []
    if any(v.volume for v in spec.template.volumes):  # named volumes resolve once, for every point
        with request.app.state.sessions() as session:
            template, volume_problems = resolve_volumes(session, spec.template)
        spec = spec.model_copy(update={"template": template})
        problems += [{**p, "field": "template." + p["field"]} for p in volume_problems]
    if not who.sees(spec.template.workspace):
        problems.append({"field": "template.workspace", "reason": "your token may not submit there"})
    secrets_enc = None
    if spec.template.secrets:
        key = secret(request.app.state.settings.secret_key)
        if not key:
            problems.append({"field": "template.secrets", "reason": "the server has no TRAINYARD_SECRET_KEY"})
        else:
            secrets_enc = encrypt_secrets(spec.template.secrets, key)
    if problems:
        raise _refused(problems)
    return spec, secrets_enc


def _check_dependencies(request: Request, spec: sweeps.SweepSpec) -> None:
    """Every point waits on the template's `depends_on`: stored jobs or sweeps of the workspace (ids)."""
    if not spec.template.depends_on:
        return
    with request.app.state.sessions() as session:
        try:
            plan_dependencies(session, [NewJob(spec=spec.template)], prefix=lambda _index: "template.")
        except SpecError as exc:
            raise _refused(exc.problems) from None


parse_sweep = _parse  # the jobs:batch route takes sweeps as entries too (api/batches.py)


def _wake_scheduler(request: Request) -> None:
    transport.wake_scheduler(request.app.state.redis)


def _sweep_or_404(session: Session, sweep_id: str, who: Principal) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if plausible_id(sweep_id) else None
    if sweep is None or not who.sees(sweep.workspace):
        raise HTTPException(status_code=404, detail=f"no sweep {sweep_id}")
    return sweep


@router.post(
    "/sweeps",
    status_code=201,
    summary="Submit a sweep: a template job spec and its points",
    response_model=SweepOut,
    responses=_CHANGE_RESPONSES,
)
def submit_sweep(request: Request, body: dict[str, Any] = Body(...), who: Principal = require("user")) -> Any:
    spec, secrets_enc = _parse(request, body, who)
    _check_dependencies(request, spec)
    sessions = request.app.state.sessions
    with sessions() as session:
        unfit = unfit_problems(session, [NewJob(spec=spec.template)], False, request.app.state.settings.gpu_quotas)
    if unfit:
        raise _refused([{**p, "field": "template." + p["field"]} for p in unfit])
    digest = sweep_digest(spec)  # of the sweep as submitted: a drawn seed must not make a repeat differ
    if spec.random is not None and spec.seed is None:
        spec.seed = sweeps.new_seed()  # stored, so the sweep's points can be drawn again
    points = sweeps.expand(spec)

    def insert() -> str:
        with sessions.begin() as session:
            return create_sweep(session, spec, points, secrets_enc, actor=who.name, digest=digest)

    try:
        # A concurrent submit took the same idempotency key (IntegrityError): run once more, which finds its sweep.
        sweep_id = retrying.once_more(IntegrityError)(insert)
    except SpecError as exc:
        raise _refused(exc.problems) from None
    except SweepConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    _wake_scheduler(request)
    with sessions() as session:
        return sweep_queries.load_sweep_dict(session, _sweep_or_404(session, sweep_id, who))


@router.get("/sweeps", summary="List sweeps, newest first, with a cursor", response_model=SweepPage)
def list_sweeps(
    request: Request,
    workspace: str | None = None,
    limit: int = Query(100, ge=1, le=LIST_LIMIT_MAX),
    cursor: int | None = Query(None, ge=0, le=2**63 - 1, description="next_cursor of the previous page"),
    who: Principal = require("viewer"),
) -> Any:
    if who.workspace is not None and workspace not in (None, who.workspace):
        return {"sweeps": [], "next_cursor": None}
    with request.app.state.sessions() as session:
        page, next_cursor = sweep_queries.list_sweeps(session, who.workspace or workspace, limit, cursor)
    return {"sweeps": page, "next_cursor": next_cursor}


@router.get(
    "/sweeps/{sweep_id}",
    summary="A sweep: state counts, progress, and points ranked by a metric",
    response_model=SweepOut,
    responses=_NOT_FOUND,
)
def get_sweep(
    request: Request,
    sweep_id: str,
    metric: str | None = Query(None, description="rank the points that reported this metric"),
    order: str = Query("min", pattern="^(min|max)$", description="min: lowest first; max: highest first"),
    top: int = Query(sweep_queries.LEADERBOARD_DEFAULT, ge=1, le=LEADERBOARD_MAX),
    who: Principal = require("viewer"),
) -> Any:
    if metric is not None and not sweep_queries.METRIC_NAME.match(metric):
        raise _refused([{"field": "metric", "reason": "not a metric name"}])
    with request.app.state.sessions() as session:
        sweep = _sweep_or_404(session, sweep_id, who)
        data = sweep_queries.load_sweep_dict(session, sweep)
        data["notifications"] = notifications_of(session, sweep.id)
        if metric is not None:
            data.update(
                metric=metric, order=order, leaderboard=sweep_queries.leaderboard(session, sweep.id, metric, order, top)
            )
    return data


@router.post(
    "/sweeps/{sweep_id}/points",
    status_code=201,
    summary="Add points to a sweep",
    response_model=SweepOut,
    responses=_CHANGE_RESPONSES,
)
def post_points(
    request: Request, sweep_id: str, body: dict[str, Any] = Body(...), who: Principal = require("user")
) -> Any:
    points = body.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points) or nul_fields(points):
        raise _refused([{"field": "points", "reason": "must be a list of maps of parameter → value"}])
    sessions = request.app.state.sessions
    with sessions() as session:
        template = _sweep_or_404(session, sweep_id, who).template
    problems = sweeps.check_points(points, "points") or sweeps.check_placeholders(template, [set(p) for p in points])
    if len(points) > sweeps.MAX_SWEEP_POINTS:
        problems.append({"field": "points", "reason": f"at most {sweeps.MAX_SWEEP_POINTS:,} per call"})
    if problems:
        raise _refused(problems)
    try:
        with sessions.begin() as session:
            add_points(session, sweep_id, points, actor=who.name)
    except SpecError as exc:
        raise _refused(exc.problems) from None
    except SweepConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    _wake_scheduler(request)
    with sessions() as session:
        return sweep_queries.load_sweep_dict(session, _sweep_or_404(session, sweep_id, who))


@router.post(
    "/sweeps/{sweep_id}:cancel",
    summary="Cancel a sweep: every job of it not yet ended",
    response_model=SweepOut,
    responses=_NOT_FOUND,
)
def cancel(request: Request, sweep_id: str, who: Principal = require("user")) -> Any:
    sessions = request.app.state.sessions
    with sessions.begin() as session:
        _sweep_or_404(session, sweep_id, who)
        cancel_sweep(session, sweep_id, actor=who.name)
    _wake_scheduler(request)
    with sessions() as session:
        return sweep_queries.load_sweep_dict(session, _sweep_or_404(session, sweep_id, who))


@router.post(
    "/sweeps/{sweep_id}:rerun",
    status_code=201,
    summary="Rerun a sweep's ended points (only failed and cancelled ones with failed: true) inside the sweep",
    response_model=SweepRerunOut,
    responses=_CHANGE_RESPONSES,
)
def rerun(
    request: Request, sweep_id: str, body: SweepRerun | None = Body(None), who: Principal = require("user")
) -> Any:
    failed_only = body.failed if body is not None else False
    sessions = request.app.state.sessions
    try:
        with sessions.begin() as session:
            _sweep_or_404(session, sweep_id, who)
            pairs = rerun_points(session, sweep_id, failed_only, actor=who.name)
    except SweepConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    if pairs:
        _wake_scheduler(request)
    with sessions() as session:
        data = sweep_queries.load_sweep_dict(session, _sweep_or_404(session, sweep_id, who))
    return {**data, "reruns": [{"id": new, "rerun_of": old} for new, old in pairs]}
