"""Batch AI experiments: create (PUT, no body; answered done), get, delete (its jobs with it), list.

An experiment is the `experiment` of the trainyard jobs created in it; deleting one cancels every job
of that workspace and experiment (those submitted through /v1 too) and removes them after
TRAINYARD_ARM_DELETE_RETENTION_S.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainyard import retrying, transport
from trainyard.api.arm.common import (
    NAME_PATTERN,
    NOTHING_DELETED,
    WORKSPACE_PATH,
    PageRequest,
    WorkspaceIds,
    api_version,
    arm_time,
    envelope,
    found_or_none,
    list_result,
    not_found,
    page_request,
    resource_id,
    resource_type,
    workspace_ids,
    workspace_in,
)
from trainyard.api.auth import Principal, require
from trainyard.db import arm
from trainyard.db.models import ArmExperiment

router = APIRouter(dependencies=[Depends(api_version)])

EXPERIMENTS_PATH = WORKSPACE_PATH + "/experiments"
EXPERIMENT_PATH = EXPERIMENTS_PATH + "/{experiment}"


def experiment_name(experiment: str = Path(min_length=1, max_length=64, pattern=NAME_PATTERN)) -> str:
    """A dependency: the experiment an EXPERIMENT_PATH route names."""
    return experiment


def experiment_in(session: Session, who: Principal, ids: WorkspaceIds, name: str) -> ArmExperiment:
    """The experiment of the workspace at `ids`, as the caller may see it; else CloudError 404."""
    workspace_in(session, who, ids)
    row = session.get(ArmExperiment, (ids.workspace, name))
    if row is None:
        raise not_found("experiment", name)
    return row


def experiment_body(ids: WorkspaceIds, row: ArmExperiment) -> dict[str, Any]:
    created = arm_time(row.created_at)
    properties = {"creationTime": created, "provisioningState": "succeeded", "provisioningStateTransitionTime": created}
    return envelope(resource_id(ids, ("experiments", row.name)), row.name, resource_type("experiments"), properties)


@router.put(EXPERIMENT_PATH, summary="Create an experiment (Experiments_Create)")
def create_experiment(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    name: str = Depends(experiment_name),
    who: Principal = require("user"),
) -> Any:
    def upsert() -> dict[str, Any]:
        with request.app.state.sessions.begin() as session:
            workspace_in(session, who, ids)
            row = session.get(ArmExperiment, (ids.workspace, name))
            if row is None:
                row = ArmExperiment(workspace=ids.workspace, name=name)
                session.add(row)
                session.flush()
            return experiment_body(ids, row)

    # A concurrent PUT of the same name may win the primary key: once more finds its row.
    return retrying.once_more(IntegrityError)(upsert)


@router.get(EXPERIMENT_PATH, summary="An experiment (Experiments_Get)")
def get_experiment(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    name: str = Depends(experiment_name),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        return experiment_body(ids, experiment_in(session, who, ids, name))


@router.delete(EXPERIMENT_PATH, summary="Delete an experiment and its jobs (Experiments_Delete)")
def delete_experiment(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    name: str = Depends(experiment_name),
    who: Principal = require("user"),
) -> Response:
    retention_s = request.app.state.settings.arm_delete_retention_s
    with request.app.state.sessions.begin() as session:
        if found_or_none(lambda: experiment_in(session, who, ids, name)) is None:
            return Response(status_code=NOTHING_DELETED)
        arm.delete_experiment(session, ids.workspace, name, retention_s, who.name)
    transport.wake_scheduler(request.app.state.redis)  # the cancels
    return Response(status_code=200)


@router.get(EXPERIMENTS_PATH, summary="The experiments of a workspace (Experiments_ListByWorkspace)")
def list_experiments(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        workspace_in(session, who, ids)
        rows = arm.experiments(session, ids.workspace, page.after, page.limit + 1)
        return list_result(request, page, rows, lambda row: row.name, lambda row: experiment_body(ids, row))
