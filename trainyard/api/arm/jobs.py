"""Batch AI jobs by name: create (PUT JobCreateParameters, translated by trainyard.batchai into a trainyard
job of the workspace and experiment), get, delete, list by experiment, terminate.

A PUT of a name taken with the same body answers the same job (200); with another body, 409. The
name is unique within its experiment by the arm_jobs primary key, so two racing PUTs cannot both
create. The job's cluster is the pool of that Batch AI cluster (arm_clusters) when the workspace has
one of that name, else the trainyard pool named after the cluster id's last segment. Batch AI gave a
job every GPU of its VMs: the job asks for the GPUs of its pool's nodes. A job on a low-priority
cluster (or a pool whose settings say `preemptible`) is preemptible, as low-priority VMs could be taken.
A DELETE of a job that is not there (nor its experiment or workspace) answers 204.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainyard import transport
from trainyard.api.arm.cluster_bodies import mount_targets
from trainyard.api.arm.common import (
    NAME_PATTERN,
    NOTHING_DELETED,
    CloudError,
    PageRequest,
    WorkspaceIds,
    api_version,
    bad_request,
    conflict,
    found_or_none,
    list_result,
    not_found,
    page_request,
    workspace_ids,
)
from trainyard.api.arm.experiments import EXPERIMENT_PATH, experiment_in, experiment_name
from trainyard.api.arm.job_view import job_body, without_secret_values
from trainyard.api.auth import Principal, require
from trainyard.api.fit import unfit_problems
from trainyard.api.jobs import validate_spec
from trainyard.batchai import batchai_to_spec, gpus_of_pool
from trainyard.db import arm
from trainyard.db.arm_clusters import cluster_named
from trainyard.db.jobs import NewJob, cancel_job, create_jobs
from trainyard.db.models import ArmJob, Attempt, Job, Node, Pool, utcnow
from trainyard.spec import JobState, SpecError

router = APIRouter(dependencies=[Depends(api_version)])

# What the translator's warning about a field it does not know says (batchai._Reader.unknown).
UNKNOWN_FIELD = "not a field of Batch AI"
_CLI_HINT = re.compile(r": pass --volume KEY=TARGET.*$", re.DOTALL)

JOBS_PATH = EXPERIMENT_PATH + "/jobs"
JOB_PATH = JOBS_PATH + "/{job}"


def job_name(job: str = Path(min_length=1, max_length=64, pattern=NAME_PATTERN)) -> str:
    """A dependency: the job a JOB_PATH route names."""
    return job


def job_in(session: Session, who: Principal, ids: WorkspaceIds, experiment: str, name: str) -> tuple[ArmJob, Job]:
    """The job of that experiment, as the caller may see it; else CloudError 404."""
    experiment_in(session, who, ids, experiment)
    row = arm.arm_job(session, ids.workspace, experiment, name)
    job = session.get(Job, row.job_id) if row is not None else None
    if row is None or job is None:
        raise not_found("job", name)
    return row, job


def _attempts(session: Session, job_id: str) -> list[Attempt]:
    return list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))


def _shown(session: Session, ids: WorkspaceIds, row: ArmJob, job: Job) -> dict[str, Any]:
    return job_body(ids, row, job, _attempts(session, job.id))


def _refused(problems: list[dict[str, str]], workspace: str) -> CloudError:
    """Translation or spec problems as CloudError 400, each problem's field under `properties`."""
    hint = (f": register a volume of that name (the share, container or relativeMountPath) in workspace "
            f"{workspace} (POST /v1/volumes, `trainyard volume create`), or mount a file server of it")  # fmt: skip
    details = [
        {
            "code": "InvalidParameter",
            "message": _CLI_HINT.sub(hint, p.get("reason", "")),
            "target": _target(p.get("field", "")),
        }
        for p in problems
    ]
    message = "; ".join(f"{d['target']}: {d['message']}" for d in details) or "invalid job"
    return CloudError(400, "InvalidParameter", message, details[0]["target"] if details else None, details)


def _unknown_fields(warnings: list[str]) -> list[dict[str, str]]:
    """A job file's unknown fields are warnings; in a request they are refused, as every bad field is."""
    return [{"field": text.split(": ", 1)[0], "reason": text.split(": ", 1)[1]}
            for text in warnings if UNKNOWN_FIELD in text and ": " in text]  # fmt: skip


def _target(field: str) -> str:
    return "properties" if field in ("", "(file)") else f"properties.{field}"


def _pool_and_gpus(session: Session, workspace: str, properties: dict[str, Any]) -> tuple[str | None, int | None, bool]:
    """The pool of the job's cluster (an /arm cluster of the workspace, if one has that name), the GPUs
    per node of that pool's nodes (None: the translator's default), and whether its jobs are preemptible:
    a low-priority cluster's (or a pool whose settings say `preemptible`), as Batch AI's low-priority VMs
    could be taken away."""
    cluster = properties.get("cluster")
    ident = cluster.get("id") if isinstance(cluster, dict) else None
    if not isinstance(ident, str) or not ident.strip():
        return None, None, False
    name = ident.strip().rstrip("/").rsplit("/", 1)[-1]
    found = cluster_named(session, workspace, name)
    pool = found.pool if found is not None else None
    lookup = pool or name.lower()
    nodes = [
        {"pool": n.pool, "state": n.state, "gpus": n.gpus}
        for n in session.scalars(select(Node).where(Node.pool == lookup))
    ]
    pools = [{"name": p.name, "settings": p.settings} for p in session.scalars(select(Pool).where(Pool.name == lookup))]
    gpus, _note = gpus_of_pool(lookup, nodes, pools)
    preemptible = (found is not None and found.lowpriority) or any(
        isinstance(p["settings"], dict) and p["settings"].get("preemptible") is True for p in pools
    )
    return pool, gpus, preemptible


def _new_job(
    request: Request, who: Principal, ids: WorkspaceIds, experiment: str, name: str, properties: dict[str, Any]
) -> NewJob:
    with request.app.state.sessions() as session:
        pool, gpus, preemptible = _pool_and_gpus(session, ids.workspace, properties)
        # The job's mountVolumes take their storage as a cluster's do: registered volumes, file servers.
        volumes = mount_targets(session, ids.workspace, {"nodeSetup": {"mountVolumes": properties.get("mountVolumes")}})
    try:
        spec, warnings = batchai_to_spec({"properties": properties}, name=name, pool=pool, gpus=gpus, volumes=volumes)
        if unknown := _unknown_fields(warnings):
            raise _refused(unknown, ids.workspace)
        spec = {**spec, "workspace": ids.workspace, "experiment": experiment}
        if preemptible:
            spec["preemptible"] = True
        new = validate_spec(request, spec, who)
    except SpecError as exc:
        raise _refused(exc.problems + _unknown_fields(exc.warnings), ids.workspace) from None
    with request.app.state.sessions() as session:
        problems = unfit_problems(session, [new], False, request.app.state.settings.gpu_quotas)
    if problems:
        raise _refused(problems, ids.workspace)
    return new


def _same_or_conflict(
    session: Session, ids: WorkspaceIds, experiment: str, name: str, digest: str
) -> dict[str, Any] | None:
    row = arm.arm_job(session, ids.workspace, experiment, name)
    if row is None:
        return None
    if row.body_digest != digest:
        raise conflict(
            f"The job '{name}' exists with other parameters; delete it first or use another name.", "jobName"
        )
    job = session.get(Job, row.job_id)
    assert job is not None  # arm_jobs.job_id references jobs.id
    return _shown(session, ids, row, job)


@router.put(JOB_PATH, summary="Create a job (Jobs_Create)")
def create_job(
    request: Request,
    body: dict[str, Any] = Body(...),
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    name: str = Depends(job_name),
    who: Principal = require("user"),
) -> Any:
    properties = body.get("properties")
    if not isinstance(properties, dict):
        raise bad_request('The body must be JobCreateParameters: {"properties": {...}}.', "properties")
    digest = arm.body_digest(body)
    with request.app.state.sessions() as session:
        experiment_in(session, who, ids, experiment)
        same = _same_or_conflict(session, ids, experiment, name, digest)
    if same is not None:
        return same
    new = _new_job(request, who, ids, experiment, name, properties)
    try:
        with request.app.state.sessions.begin() as session:
            # One transaction: the job exists only if its name was free (arm_jobs' primary key).
            (job_id,) = create_jobs(session, [new], actor=who.name)
            session.add(ArmJob(workspace=ids.workspace, experiment=experiment, name=name, job_id=job_id,
                               body_digest=digest, properties=without_secret_values(properties)))  # fmt: skip
    except IntegrityError:
        with request.app.state.sessions() as session:  # a racing PUT took the name: same body or 409
            same = _same_or_conflict(session, ids, experiment, name, digest)
        if same is None:
            raise
        return same
    transport.wake_scheduler(request.app.state.redis)
    with request.app.state.sessions() as session:
        return _shown(session, ids, *job_in(session, who, ids, experiment, name))


@router.get(JOB_PATH, summary="A job (Jobs_Get)")
def get_job(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    name: str = Depends(job_name),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        return _shown(session, ids, *job_in(session, who, ids, experiment, name))


@router.delete(JOB_PATH, summary="Delete a job: cancel it, remove it after the retention time (Jobs_Delete)")
def delete_job(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    name: str = Depends(job_name),
    who: Principal = require("user"),
) -> Response:
    retention_s = request.app.state.settings.arm_delete_retention_s
    with request.app.state.sessions.begin() as session:
        found = found_or_none(lambda: job_in(session, who, ids, experiment, name))
        if found is None:
            return Response(status_code=NOTHING_DELETED)
        arm.retire_jobs(session, [found[1].id], retention_s, who.name, utcnow())
    transport.wake_scheduler(request.app.state.redis)
    return Response(status_code=200)


@router.post(JOB_PATH + "/terminate", summary="Terminate a job (Jobs_Terminate)")
def terminate_job(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    name: str = Depends(job_name),
    who: Principal = require("user"),
) -> Response:
    with request.app.state.sessions.begin() as session:
        _row, job = job_in(session, who, ids, experiment, name)
        if not JobState(job.state).is_terminal():
            cancel_job(session, job.id, actor=who.name)
    transport.wake_scheduler(request.app.state.redis)
    return Response(status_code=200)


@router.get(JOBS_PATH, summary="The jobs of an experiment (Jobs_ListByExperiment)")
def list_jobs(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        experiment_in(session, who, ids, experiment)
        rows = arm.arm_jobs(session, ids.workspace, experiment, page.after, page.limit + 1)
        attempts: dict[str, list[Attempt]] = {}
        query = select(Attempt).where(Attempt.job_id.in_([job.id for _row, job in rows])).order_by(Attempt.number)
        for attempt in session.scalars(query):  # one query for the page, not one per job
            attempts.setdefault(attempt.job_id, []).append(attempt)
        return list_result(request, page, rows, lambda pair: pair[0].name,
                           lambda pair: job_body(ids, pair[0], pair[1], attempts.get(pair[1].id, [])))  # fmt: skip
