"""Bearer-token authentication and role checks: every route but /healthz needs a token.

Tokens are random strings; the database keeps only their SHA-256, so a stolen database
(or backup) holds no usable credential. The bootstrap admin token (TRAINYARD_ADMIN_TOKEN)
lives only in the environment and is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.config import secret
from trainyard.db.models import ApiToken, utcnow

ROLES = ("viewer", "user", "admin")
TOKEN_PREFIX = "ty_"
BOOTSTRAP_ACTOR = "admin"
# Longest token we bother hashing: anything longer is not one of ours.
MAX_TOKEN_CHARS = 256

_bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer <token>`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, and the workspace its token is scoped to (None: every workspace)."""

    name: str
    role: str
    workspace: str | None = None
    token_id: str | None = None

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, workspace: str | None) -> bool:
        return self.workspace is None or self.workspace == workspace


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    # A plain hash is enough: tokens are 256 random bits, so there is nothing to brute-force.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def actor_name(token_id: str, name: str) -> str:
    """How a token is named in the audit trail (events.actor): its id, then its name."""
    return f"{token_id}:{name}"[:64]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _stored_token(session: Session, digest: str) -> ApiToken | None:
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is None or row.deleted_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return row


def _bootstrap_hash(request: Request) -> str | None:
    admin_token = secret(request.app.state.settings.admin_token)
    return token_hash(admin_token) if admin_token else None


def principal_for_hash(request: Request, digest: str) -> Principal | None:
    """The principal of the token with this SHA-256 (how a dashboard session names its token), if still valid."""
    bootstrap = _bootstrap_hash(request)
    if bootstrap is not None and hmac.compare_digest(digest.encode(), bootstrap.encode()):
        return Principal(name=BOOTSTRAP_ACTOR, role="admin")
    with request.app.state.sessions() as session:
        row = _stored_token(session, digest)
    if row is None:
        return None
    return Principal(name=actor_name(row.id, row.name), role=row.role, workspace=row.workspace, token_id=row.id)


def principal_for_token(request: Request, token: str) -> Principal | None:
    """The principal of a token as given (bearer header or the dashboard's login form); None if not valid."""
    admin_token = secret(request.app.state.settings.admin_token)
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal(name=BOOTSTRAP_ACTOR, role="admin")
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    return principal_for_hash(request, token_hash(token))


def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The caller, from its bearer token (401 when missing, unknown, expired or deleted)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing bearer token")
    found = principal_for_token(request, credentials.credentials)
    if found is None:
        raise _unauthorized("invalid, expired or deleted token")
    return found


def check_role(who: Principal, role: str) -> Principal:
    """`who`, if its role is at least `role`; else 403."""
    if not who.can(role):
        raise HTTPException(status_code=403, detail=f"role {who.role} may not do this (needs {role})")
    return who


def require(role: str) -> Any:
    """A dependency: the caller's principal, if its role is at least `role` (else 403).

    It is a `Security` dependency with the role as its scope, so the OpenAPI document names
    the least role of every operation (`security: [{HTTPBearer: [role]}]`).
    """

    def check(who: Principal = Depends(principal)) -> Principal:
        return check_role(who, role)

    return Security(check, scopes=[role])
