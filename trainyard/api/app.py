"""The FastAPI application: wiring of settings, database, Redis and storage to the routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from trainyard import __version__, transport
from trainyard.api import audit, jobs, metrics, nodes, outputs, sweeps, tokens
from trainyard.api.schemas import ErrorResponse, Health, ValidationFailed
from trainyard.config import Settings, load_settings
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.spec import SpecError
from trainyard.storage_adapters import open_storage

# Declared on every authenticated route, so that the OpenAPI document lists what it may answer.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no token, or an invalid, expired or deleted one"},
    403: {"model": ErrorResponse, "description": "the token's role may not do this"},
    422: {"model": ValidationFailed, "description": "invalid parameters or body"},
}


def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """422 for malformed parameters, naming each problem but never echoing the input (it may hold secrets)."""
    assert isinstance(exc, RequestValidationError)
    problems = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": problems})


class RefuseNulMiddleware:
    """422 for a NUL byte in the path or query: PostgreSQL cannot compare text with one (it would be a 500)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")):
            detail = [{"loc": ["path" if "\x00" in scope["path"] else "query"], "msg": "NUL bytes are not allowed",
                       "type": "value_error"}]
            await JSONResponse(status_code=422, content={"detail": detail})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(
        title="trainyard",
        version=__version__,
        description="Self-hosted batch system for training ML models on GPU/CPU clusters.",
    )
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.redis = transport.redis_client(settings.redis_url)
    app.state.storage = open_storage(settings.storage_url)
    app.state.metrics_registry = metrics.make_registry(app.state.sessions, app.state.redis)
    for router in (jobs.router, nodes.router, tokens.router, audit.router, metrics.router, sweeps.router):
        app.include_router(router, responses=AUTH_RESPONSES)
    app.include_router(outputs.router, responses=AUTH_RESPONSES)
    app.add_exception_handler(SpecError, jobs.spec_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_middleware(RefuseNulMiddleware)

    @app.get("/healthz", summary="Liveness (no auth)", response_model=Health)
    def healthz() -> Any:
        return {"ok": True, "version": __version__}

    return app
