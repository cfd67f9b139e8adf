"""Job routes: submit (one or a batch), list, show, cancel, and logs (with follow)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainyard import datarefs, retrying, transport
from trainyard.api import logreads
from trainyard.api.auth import Principal, require
from trainyard.api.batches import Entry, check_entries, is_sweep_entry, parse_sweep_entry, store_entries
from trainyard.api.dependencies import plan_dependencies
from trainyard.api.fit import unfit_problems
from trainyard.api.schemas import (
    BatchSubmitted,
    ErrorResponse,
    JobOut,
    JobPage,
    ValidationFailed,
    nul_fields,
    plausible_id,
)
from trainyard.api.volumes import resolve_volumes
from trainyard.config import secret
from trainyard.crypto import encrypt_secrets
from trainyard.db.dependencies import cancel_cascade
from trainyard.db.jobs import (
    IdempotencyConflict,
    NewJob,
    cancel_job,
    create_jobs,
    job_dict,
    load_job_dict,
    rerun_job,
)
from trainyard.db.models import Attempt, Job
from trainyard.db.pages import job_page
from trainyard.db.sweeps import SweepConflict, fill_specs
from trainyard.spec import JobSpec, JobState, SpecError, parse_job_spec
from trainyard.storage_adapters import StorageError

router = APIRouter(prefix="/v1")

MAX_BATCH = 10_000
LIST_LIMIT_MAX = 1000
MAX_CURSOR = 2**63 - 1
MAX_ATTEMPT = 2**31 - 1
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job in your workspace"}
}
_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "the idempotency key belongs to a job with another spec"},
    422: {"model": ValidationFailed, "description": "the spec is invalid: every problem is named"},
}


def _spec_error(problems: list[dict[str, str]]) -> HTTPException:
    return HTTPException(status_code=422, detail={"message": "invalid job spec", "problems": problems})


def validate_spec(request: Request, data: Any, who: Principal, prefix: str = "") -> NewJob:
    """A submitted job spec checked as every submit route checks it (`prefix` names its place in a batch)."""
    if isinstance(data, dict) and "workspace" not in data and who.workspace is not None:
        data = {**data, "workspace": who.workspace}  # a workspace's token submits there by default
    if nul_fields(data):
        raise SpecError([{"field": prefix + f, "reason": "NUL characters are not allowed"} for f in nul_fields(data)])
    try:
        spec = parse_job_spec(data)
    except SpecError as exc:
        raise SpecError([{**p, "field": prefix + p["field"]} for p in exc.problems]) from None
    volume_problems: list[dict[str, str]] = []
    if any(v.volume for v in spec.volumes):  # named volumes: the stored spec holds what they resolve to
        with request.app.state.sessions() as session:
            spec, volume_problems = resolve_volumes(session, spec)
    problems = volume_problems + datarefs.spec_problems(spec, request.app.state.settings.storage_url)
    if not who.sees(spec.workspace):
        raise HTTPException(status_code=403, detail=f"your token may not submit to workspace {spec.workspace!r}")
    secrets_enc = None
    if spec.secrets:
        key = secret(request.app.state.settings.secret_key)
        if not key:
            problems.append({"field": "secrets", "reason": "the server has no TRAINYARD_SECRET_KEY to keep secrets"})
        else:
            secrets_enc = encrypt_secrets(spec.secrets, key)
    if problems:
        raise SpecError([{**p, "field": prefix + p["field"]} for p in problems])
    return NewJob(spec=spec, secrets_enc=secrets_enc)


def _store(request: Request, new_jobs: list[NewJob], who: Principal) -> list[str]:
    sessions = request.app.state.sessions

    def insert() -> list[str]:
        with sessions.begin() as session:
            return create_jobs(session, new_jobs, actor=who.name)

    try:
        # A concurrent submit took the same idempotency key (IntegrityError): run once more, which finds it.
        ids = retrying.once_more(IntegrityError)(insert)
    except IdempotencyConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    _wake_scheduler(request)
    return ids


def _wake_scheduler(request: Request) -> None:
    transport.wake_scheduler(request.app.state.redis)


def _job_or_404(session: Session, job_id: str, who: Principal) -> Job:
    job = session.get(Job, job_id) if plausible_id(job_id) else None
    if job is None or not who.sees(job.workspace):
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return job


def _with_dependencies(request: Request, new_jobs: list[NewJob], batch: bool) -> list[NewJob]:
    """Check `depends_on` (batch-local names, cycles, stored targets in the workspace); 422 names each problem."""
    with request.app.state.sessions() as session:
        try:
            if batch:
                return plan_dependencies(session, new_jobs)
            return plan_dependencies(session, new_jobs, prefix=lambda _index: "")
        except SpecError as exc:
            raise _spec_error(exc.problems) from None


def _refuse_unfit(request: Request, new_jobs: list[NewJob], batch: bool) -> None:
    with request.app.state.sessions() as session:
        problems = unfit_problems(session, new_jobs, batch, request.app.state.settings.gpu_quotas)
    if problems:
        raise _spec_error(problems)


@router.post(
    "/jobs",
    status_code=201,
    summary="Submit a job",
    response_model=JobOut,
    response_model_exclude_unset=True,
    responses=_SUBMIT_RESPONSES,
)
def submit_job(request: Request, body: dict[str, Any] = Body(...), who: Principal = require("user")) -> Any:
    try:
        new = validate_spec(request, body, who)
    except SpecError as exc:
        raise _spec_error(exc.problems) from None
    _refuse_unfit(request, [new], batch=False)
    (new,) = _with_dependencies(request, [new], batch=False)
    (job_id,) = _store(request, [new], who)
    with request.app.state.sessions() as session:
        return load_job_dict(session, job_id)


@router.post(
    "/jobs:batch",
    status_code=201,
    summary="Submit many jobs at once (all or none)",
    response_model=BatchSubmitted,
    response_model_exclude_unset=True,
    responses=_SUBMIT_RESPONSES,
)
def submit_batch(request: Request, body: dict[str, Any] = Body(...), who: Principal = require("user")) -> Any:
    specs = body.get("jobs")
    if not isinstance(specs, list) or not specs:
        raise _spec_error([{"field": "jobs", "reason": "must be a non-empty list of job specs"}])
    if len(specs) > MAX_BATCH:
        raise _spec_error([{"field": "jobs", "reason": f"at most {MAX_BATCH} specs per call"}])
    if any(map(is_sweep_entry, specs)):
        return _submit_pipeline(request, specs, who)
    new_jobs, problems = [], []
    for index, data in enumerate(specs):
        try:
            new_jobs.append(validate_spec(request, data, who, prefix=f"jobs[{index}]."))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise _spec_error(problems)
    _refuse_unfit(request, new_jobs, batch=True)
    new_jobs = _with_dependencies(request, new_jobs, batch=True)
    ids = _store(request, new_jobs, who)
    jobs = [{"id": job_id, "name": new.spec.name} for job_id, new in zip(ids, new_jobs, strict=True)]
    # A Response skips re-validating 10,000 items against BatchSubmitted (still the documented schema).
    return JSONResponse(status_code=201, content={"jobs": jobs})


def _submit_pipeline(request: Request, specs: list[Any], who: Principal) -> Any:
    """A batch with sweep entries (api/batches.py): checked whole, stored in one transaction."""
    entries: list[Entry] = []
    problems: list[dict[str, str]] = []
    for index, data in enumerate(specs):
        prefix = f"jobs[{index}]."
        try:
            if is_sweep_entry(data):
                entries.append(parse_sweep_entry(request, data, who, prefix))
            else:
                entries.append(validate_spec(request, data, who, prefix=prefix))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise _spec_error(problems)
    with request.app.state.sessions() as session:
        quotas = request.app.state.settings.gpu_quotas
        for index, entry in enumerate(entries):
            new = entry if isinstance(entry, NewJob) else NewJob(spec=entry.spec.template)
            where = f"jobs[{index}]." + ("" if isinstance(entry, NewJob) else "sweep.template.")
            problems += [{**p, "field": where + p["field"]} for p in unfit_problems(session, [new], False, quotas)]
        try:
            refs = check_entries(session, entries)
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise _spec_error(problems)

    def insert() -> list[str]:
        with request.app.state.sessions.begin() as session:
            return store_entries(session, entries, refs, actor=who.name)

    try:
        ids = retrying.once_more(IntegrityError)(insert)
    except (IdempotencyConflict, SweepConflict) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except SpecError as exc:
        raise _spec_error(exc.problems) from None
    _wake_scheduler(request)
    out = [
        {"id": entry_id, "name": entry.spec.name, "kind": "job"}
        if isinstance(entry, NewJob)
        else {"id": entry_id, "name": entry.name, "kind": "sweep"}
        for entry_id, entry in zip(ids, entries, strict=True)
    ]
    return JSONResponse(status_code=201, content={"jobs": out})


@router.get(
    "/jobs",
    summary="List jobs, newest first, with filters and a cursor",
    response_model=JobPage,
    response_model_exclude_unset=True,
)
def list_jobs(
    request: Request,
    state: str | None = None,
    experiment: str | None = None,
    workspace: str | None = None,
    sweep: str | None = None,
    name_prefix: str | None = None,
    limit: int = Query(100, ge=1, le=LIST_LIMIT_MAX),
    cursor: int | None = Query(None, ge=0, le=MAX_CURSOR, description="next_cursor of the previous page"),
    who: Principal = require("viewer"),
) -> Any:
    filters = {"state": state, "experiment": experiment, "workspace": workspace, "sweep_id": sweep}
    equals = {column: value for column, value in filters.items() if value is not None}
    if who.workspace is not None and equals.setdefault("workspace", who.workspace) != who.workspace:
        return {"jobs": [], "next_cursor": None}
    conditions = [Job.seq < cursor] if cursor is not None else []
    if name_prefix:
        conditions.append(Job.name.startswith(name_prefix, autoescape=True))
    with request.app.state.sessions() as session:
        # One short index walk per page, whatever the filters, with a million jobs (db/pages.py).
        jobs = job_page(session, equals, conditions, limit + 1)
        fill_specs(session, jobs[:limit])  # sweep jobs are stored compact: render their spec
    page = jobs[:limit]
    next_cursor = page[-1].seq if len(jobs) > limit else None
    return {"jobs": [job_dict(job) for job in page], "next_cursor": next_cursor}


@router.get(
    "/jobs/{job_id}",
    summary="One job with its attempts",
    response_model=JobOut,
    response_model_exclude_unset=True,
    responses=_NOT_FOUND,
)
def get_job(request: Request, job_id: str, who: Principal = require("viewer")) -> Any:
    with request.app.state.sessions() as session:
        _job_or_404(session, job_id, who)
        return load_job_dict(session, job_id)


@router.post(
    "/jobs/{job_id}:cancel",
    summary="Cancel a job",
    response_model=JobOut,
    response_model_exclude_unset=True,
    responses=_NOT_FOUND,
)
def cancel(request: Request, job_id: str, who: Principal = require("user")) -> Any:
    with request.app.state.sessions.begin() as session:
        job = _job_or_404(session, job_id, who)
        # The dependants that can then never run: the scheduler's gate ends them (dependency_failed).
        cascade = 0 if JobState(job.state).is_terminal() else cancel_cascade(session, job_id)
        cancel_job(session, job_id, actor=who.name)
    _wake_scheduler(request)
    with request.app.state.sessions() as session:
        return {**(load_job_dict(session, job_id) or {}), "dependants_cancelled": cascade}


@router.post(
    "/jobs/{job_id}:rerun",
    status_code=201,
    summary="Rerun a job: a new job with the same spec (and secrets), linked to it by `rerun_of`",
    response_model=JobOut,
    response_model_exclude_unset=True,
    responses=_NOT_FOUND,
)
def rerun(request: Request, job_id: str, who: Principal = require("user")) -> Any:
    with request.app.state.sessions.begin() as session:
        job = _job_or_404(session, job_id, who)
        new_id = rerun_job(session, job, actor=who.name)
    _wake_scheduler(request)
    with request.app.state.sessions() as session:
        return load_job_dict(session, new_id)


def _log_attempt(session: Session, job: Job, attempt: int | None) -> Attempt | None:
    if attempt is not None:
        return session.get(Attempt, (job.id, attempt))
    # The newest attempt that exists (the current one may still be queued).
    return session.scalars(
        select(Attempt).where(Attempt.job_id == job.id).order_by(Attempt.number.desc()).limit(1)
    ).first()


@router.get(
    "/jobs/{job_id}/logs",
    summary="A job's stdout or stderr, from a byte offset",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **_NOT_FOUND,
    },
)
def logs(
    request: Request,
    job_id: str,
    rank: int = Query(0, ge=0, le=MAX_ATTEMPT),
    stream: str = Query("stdout", pattern="^(stdout|stderr)$"),
    attempt: int | None = Query(None, ge=1, le=MAX_ATTEMPT),
    offset: int = Query(0, ge=0, le=MAX_CURSOR),
    follow: bool = False,
    who: Principal = require("viewer"),
) -> Response:
    with request.app.state.sessions() as session:
        job = _job_or_404(session, job_id, who)
        row = _log_attempt(session, job, attempt)
    if attempt is not None and row is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} has no attempt {attempt}")
    if follow:
        number = row.number if row is not None else None
        return StreamingResponse(
            logreads.follow(request, job_id, number, rank, stream, offset), media_type="application/octet-stream"
        )
    if row is None:
        return Response(b"", media_type="application/octet-stream", headers={"X-Next-Offset": str(offset)})
    try:
        data = logreads.read(request.app, job_id, row.number, rank, stream, offset)
    except StorageError as exc:
        raise HTTPException(status_code=503, detail=f"the log store is unavailable: {exc}") from None
    headers = {
        "X-Next-Offset": str(offset + len(data)),
        "X-Attempt": str(row.number),
        "X-Attempt-Ended": "true" if row.ended_at is not None else "false",
        "X-Logs-Complete": "true" if row.logs_complete else "false",
    }
    return Response(data, media_type="application/octet-stream", headers=headers)


def spec_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)
    return JSONResponse(status_code=422, content={"detail": {"message": "invalid job spec", "problems": exc.problems}})


__all__ = ["JobSpec", "router", "spec_error_handler"]
