"""Batch AI workspaces: create (PUT, answered done: 200 with provisioningState succeeded), update tags
(PATCH), get, delete (its experiments, jobs, clusters and file servers with it), and list by
subscription or resource group.

Writing a workspace takes an admin token (workspaces are trainyard's tenancy boundary); reading one,
a viewer's. A workspace-scoped token sees only its own.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from trainyard import retrying, transport
from trainyard.api.arm.common import (
    NOTHING_DELETED,
    PROVIDER,
    RESOURCE_GROUP_PATTERN,
    WORKSPACE_PATH,
    PageRequest,
    WorkspaceIds,
    api_version,
    arm_time,
    conflict,
    envelope,
    found_or_none,
    ids_of,
    list_result,
    lives_at,
    own_workspace,
    page_request,
    resource_id,
    resource_type,
    workspace_ids,
    workspace_in,
)
from trainyard.api.auth import Principal, require
from trainyard.db import arm
from trainyard.db.arm_clusters import forget_workspace
from trainyard.db.models import ArmWorkspace

router = APIRouter(dependencies=[Depends(api_version)])

Tags = dict[str, str]


class WorkspaceCreateParameters(BaseModel):
    """The body of PUT: where the workspace is said to be, and its tags."""

    model_config = ConfigDict(extra="forbid")

    location: str = Field(min_length=1, max_length=64)
    tags: Tags | None = Field(None, max_length=50)
    properties: dict[str, Any] | None = None  # Batch AI defines none a client may set


class WorkspaceUpdateParameters(BaseModel):
    """The body of PATCH: the workspace's new tags (replacing the old)."""

    model_config = ConfigDict(extra="forbid")

    tags: Tags | None = Field(None, max_length=50)


def workspace_body(row: ArmWorkspace) -> dict[str, Any]:
    created = arm_time(row.created_at)
    properties = {"creationTime": created, "provisioningState": "succeeded", "provisioningStateTransitionTime": created}
    return envelope(resource_id(ids_of(row)), row.name, resource_type(), properties, location=row.location,
                    tags=row.tags or {})  # fmt: skip


@router.put(WORKSPACE_PATH, summary="Create a workspace (Workspaces_Create)")
def create_workspace(
    request: Request,
    body: WorkspaceCreateParameters,
    ids: WorkspaceIds = Depends(workspace_ids),
    who: Principal = require("admin"),
) -> Any:
    own_workspace(who, ids.workspace)

    def upsert() -> dict[str, Any]:
        with request.app.state.sessions.begin() as session:
            row = session.get(ArmWorkspace, ids.workspace)
            if row is None:
                row = ArmWorkspace(
                    name=ids.workspace,
                    subscription_id=ids.subscription_id,
                    resource_group=ids.resource_group,
                    location=body.location,
                    tags=body.tags,
                )
                session.add(row)
                session.flush()
                return workspace_body(row)
            if not lives_at(row, ids):
                raise conflict(f"A workspace named '{ids.workspace}' exists in another subscription or resource "
                               "group; workspace names are unique on this service.", "workspaceName")  # fmt: skip
            if row.location != body.location:
                raise conflict(f"The workspace is in location '{row.location}'; it cannot move.", "location")
            row.tags = body.tags if body.tags is not None else row.tags
            return workspace_body(row)

    # A concurrent PUT of the same name may win the primary key: once more finds its row.
    return retrying.once_more(IntegrityError)(upsert)


@router.patch(WORKSPACE_PATH, summary="Update a workspace's tags (Workspaces_Update)")
def update_workspace(
    request: Request,
    body: WorkspaceUpdateParameters,
    ids: WorkspaceIds = Depends(workspace_ids),
    who: Principal = require("admin"),
) -> Any:
    with request.app.state.sessions.begin() as session:
        row = workspace_in(session, who, ids)
        if body.tags is not None:
            row.tags = body.tags
        return workspace_body(row)


@router.get(WORKSPACE_PATH, summary="A workspace (Workspaces_Get)")
def get_workspace(
    request: Request, ids: WorkspaceIds = Depends(workspace_ids), who: Principal = require("viewer")
) -> Any:
    with request.app.state.sessions() as session:
        return workspace_body(workspace_in(session, who, ids))


@router.delete(WORKSPACE_PATH, summary="Delete a workspace, its experiments and jobs (Workspaces_Delete)")
def delete_workspace(
    request: Request, ids: WorkspaceIds = Depends(workspace_ids), who: Principal = require("admin")
) -> Response:
    retention_s = request.app.state.settings.arm_delete_retention_s
    with request.app.state.sessions.begin() as session:
        if found_or_none(lambda: workspace_in(session, who, ids)) is None:
            return Response(status_code=NOTHING_DELETED)
        forget_workspace(session, ids.workspace)  # its clusters' pools shrink to nothing, as Azure freed the VMs
        arm.delete_workspace(session, ids.workspace, retention_s, who.name)
    transport.wake_scheduler(request.app.state.redis)  # the cancels and the pools' new sizes
    return Response(status_code=200)


def _listed(
    request: Request, who: Principal, subscription_id: str, resource_group: str | None, page: PageRequest
) -> dict[str, Any]:
    with request.app.state.sessions() as session:
        rows = arm.workspaces(session, subscription_id, resource_group, who.workspace, page.after, page.limit + 1)
        return list_result(request, page, rows, lambda row: row.name, workspace_body)


@router.get(f"/subscriptions/{{subscription_id}}/providers/{PROVIDER}/workspaces",
            summary="The workspaces of a subscription (Workspaces_List)")  # fmt: skip
def list_workspaces(
    request: Request,
    subscription_id: str = Path(min_length=1, max_length=64),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    return _listed(request, who, subscription_id, None, page)


@router.get(f"/subscriptions/{{subscription_id}}/resourceGroups/{{resource_group}}/providers/{PROVIDER}/workspaces",
            summary="The workspaces of a resource group (Workspaces_ListByResourceGroup)")  # fmt: skip
def list_workspaces_of_group(
    request: Request,
    subscription_id: str = Path(min_length=1, max_length=64),
    resource_group: str = Path(min_length=1, max_length=90, pattern=RESOURCE_GROUP_PATTERN),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    return _listed(request, who, subscription_id, resource_group, page)
