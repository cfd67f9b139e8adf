"""The FastAPI application: wiring of settings, database, Redis and storage to the routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from trainyard import __version__, transport
from trainyard.api import audit, dashboard, job_metrics, jobs, metrics, nodes, outputs, pools, sweeps, tokens, volumes
from trainyard.api.errors import AUTH_RESPONSES, install_error_handlers
from trainyard.api.schemas import Health
from trainyard.config import Settings, load_settings
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.spec import SpecError
from trainyard.storage_adapters import open_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(
        title="trainyard",
        version=__version__,
        description="Self-hosted batch system for training ML models on GPU/CPU clusters.",
    )
    engine = make_engine(settings.database_url.get_secret_value())
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.redis = transport.redis_client(settings.redis_url.get_secret_value())
    app.state.storage = open_storage(settings.storage_url)
    app.state.metrics_registry = metrics.make_registry(app.state.sessions, app.state.redis)
    for router in (jobs.router, nodes.router, tokens.router, audit.router, metrics.router, sweeps.router):
        app.include_router(router, responses=AUTH_RESPONSES)
    app.include_router(outputs.router, responses=AUTH_RESPONSES)
    app.include_router(job_metrics.router, responses=AUTH_RESPONSES)
    app.include_router(pools.router, responses=AUTH_RESPONSES)
    app.include_router(volumes.router, responses=AUTH_RESPONSES)
    app.add_exception_handler(SpecError, jobs.spec_error_handler)
    install_error_handlers(app)
    dashboard.install(app)  # the web pages at /ui, on the same tokens (through a session cookie)

    @app.get("/healthz", summary="Liveness (no auth)", response_model=Health)
    def healthz() -> Any:
        return {"ok": True, "version": __version__}

    return app
