"""A real cluster per database backend: API, scheduler and two worker nodes as separate processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trainyard.client import Client
from trainyard.up import Cluster, start_cluster

# Each backend's cluster gets its own Redis database number on the session's private Redis.
REDIS_DB = {"sqlite": 1, "postgresql": 2}
# SIGTERM → SIGKILL for preempted jobs in these clusters (the default is 30 s).
PREEMPT_GRACE_S = 5


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> Iterator[Cluster]:
    backend = request.param
    home: Path = tmp_path_factory.mktemp(f"cluster-{backend}")
    database_url = (
        f"sqlite:///{home / 'trainyard.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    )
    redis_url = redis_server.rsplit("/", 1)[0] + f"/{REDIS_DB[backend]}"
    started = start_cluster(
        workers=2,
        slots=4,
        home=home,
        extra_env={
            "TRAINYARD_DATABASE_URL": database_url,
            "TRAINYARD_REDIS_URL": redis_url,
            "TRAINYARD_ADMIN_TOKEN": "",
            "TRAINYARD_SECRET_KEY": "",
            "TRAINYARD_PREEMPT_GRACE_S": str(PREEMPT_GRACE_S),
        },
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with Client(api_url=cluster.api_url, token=cluster.admin_token) as sdk:
        yield sdk


@pytest.fixture
def cli_env(cluster: Cluster) -> dict[str, str]:
    """Environment for running the `trainyard` CLI against this cluster."""
    import os

    return dict(
        os.environ,
        TRAINYARD_API_URL=cluster.api_url,
        TRAINYARD_TOKEN=cluster.admin_token,
        TRAINYARD_HOME=str(cluster.home),
    )
