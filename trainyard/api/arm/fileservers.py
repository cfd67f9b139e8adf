"""Batch AI file servers under /arm: each one names a registered host volume of its workspace.

trainyard starts no file server VM: an NFS export the nodes already mount is registered once as a
host volume (`trainyard volume create NAME --kind host --path /mnt/nfs/data`), and PUT of a file
server of the same name makes it a Batch AI file server (200, `provisioningState: succeeded`), so
clusters can mount it (`nodeSetup.mountVolumes.fileServers`). `mountSettings.mountPoint` is the
volume's path; `fileServerInternalIP` and `fileServerPublicIP` are the NFS server of the mount at
that path as the API's machine sees it (/proc/self/mounts), left out when it is no NFS mount there.
The body is checked as Batch AI's `FileServerBaseProperties` (vmSize, sshConfiguration, dataDisks)
and echoed, the admin password left out. DELETE forgets the file server; the volume and its data
stay. A file server whose volume was deleted since shows `provisioningState: failed`.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.api.arm.common import (
    NAME_PATTERN,
    NOTHING_DELETED,
    WORKSPACE_PATH,
    CloudError,
    PageRequest,
    WorkspaceIds,
    api_version,
    arm_time,
    bad_request,
    field_target,
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
from trainyard.db.arm import page_after
from trainyard.db.arm_clusters import ArmFileServer
from trainyard.db.models import Event, Volume, utcnow

router = APIRouter()

FILE_SERVER_TYPE = resource_type("fileservers")
MOUNTS_FILE = FilePath("/proc/self/mounts")
FileServerName = Path(pattern=NAME_PATTERN, min_length=1, max_length=64, description="the file server's name")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserAccountSettings(_Strict):
    adminUserName: str = Field(min_length=1, max_length=64)
    adminUserSshPublicKey: str | None = None
    adminUserPassword: str | None = Field(None, repr=False)


class SshConfiguration(_Strict):
    publicIPsToAllow: list[str] | None = Field(None, max_length=400)
    userAccountSettings: UserAccountSettings


class DataDisks(_Strict):
    diskSizeInGB: int = Field(ge=1, le=32767)
    cachingType: Literal["none", "readonly", "readwrite"] = "none"
    diskCount: int = Field(ge=1, le=64)
    storageAccountType: Literal["Standard_LRS", "Premium_LRS"]


class ResourceId(_Strict):
    id: str = Field(min_length=1)


class FileServerBaseProperties(_Strict):
    """What a file server's create body may say (all of it echoed; none of it provisions anything)."""

    vmSize: str = Field(min_length=1, max_length=64)
    sshConfiguration: SshConfiguration
    dataDisks: DataDisks
    subnet: ResourceId | None = None


class FileServerCreateParameters(_Strict):
    properties: FileServerBaseProperties


def nfs_server(path: str, mounts: str) -> str | None:
    """The server of the NFS mount holding `path` (the longest mount point above it), from /proc/mounts text."""
    best: tuple[int, str | None] = (-1, None)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        source, point, kind = fields[0], fields[1].replace("\\040", " "), fields[2]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            server = source.rsplit(":", 1)[0].strip("[]") if kind.startswith("nfs") and ":" in source else None
            best = (len(point), server)
    return best[1]


def _mounts_text() -> str:
    try:
        return MOUNTS_FILE.read_text()
    except OSError:
        return ""


def file_server_body(ids: WorkspaceIds, server: ArmFileServer, volume: Volume | None) -> dict[str, Any]:
    props: dict[str, Any] = dict(server.properties)
    path = (volume.definition or {}).get("path") if volume is not None and volume.kind == "host" else None
    if path:
        mount: dict[str, Any] = {"mountPoint": path}
        host = nfs_server(str(path), _mounts_text())
        if host:
            mount.update(fileServerInternalIP=host, fileServerPublicIP=host)
        props["mountSettings"] = mount
    props.update(
        creationTime=arm_time(server.created_at),
        provisioningState="succeeded" if path else "failed",
        provisioningStateTransitionTime=arm_time(server.created_at),
    )
    return {
        "id": resource_id(ids, ("fileServers", server.name)),
        "name": server.name,
        "type": FILE_SERVER_TYPE,
        "properties": props,
    }


def _checked(body: dict[str, Any]) -> FileServerBaseProperties:
    try:
        return FileServerCreateParameters.model_validate(body).properties
    except ValidationError as exc:
        details = [{"code": "InvalidParameter", "target": field_target(tuple(e["loc"])), "message": e["msg"]}
                   for e in exc.errors()]  # fmt: skip
        message = "; ".join(f"{d['target']}: {d['message']}" for d in details)
        raise CloudError(400, "InvalidParameter", message, details[0]["target"], details) from None


def _host_volume(session: Session, workspace: str, name: str) -> Volume:
    volume = session.get(Volume, (workspace, name))
    if volume is None or volume.kind != "host" or not (volume.definition or {}).get("path"):
        raise bad_request(
            f"name: trainyard starts no file server VM; register the NFS export the nodes mount as a host volume "
            f"named {name!r} in workspace {workspace} first (trainyard volume create {name} --kind host --path "
            "/mnt/nfs/...; POST /v1/volumes), then create the file server",
            "name",
            "VolumeNotRegistered",
        )
    return volume


@router.put(WORKSPACE_PATH + "/fileServers/{file_server_name}", summary="Make a registered NFS volume a file server")
def create_file_server(
    request: Request,
    file_server_name: str = FileServerName,
    body: dict[str, Any] = Body(...),
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("user"),
) -> Any:
    checked = _checked(body)
    props = checked.model_dump(mode="json", exclude_none=True)
    props["sshConfiguration"]["userAccountSettings"].pop("adminUserPassword", None)
    with request.app.state.sessions.begin() as session:
        workspace_in(session, who, ids)
        volume = _host_volume(session, ids.workspace, file_server_name)
        server = session.get(ArmFileServer, (ids.workspace, file_server_name))
        if server is None:
            server = ArmFileServer(workspace=ids.workspace, name=file_server_name, created_at=utcnow())
            session.add(server)
        server.volume, server.properties = volume.name, props
        session.add(Event(at=utcnow(), kind="arm_file_server_created", actor=who.name,
                          detail={"workspace": ids.workspace, "name": file_server_name}))  # fmt: skip
        session.flush()
        return file_server_body(ids, server, volume)


def _visible(session: Session, who: Principal, ids: WorkspaceIds, name: str) -> ArmFileServer:
    workspace_in(session, who, ids)
    server = session.get(ArmFileServer, (ids.workspace, name))
    if server is None:
        raise not_found("file server", name)
    return server


@router.get(WORKSPACE_PATH + "/fileServers/{file_server_name}", summary="A file server and where it is mounted")
def get_file_server(
    request: Request,
    file_server_name: str = FileServerName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        server = _visible(session, who, ids, file_server_name)
        return file_server_body(ids, server, session.get(Volume, (ids.workspace, server.volume)))


@router.delete(WORKSPACE_PATH + "/fileServers/{file_server_name}", summary="Forget a file server (its volume stays)")
def delete_file_server(
    request: Request,
    file_server_name: str = FileServerName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("user"),
) -> Response:
    with request.app.state.sessions.begin() as session:
        server = found_or_none(lambda: _visible(session, who, ids, file_server_name))
        if server is None:
            return Response(status_code=NOTHING_DELETED)
        session.delete(server)
        session.add(Event(at=utcnow(), kind="arm_file_server_deleted", actor=who.name,
                          detail={"workspace": ids.workspace, "name": file_server_name}))  # fmt: skip
    return Response(status_code=200)


@router.get(WORKSPACE_PATH + "/fileServers", summary="The file servers of a workspace (paged: nextLink)")
def list_file_servers(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        workspace_in(session, who, ids)
        query = select(ArmFileServer).where(ArmFileServer.workspace == ids.workspace)
        servers = list(session.scalars(page_after(query, ArmFileServer.name, page.after, page.limit + 1)))
        volumes = {v.name: v for v in session.scalars(select(Volume).where(Volume.workspace == ids.workspace))}
        return list_result(request, page, servers, lambda s: s.name,
                           lambda s: file_server_body(ids, s, volumes.get(s.volume)))  # fmt: skip
