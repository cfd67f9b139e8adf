"""Token routes (admin only): create (the token is shown once), list, delete."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.api.auth import Principal, new_token, require, token_hash
from trainyard.api.schemas import ErrorResponse, TokenCreate, TokenCreated, TokenList, TokenOut, plausible_id
from trainyard.db.jobs import iso
from trainyard.db.models import ApiToken, Event, utcnow
from trainyard.spec import parse_duration_s

router = APIRouter(prefix="/v1")

MAX_EXPIRES_IN_S = 10 * 365 * 86400.0
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such token in your workspace"}
}


def token_dict(row: ApiToken) -> dict[str, Any]:
    """A token as the API shows it: everything but the token (which is not even stored)."""
    created_at = iso(row.created_at)
    assert created_at is not None
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "workspace": row.workspace,
        "created_at": created_at,
        "created_by": row.created_by,
        "expires_at": iso(row.expires_at),
        "deleted_at": iso(row.deleted_at),
    }


def _problem(field: str, reason: str) -> HTTPException:
    return HTTPException(
        status_code=422, detail={"message": "invalid token request", "problems": [{"field": field, "reason": reason}]}
    )


def _expires_in_s(value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration_s(value)
    except ValueError as exc:
        raise _problem("expires_in", str(exc)) from None
    if not 0 < seconds <= MAX_EXPIRES_IN_S:
        raise _problem("expires_in", "must be more than 0 s and at most 10 years")
    return seconds


def _scope(body: TokenCreate, who: Principal) -> str | None:
    """The new token's workspace; an admin of one workspace mints tokens for that workspace only."""
    workspace = body.workspace if body.workspace is not None else who.workspace
    if workspace is None and body.role != "admin":
        raise _problem("workspace", f"a {body.role} token must be scoped to a workspace")
    if not who.sees(workspace):  # a scoped admin sees no other workspace, and not "all" either
        raise HTTPException(status_code=403, detail="your token may only create tokens for its own workspace")
    return workspace


@router.post(
    "/tokens",
    status_code=201,
    summary="Create an API token (shown once)",
    response_model=TokenCreated,
    response_model_exclude_unset=True,
)
def create_token(request: Request, body: TokenCreate, who: Principal = require("admin")) -> Any:
    workspace = _scope(body, who)
    expires_in_s = _expires_in_s(body.expires_in)
    token, now = new_token(), utcnow()
    row = ApiToken(
        id="tk" + secrets.token_hex(6),
        name=body.name or f"{body.role}@{workspace or '*'}",
        role=body.role,
        workspace=workspace,
        token_hash=token_hash(token),
        created_at=now,
        created_by=who.name,
        expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s is not None else None,
    )
    with request.app.state.sessions.begin() as session:
        session.add(row)
        _audit(session, "token_created", row, who)
    return {**token_dict(row), "token": token}


@router.get("/tokens", summary="API tokens (never their values)", response_model=TokenList)
def list_tokens(request: Request, include_deleted: bool = False, who: Principal = require("admin")) -> Any:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if who.workspace is not None:
        query = query.where(ApiToken.workspace == who.workspace)
    if not include_deleted:
        query = query.where(ApiToken.deleted_at.is_(None))
    with request.app.state.sessions() as session:
        return {"tokens": [token_dict(row) for row in session.scalars(query)]}


@router.delete(
    "/tokens/{token_id}",
    summary="Delete an API token: it stops working at once",
    response_model=TokenOut,
    responses=_NOT_FOUND,
)
def delete_token(request: Request, token_id: str, who: Principal = require("admin")) -> Any:
    with request.app.state.sessions.begin() as session:
        row = session.get(ApiToken, token_id) if plausible_id(token_id) else None
        if row is None or row.deleted_at is not None or (who.workspace is not None and row.workspace != who.workspace):
            raise HTTPException(status_code=404, detail=f"no token {token_id}")
        row.deleted_at = utcnow()
        _audit(session, "token_deleted", row, who)
        return token_dict(row)


def _audit(session: Session, kind: str, row: ApiToken, who: Principal) -> None:
    detail = {"token_id": row.id, "name": row.name, "role": row.role, "workspace": row.workspace}
    session.add(Event(at=utcnow(), kind=kind, actor=who.name, detail=detail))
