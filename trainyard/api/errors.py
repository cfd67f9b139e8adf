"""Error answers of the API that FastAPI would otherwise give off-schema or too talkative.

- 422 for malformed parameters names each problem but never echoes the input (it may hold secrets);
- a NUL byte in the path or query is a 422 before any handler runs (PostgreSQL refuses NUL in
  text, which would otherwise surface as a 500);
- 405 lists in `Allow` every method the path supports, not only those of the first route that
  matched it (one path, e.g. /v1/tokens, is served by several routes).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from trainyard.api.schemas import ErrorResponse, ValidationFailed

_PARAM = re.compile(r"{[^}]*}")

# Declared on every authenticated route, so that the OpenAPI document lists what it may answer.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a body that cannot be read (not UTF-8 JSON)"},
    401: {"model": ErrorResponse, "description": "no token, or an invalid, expired or deleted one"},
    403: {"model": ErrorResponse, "description": "the token's role may not do this"},
    422: {"model": ValidationFailed, "description": "invalid parameters or body"},
}


def request_problem(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One refused parameter, in the shape of every 422 for parameters (schemas.RequestProblem)."""
    return {"loc": loc, "msg": msg, "type": kind}


def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        request_problem(list(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", ""))) for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": problems})


def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Methods of the routes whose template fits the path best (most literal characters).

    `/v1/jobs/{job_id}` also matches `/v1/jobs/x:cancel`, but that path is the cancel route's.
    """
    best, methods = -1, set[str]()
    for route in app.router.routes:
        route_methods: set[str] | None = getattr(route, "methods", None)
        if not route_methods or route.matches(scope)[0] == Match.NONE:
            continue
        literal = len(_PARAM.sub("", getattr(route, "path", "")))
        if literal > best:
            best, methods = literal, set(route_methods)
        elif literal == best:
            methods |= route_methods
    return sorted(methods)


class RefuseNulMiddleware:
    """422 for a NUL byte in the path or query."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")):
            where = "path" if "\x00" in scope["path"] else "query"
            detail = [request_problem([where], "NUL bytes are not allowed")]
            await JSONResponse(status_code=422, content={"detail": detail})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_middleware(RefuseNulMiddleware)
