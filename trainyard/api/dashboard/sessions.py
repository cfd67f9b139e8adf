"""Dashboard logins: a token pasted once becomes a server-side session behind an HttpOnly cookie.

The cookie holds only a random session id (SameSite=Strict, HttpOnly, Secure over HTTPS); the
database keeps its SHA-256, the SHA-256 of the token it was opened with, and a per-session CSRF
token that every action must send back (a form field, or the `X-CSRF-Token` header for scripts).
The token itself is never stored, and never put in a URL. Each request resolves the session's
token again (`auth.principal_for_hash`), so a deleted or expired token ends its sessions at once.
The login form carries a CSRF token of its own (double-submit cookie): another site cannot log
a browser into the attacker's account.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request, Response
from sqlalchemy import delete

from trainyard.api.auth import Principal, check_role, principal_for_hash, principal_for_token, token_hash
from trainyard.db.models import DashboardSession, utcnow

SESSION_COOKIE = "trainyard_session"
LOGIN_CSRF_COOKIE = "trainyard_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600
LOGIN_CSRF_TTL_S = 3600
# Longest cookie or form body worth reading: ids are 43 characters, forms a few fields.
MAX_SESSION_ID_CHARS = 128
MAX_FORM_BYTES = 64 * 1024


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, scripts get 401."""


@dataclass(frozen=True)
class DashboardUser:
    """A logged-in browser: who its token is, and the CSRF token its actions must send."""

    who: Principal
    csrf: str

    def can(self, role: str) -> bool:
        return self.who.can(role)


def current_user(request: Request) -> DashboardUser:
    """The session's user (LoginRequired when there is no live session or its token is gone)."""
    session_id = request.cookies.get(SESSION_COOKIE, "")
    if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
        raise LoginRequired()
    with request.app.state.sessions() as session:
        row = session.get(DashboardSession, token_hash(session_id))
    if row is None or row.expires_at <= utcnow():
        raise LoginRequired()
    who = principal_for_hash(request, row.token_hash)
    if who is None:
        raise LoginRequired()
    return DashboardUser(who=who, csrf=row.csrf_token)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age_s: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age_s, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )


def open_session(request: Request, token: str) -> str | None:
    """A new session for a valid token: its id (the cookie's value), or None for a bad token."""
    token = token.strip()
    if not token or principal_for_token(request, token) is None:
        return None
    session_id = secrets.token_urlsafe(32)
    now = utcnow()
    with request.app.state.sessions.begin() as session:
        session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))  # keep the table small
        session.add(
            DashboardSession(
                id_hash=token_hash(session_id),
                token_hash=token_hash(token),
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + timedelta(seconds=SESSION_TTL_S),
            )
        )
    return session_id


def close_session(request: Request) -> None:
    session_id = request.cookies.get(SESSION_COOKIE, "")
    if session_id and len(session_id) <= MAX_SESSION_ID_CHARS:
        with request.app.state.sessions.begin() as session:
            session.execute(delete(DashboardSession).where(DashboardSession.id_hash == token_hash(session_id)))


def same_secret(given: str, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


async def read_form(request: Request) -> dict[str, str]:
    """An url-encoded form body (the dashboard's forms have no files), first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(status_code=413, detail="form too large")
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def check_action(request: Request, user: DashboardUser, form: dict[str, str], role: str) -> Principal:
    """The principal of an action: its CSRF token must match the session's (403), and its role suffice (403)."""
    given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD, "")
    if not same_secret(given, user.csrf):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token: reload the page and try again")
    return check_role(user.who, role)
