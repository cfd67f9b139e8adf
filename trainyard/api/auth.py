"""Bearer-token authentication: every route but /healthz needs a token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

ROLES = ("viewer", "user", "admin")

_bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer <token>`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, and the workspace its token is scoped to (None: every workspace)."""

    name: str
    role: str
    workspace: str | None = None

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def sees(self, workspace: str) -> bool:
        return self.workspace is None or self.workspace == workspace


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing bearer token")
    admin_token: str | None = request.app.state.settings.admin_token
    if admin_token and hmac.compare_digest(credentials.credentials.encode(), admin_token.encode()):
        return Principal(name="admin", role="admin")
    raise _unauthorized("invalid token")


def require(role: str) -> Any:
    """A dependency: the caller's principal, if its role is at least `role` (else 403)."""

    def check(who: Principal = Depends(principal)) -> Principal:
        if not who.can(role):
            raise HTTPException(status_code=403, detail=f"role {who.role} may not do this (needs {role})")
        return who

    return Depends(check)
