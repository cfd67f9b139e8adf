"""The web dashboard served by the API at /ui (and / redirects there): jobs, sweeps, nodes and pools.

Server-rendered Jinja2 pages, enhanced with htmx (vendored at build time: no CDN) and a small
script of our own for live logs; on the API's tokens and roles through a session cookie
(sessions.py). None of its routes is in the OpenAPI document: they are pages, not the API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainyard.api.dashboard import actions, logstream, pages
from trainyard.api.dashboard.render import STATIC_DIR, render
from trainyard.api.dashboard.sessions import LoginRequired
from trainyard.api.errors import http_error_handler

PREFIX = "/ui"


def _is_dashboard(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def _login_required(request: Request, _exc: Exception) -> Response:
    if request.headers.get("HX-Request"):  # htmx follows HX-Redirect with a full page load
        return Response(status_code=401, headers={"HX-Redirect": "/ui/login"})
    if request.method != "GET" or request.url.path.endswith("/logs/events"):
        return Response("log in first: /ui/login", status_code=401, media_type="text/plain")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


def _http_error(request: Request, exc: Exception) -> Any:
    """Dashboard errors as pages (403, 404, …); the API's as JSON, as before."""
    if not _is_dashboard(request):
        return http_error_handler(request, exc)
    assert isinstance(exc, StarletteHTTPException)
    return render(request, "error.html", None, status_code=exc.status_code, status=exc.status_code, detail=exc.detail)


def install(app: FastAPI) -> None:
    """Add the dashboard's routes, static files and error pages (after the API's error handlers)."""
    for router in (pages.router, actions.router, logstream.router):
        app.include_router(router)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/jobs", status_code=303)

    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(StarletteHTTPException, _http_error)
