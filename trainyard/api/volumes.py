"""Named volumes: `/v1/volumes` (create, list, show, delete), per workspace; job specs name them with `volume:`.

A job's volume entry `{name, volume: <registered>, mount_path?, read_only?}` is replaced at submit by
the registration's kind, path or uri (the stored spec and the nodes see the resolved entry), so
workers never read the database. A workspace sees and uses only its own volumes.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard import datarefs
from trainyard.api.auth import Principal, require
from trainyard.api.schemas import ErrorResponse
from trainyard.db.jobs import iso
from trainyard.db.models import Event, Volume, utcnow
from trainyard.spec import JobSpec, VolumeSpec, parse_job_spec, problems_from

router = APIRouter(prefix="/v1")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_DEFINITION_FIELDS = ("path", "uri", "read_only", "sync_interval_s", "mount_path")


class VolumeCreate(BaseModel):
    """A volume registered once and named by jobs: its kind and where its data is."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=NAME_PATTERN)
    workspace: str | None = Field(None, pattern=NAME_PATTERN)
    kind: Literal["host", "sync", "blob"]
    path: str | None = None
    uri: str | None = None
    read_only: bool = False
    sync_interval_s: float | None = None
    mount_path: str | None = None


def _refused(problems: list[dict[str, str]]) -> HTTPException:
    return HTTPException(status_code=422, detail={"message": "invalid volume", "problems": problems})


def volume_dict(volume: Volume) -> dict[str, Any]:
    return {
        "name": volume.name,
        "workspace": volume.workspace,
        "kind": volume.kind,
        **volume.definition,
        "created_by": volume.created_by,
        "created_at": iso(volume.created_at),
    }


def _workspace(who: Principal, asked: str | None) -> str:
    workspace = asked or who.workspace or "default"
    if not who.sees(workspace):
        raise HTTPException(status_code=403, detail=f"your token may not use workspace {workspace!r}")
    return workspace


@router.post("/volumes", status_code=201, summary="Register a named volume")
def create_volume(request: Request, body: dict[str, Any] = Body(...), who: Principal = require("user")) -> Any:
    try:
        new = VolumeCreate.model_validate(body)
        checked = VolumeSpec.model_validate({"name": "v", **new.model_dump(exclude={"name", "workspace"})})
    except ValidationError as exc:
        raise _refused(problems_from(exc)) from None
    if checked.uri is not None and (
        problem := datarefs.uri_problem(checked.uri, request.app.state.settings.storage_url)
    ):
        raise _refused([{"field": "uri", "reason": problem}])
    workspace = _workspace(who, new.workspace)
    definition = checked.model_dump(include=set(_DEFINITION_FIELDS))
    with request.app.state.sessions.begin() as session:
        if session.get(Volume, (workspace, new.name)) is not None:
            raise HTTPException(status_code=409, detail=f"volume {new.name} already exists in {workspace}")
        volume = Volume(
            workspace=workspace,
            name=new.name,
            kind=new.kind,
            definition=definition,
            created_by=who.name,
            created_at=utcnow(),
        )
        session.add(volume)
        session.add(
            Event(
                at=utcnow(),
                kind="volume_created",
                actor=who.name,
                detail={"workspace": workspace, "name": new.name, "kind": new.kind},
            )
        )
        session.flush()
        return volume_dict(volume)


@router.get("/volumes", summary="Named volumes of the workspaces you see")
def list_volumes(request: Request, workspace: str | None = Query(None), who: Principal = require("viewer")) -> Any:
    query = select(Volume).order_by(Volume.workspace, Volume.name)
    if workspace is not None or who.workspace is not None:
        query = query.where(Volume.workspace == _workspace(who, workspace))
    with request.app.state.sessions() as session:
        return {"volumes": [volume_dict(v) for v in session.scalars(query)]}


def _visible(session: Session, who: Principal, name: str, workspace: str | None) -> Volume:
    workspace = workspace or who.workspace or "default"
    volume = session.get(Volume, (workspace, name)) if who.sees(workspace) else None
    if volume is None:
        raise HTTPException(status_code=404, detail=f"no volume {name}")
    return volume


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such volume"}}


@router.get("/volumes/{volume_name}", summary="One named volume", responses=_NOT_FOUND)
def show_volume(
    request: Request, volume_name: str, workspace: str | None = Query(None), who: Principal = require("viewer")
) -> Any:
    with request.app.state.sessions() as session:
        return volume_dict(_visible(session, who, volume_name, workspace))


@router.delete(
    "/volumes/{volume_name}", summary="Forget a named volume (its data stays where it is)", responses=_NOT_FOUND
)
def delete_volume(
    request: Request, volume_name: str, workspace: str | None = Query(None), who: Principal = require("user")
) -> Any:
    with request.app.state.sessions.begin() as session:
        volume = _visible(session, who, volume_name, workspace)
        session.delete(volume)
        session.add(
            Event(
                at=utcnow(),
                kind="volume_deleted",
                actor=who.name,
                detail={"workspace": volume.workspace, "name": volume_name},
            )
        )
        return {"name": volume_name, "workspace": volume.workspace, "deleted": True}


def resolve_volumes(session: Session, spec: JobSpec) -> tuple[JobSpec, list[dict[str, str]]]:
    """Replace each `volume: NAME` entry by its registration in the job's workspace; unknown names are problems."""
    if not any(v.volume for v in spec.volumes):
        return spec, []
    problems, entries = [], []
    for i, entry in enumerate(spec.volumes):
        data = entry.model_dump(exclude_none=True)
        if entry.volume is not None:
            registered = session.get(Volume, (spec.workspace, entry.volume))
            if registered is None:
                problems.append(
                    {
                        "field": f"volumes[{i}].volume",
                        "reason": f"no volume {entry.volume!r} in workspace {spec.workspace}",
                    }
                )
                continue
            data.pop("volume")
            defaults = {k: v for k, v in registered.definition.items() if v is not None}
            data = {
                **defaults,
                **{k: v for k, v in data.items() if k in ("mount_path",) or (k == "read_only" and v)},
                "name": entry.name,
                "kind": registered.kind,
            }
        entries.append(data)
    if problems:
        return spec, problems
    return parse_job_spec({**spec.model_dump(exclude_none=False), "volumes": entries}), []
