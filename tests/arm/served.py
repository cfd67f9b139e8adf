"""The trainyard app served by a real uvicorn on a free loopback port, for the /arm API-level tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


class Api(httpx.Client):
    """An HTTP client of the served app (with `token` as bearer, or none), with the app at hand."""

    def __init__(self, app: FastAPI, base_url: str, token: str | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        super().__init__(base_url=base_url, headers=headers, timeout=30)
        self.app = app


@contextmanager
def served(app: FastAPI, token: str | None = None) -> Iterator[Api]:
    """Serve `app` until the block ends, then stop the server and dispose of the app's engine."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with Api(app, f"http://127.0.0.1:{port}", token) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        app.state.engine.dispose()
