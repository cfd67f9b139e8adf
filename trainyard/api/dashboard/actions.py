"""Dashboard actions (POST): log in and out, cancel a job or a sweep, rerun, drain a node, scale a pool.

Every action checks the session's CSRF token and the role the REST route would need (403 for a
viewer), then calls that route's own function; a plain form post gets a redirect back to the page
(303), so the dashboard works without scripts too.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from trainyard.api import jobs, nodes, pools, sweeps
from trainyard.api.dashboard.render import render
from trainyard.api.dashboard.sessions import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    LOGIN_CSRF_TTL_S,
    SESSION_COOKIE,
    SESSION_TTL_S,
    DashboardUser,
    LoginRequired,
    check_action,
    close_session,
    current_user,
    open_session,
    read_form,
    same_secret,
    set_cookie,
)
from trainyard.api.schemas import plausible_id

router = APIRouter(prefix="/ui", include_in_schema=False)


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a dashboard path of this site only (never another host)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/jobs"


def _back(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    login_csrf = secrets.token_urlsafe(32)
    response = render(request, "login.html", None, next=safe_next(next), login_csrf=login_csrf, problem=None)
    set_cookie(request, response, LOGIN_CSRF_COOKIE, login_csrf, LOGIN_CSRF_TTL_S)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await read_form(request)
    target = safe_next(form.get("next"))
    if not same_secret(form.get(CSRF_FIELD, ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")):
        raise HTTPException(status_code=403, detail="the login form expired: reload it and try again")
    session_id = await run_in_threadpool(open_session, request, form.get("token", ""))
    if session_id is None:
        response = render(
            request, "login.html", None, status_code=401, next=target, login_csrf=form.get(CSRF_FIELD, ""),
            problem="That token is not valid (unknown, expired or deleted).",
        )  # fmt: skip
        return response
    redirect = _back(target)
    set_cookie(request, redirect, SESSION_COOKIE, session_id, SESSION_TTL_S)
    redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/", httponly=True, samesite="strict")
    return redirect


async def _action(request: Request, role: str) -> tuple[Any, dict[str, str]]:
    """The principal of a POST action (login, CSRF and role checked) and its form."""
    form = await read_form(request)
    user: DashboardUser = await run_in_threadpool(current_user, request)
    return check_action(request, user, form, role), form


@router.post("/logout")
async def logout(request: Request) -> Response:
    with contextlib.suppress(LoginRequired):  # a session that is gone already: just clear the cookie
        await _action(request, "viewer")
    await run_in_threadpool(close_session, request)
    response = _back("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    who, _form = await _action(request, "user")
    await run_in_threadpool(jobs.cancel, request, job_id, who)
    return _back(f"/ui/jobs/{quote(job_id)}")


@router.post("/jobs/{job_id}/rerun")
async def rerun_job(request: Request, job_id: str) -> Response:
    who, _form = await _action(request, "user")
    created = await run_in_threadpool(jobs.rerun, request, job_id, who)
    return _back(f"/ui/jobs/{quote(str(created['id']))}")


@router.post("/sweeps/{sweep_id}/cancel")
async def cancel_sweep(request: Request, sweep_id: str) -> Response:
    who, _form = await _action(request, "user")
    await run_in_threadpool(sweeps.cancel, request, sweep_id, who)
    return _back(f"/ui/sweeps/{quote(sweep_id)}")


@router.post("/nodes/{node_id}/drain")
async def drain_node(request: Request, node_id: str) -> Response:
    who, _form = await _action(request, "admin")
    await run_in_threadpool(nodes.drain_node, request, node_id, who)
    return _back("/ui/nodes")


def _scale_body(current: dict[str, Any], form: dict[str, str]) -> pools.PoolScale:
    """The pool's scale settings with the form's changes (the REST route replaces them whole)."""
    kept = {k: v for k, v in (current.get("settings") or {}).items() if k not in pools.OTHER_SETTINGS}
    target = form.get("target", "").strip()
    changes = {
        "min_nodes": form.get("min_nodes", "0").strip() or "0",
        "max_nodes": form.get("max_nodes", "0").strip() or "0",
        "target": int(target) if target.lstrip("-").isdigit() else None,
        "autoscale": form.get("autoscale") == "on",
    }
    return pools.PoolScale.model_validate({**kept, **changes})


@router.post("/pools/{name}/scale")
async def scale_pool(request: Request, name: str) -> Response:
    who, form = await _action(request, "admin")
    if not plausible_id(name):
        raise HTTPException(status_code=404, detail=f"no pool {name}")
    listed = await run_in_threadpool(nodes.list_pools, request, who)
    current: dict[str, Any] = next((p for p in listed["pools"] if p["name"] == name), {"settings": {}})
    try:
        body = _scale_body(current, form)
    except ValidationError as exc:
        problems = "; ".join(str(e.get("msg", "")) for e in exc.errors())
        raise HTTPException(status_code=422, detail=f"cannot scale pool {name}: {problems}") from None
    await run_in_threadpool(pools.scale_pool, request, name, body, who)
    return _back("/ui/nodes")
