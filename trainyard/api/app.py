"""The FastAPI application: wiring of settings, database, Redis and storage to the routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from trainyard import __version__, transport
from trainyard.api import jobs, nodes
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
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.redis = transport.redis_client(settings.redis_url)
    app.state.storage = open_storage(settings.storage_url)
    app.include_router(jobs.router)
    app.include_router(nodes.router)
    app.add_exception_handler(SpecError, jobs.spec_error_handler)

    @app.get("/healthz", summary="Liveness (no auth)")
    def healthz() -> Any:
        return {"ok": True, "version": __version__}

    return app
