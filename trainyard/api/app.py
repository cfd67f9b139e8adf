"""The FastAPI application: wiring of settings, database, Redis and storage to the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from trainyard import __version__, transport
from trainyard.api import (
    arm,
    audit,
    dashboard,
    job_metrics,
    jobs,
    metrics,
    nodes,
    outputs,
    pools,
    sweeps,
    tokens,
    volumes,
    workspaces,
)
from trainyard.api.arm.purge import Purger
from trainyard.api.errors import AUTH_RESPONSES, install_error_handlers
from trainyard.api.notifier import Notifier, NotifierSettings
from trainyard.api.schemas import Health
from trainyard.config import Settings, load_settings, secret
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.retrying import Backoff
from trainyard.spec import SpecError
from trainyard.storage_adapters import open_storage


def create_app(settings: Settings | None = None, notifier: bool = True) -> FastAPI:
    """The app; with `notifier`, threads that send the webhook outbox and purge jobs deleted through /arm
    run while it serves."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sender = purger = None
        if notifier:
            tries = NotifierSettings(max_tries=settings.notify_max_tries,
                                     backoff=Backoff(settings.notify_backoff_s, 300.0))  # fmt: skip
            sender = Notifier(app.state.sessions, secret(settings.secret_key), tries)
            sender.start()
            purger = Purger(app.state.sessions, app.state.storage)  # jobs deleted through /arm, once retained
            purger.start()
        try:
            yield
        finally:
            for thread in (sender, purger):
                if thread is not None:
                    thread.stop()

    app = FastAPI(
        title="trainyard",
        version=__version__,
        description="Self-hosted batch system for training ML models on GPU/CPU clusters.",
        lifespan=lifespan,
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
    app.include_router(workspaces.router, responses=AUTH_RESPONSES)
    app.add_exception_handler(SpecError, jobs.spec_error_handler)
    # The Batch AI REST surface: its schema is Batch AI's 2018-05-01 specification, not this OpenAPI
    # document (whose walk checks trainyard's own auth contract); its errors are CloudErrors.
    app.include_router(arm.router, include_in_schema=False)
    install_error_handlers(app)
    dashboard.install(app)  # the web pages at /ui, on the same tokens (through a session cookie)
    arm.common.install(app)  # CloudErrors under /arm; last, as it defers to the handlers before it elsewhere

    @app.get("/healthz", summary="Liveness (no auth)", response_model=Health)
    def healthz() -> Any:
        return {"ok": True, "version": __version__}

    return app
