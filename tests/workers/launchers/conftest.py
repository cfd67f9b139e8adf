"""Fixtures of the launcher contract suite: a Redis for spawn relays, gangs on simulated nodes, the container engine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workers.launchers import components
from tests.workers.launchers.gang import Gang

# This suite's database on the session's private Redis (other suites use their own numbers).
REDIS_DB = 7


@pytest.fixture(scope="session")
def relay_redis_url(redis_server: str) -> str:
    return redis_server.rsplit("/", 1)[0] + f"/{REDIS_DB}"


@pytest.fixture
def docker_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = components.docker_url()
    monkeypatch.setenv("TRAINYARD_DOCKER_URL", url)  # how a worker started with --docker-url finds it
    return url


class Engine:
    """The container engine as the tests see it; without one, no container of any job exists."""

    def __init__(self, url: str | None):
        self.url = url

    def containers_of(self, job_id: str) -> list[str]:
        if self.url is None:
            return []
        import docker

        client = docker.DockerClient(base_url=self.url)
        try:
            return [c.name for c in client.containers.list(all=True, filters={"label": f"trainyard.job={job_id}"})]
        finally:
            client.close()


@pytest.fixture
def docker_engine() -> Engine:
    url = os.environ.get("TRAINYARD_DOCKER_URL")
    if url is None and components.engine_answers(f"unix://{components.PODMAN_SOCKET}"):
        url = f"unix://{components.PODMAN_SOCKET}"
    return Engine(url)


@pytest.fixture
def make_gang(tmp_path: Path, relay_redis_url: str) -> Iterator[Callable[..., Gang]]:
    """Build gangs that are stopped (never left running) when the test ends."""
    gangs: list[Gang] = []

    def make(spec: dict[str, Any], nodes: int = 1, gpus: list[list[int]] | None = None) -> Gang:
        gang = Gang(tmp_path / f"gang-{len(gangs)}", relay_redis_url, spec, nodes=nodes, gpus=gpus)
        gangs.append(gang)
        return gang

    yield make
    for gang in gangs:
        gang.stop(grace_s=1.0)
        with contextlib.suppress(TimeoutError, RuntimeError):
            gang.wait(timeout_s=60)
