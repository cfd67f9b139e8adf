"""Workspace settings: its webhook targets and signing key (`GET`/`PUT /v1/workspaces/{workspace}/notify`).

Admin only. The targets fire for every job of the workspace that is not a sweep point, and for
every sweep's end. The signing key is what receivers verify X-Trainyard-Signature with: shown to
admins here (receivers must be configured with it), set by an admin or derived from the
deployment's secret key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from trainyard.api.auth import Principal, require
from trainyard.api.notifier import signing_key
from trainyard.config import secret
from trainyard.crypto import encrypt_secrets
from trainyard.db.models import Event, WorkspaceSettings, utcnow
from trainyard.spec import MAX_NOTIFY_TARGETS, NotifyTarget, problems_from, stored_notify

router = APIRouter(prefix="/v1")

WORKSPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class WorkspaceNotify(BaseModel):
    """A workspace's webhook targets (replaced whole), and optionally its own signing key."""

    model_config = ConfigDict(extra="forbid")

    notify: list[NotifyTarget] = Field(default_factory=list, max_length=MAX_NOTIFY_TARGETS)
    signing_key: str | None = Field(None, min_length=16, max_length=200, repr=False)


def _shown(session: Session, name: str, request: Request) -> dict[str, Any]:
    row = session.get(WorkspaceSettings, name)
    key = signing_key(session, name, secret(request.app.state.settings.secret_key))
    return {"workspace": name, "notify": (row.notify if row else None) or [], "signing_key": key.decode()}


def _own(who: Principal, name: str) -> None:
    if not who.sees(name):
        raise HTTPException(status_code=404, detail=f"no workspace {name}")


@router.get("/workspaces/{workspace}/notify", summary="A workspace's webhook targets and signing key (admin)")
def get_notify(
    request: Request, workspace: str = Path(pattern=WORKSPACE_PATTERN), who: Principal = require("admin")
) -> Any:
    _own(who, workspace)
    with request.app.state.sessions() as session:
        return _shown(session, workspace, request)


@router.put("/workspaces/{workspace}/notify", summary="Set a workspace's webhook targets (admin)")
def put_notify(
    request: Request,
    body: dict[str, Any],
    workspace: str = Path(pattern=WORKSPACE_PATTERN),
    who: Principal = require("admin"),
) -> Any:
    _own(who, workspace)
    try:
        wanted = WorkspaceNotify.model_validate(body)
    except ValidationError as exc:  # refused whole, every problem named; nothing is stored
        raise HTTPException(status_code=422, detail={"message": "invalid workspace settings",
                                                     "problems": problems_from(exc)}) from None  # fmt: skip
    key = secret(request.app.state.settings.secret_key)
    if wanted.signing_key is not None and not key:
        problem = {"field": "signing_key", "reason": "TRAINYARD_SECRET_KEY is not set: a key could not be stored"}
        raise HTTPException(status_code=422, detail={"message": "invalid workspace settings", "problems": [problem]})
    now = utcnow()
    with request.app.state.sessions.begin() as session:
        row = session.get(WorkspaceSettings, workspace) or WorkspaceSettings(workspace=workspace)
        row.notify, row.updated_at = stored_notify(wanted.notify), now
        if wanted.signing_key is not None and key:
            row.signing_key_enc = encrypt_secrets({"signing_key": wanted.signing_key}, key)
        session.add(row)
        detail = {
            "workspace": workspace,
            "targets": len(wanted.notify),
            "signing_key_set": wanted.signing_key is not None,
        }
        session.add(Event(at=now, kind="workspace_notify", actor=who.name, detail=detail))
    with request.app.state.sessions() as session:
        return _shown(session, workspace, request)
