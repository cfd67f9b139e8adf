"""Autoscaled pools: local nodes grow with demand and shrink when idle; requeue and wait on scale-down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import private_redis
from trainyard.client import Client, Job
from trainyard.up import Cluster, start_cluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Control plane only (no workers): the leading scheduler's autoscaler starts every node."""
    home: Path = tmp_path_factory.mktemp("autoscale")
    with private_redis(home / "redis") as (redis_url, _port):
        cluster = start_cluster(
            workers=0,
            home=home,
            extra_env={
                "TRAINYARD_DATABASE_URL": f"sqlite:///{home / 'trainyard.db'}",
                "TRAINYARD_REDIS_URL": redis_url,
                "TRAINYARD_ADMIN_TOKEN": "",
                "TRAINYARD_SECRET_KEY": "",
            },
        )
        try:
            yield cluster
        finally:
            cluster.stop()
            from trainyard.scheduler.providers.local import LocalProvider

            provider = LocalProvider(home=home)
            for pool in ("grow", "requeue", "wait"):
                provider.stop_all(pool)


@pytest.fixture
def client(autoscaled: Cluster) -> Iterator[Client]:
    with Client(api_url=autoscaled.api_url, token=autoscaled.admin_token) as sdk:
        yield sdk


def _scale(client: Client, pool: str, **settings: Any) -> dict[str, Any]:
    body = {
        "min_nodes": 0,
        "max_nodes": 3,
        "autoscale": True,
        "idle_timeout_s": 5,
        "deallocation": "wait",
        "provider": "local",
        "slots_per_node": 2,
        "gpus_per_node": 0,
        **settings,
    }
    return client.scale_pool(pool, body)


def _up_nodes(client: Client, pool: str) -> list[str]:
    return [n["id"] for n in client.nodes() if n["pool"] == pool and n["state"] in ("up", "draining")]


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _running(job: Job) -> bool:
    return bool(job.refresh().data["state"] == "running")


def test_put_pool_checks_its_input(autoscaled: Cluster, client: Client) -> None:
    url = f"{autoscaled.api_url}/v1/pools/bad"
    headers = {"Authorization": f"Bearer {autoscaled.admin_token}"}
    assert httpx.put(url, json={"min_nodes": 3, "max_nodes": 1}, headers=headers).status_code == 422
    assert httpx.put(url, json={"max_nodes": 1, "deallocation": "later"}, headers=headers).status_code == 422
    assert httpx.put(url, json={"max_nodes": 1}).status_code == 401
    pool = _scale(client, "manual", autoscale=False, target=0, max_nodes=2)
    assert pool["settings"]["target"] == 0
    assert any(p["name"] == "manual" for p in client.pools())


def test_pool_grows_to_max_runs_everything_and_shrinks_to_zero(client: Client) -> None:
    _scale(client, "grow", max_nodes=3, idle_timeout_s=5)
    jobs = client.submit_many([{"name": f"s{i}", "pool": "grow", "command": "sleep 3"} for i in range(12)])
    peak = 0

    def grown() -> bool:
        nonlocal peak
        peak = max(peak, len(_up_nodes(client, "grow")))
        return peak >= 3

    _until(grown, 60, "3 nodes in pool grow")
    for job in jobs:
        assert job.wait(timeout=90) == "succeeded", job.data
    assert len(_up_nodes(client, "grow")) <= 3
    _until(lambda: not _up_nodes(client, "grow"), 30, "pool grow to shrink to 0")


def test_scale_down_with_requeue_requeues_a_running_job(client: Client) -> None:
    _scale(client, "requeue", max_nodes=1, deallocation="requeue", idle_timeout_s=60)
    job = client.submit({"name": "victim", "pool": "requeue", "command": "sleep 60"})
    _until(lambda: _running(job), 60, "the job to run")
    _scale(client, "requeue", max_nodes=0, deallocation="requeue", idle_timeout_s=60)
    _until(lambda: job.refresh().data["attempt"] == 2, 20, "attempt 2")
    assert job.data["attempts"][0]["reason"] == "preempted"
    assert job.data["state"] == "queued"
    _until(lambda: not _up_nodes(client, "requeue"), 20, "the node to go")
    _scale(client, "requeue", max_nodes=1, deallocation="requeue", idle_timeout_s=60)
    _until(lambda: _running(job), 60, "attempt 2 to run")
    assert job.data["attempt"] == 2
    client.cancel(job.id)


def test_scale_down_with_wait_lets_the_job_finish(client: Client) -> None:
    _scale(client, "wait", max_nodes=1, deallocation="wait", idle_timeout_s=60)
    job = client.submit({"name": "keeper", "pool": "wait", "command": "sleep 5"})
    _until(lambda: _running(job), 60, "the job to run")
    _scale(client, "wait", max_nodes=0, deallocation="wait", idle_timeout_s=60)
    _until(lambda: any(n["state"] == "draining" for n in client.nodes() if n["pool"] == "wait"), 10, "draining")
    assert job.wait(timeout=30) == "succeeded"
    assert job.data["attempt"] == 1
    _until(lambda: not _up_nodes(client, "wait"), 20, "the drained node to go")


def test_docker_provider_starts_lists_and_stops_containers() -> None:
    """Against Podman's Engine API, with a stand-in command: a real worker needs the worker image
    (docker/Dockerfile.worker), which cannot be built offline here."""
    from tests.workers.launchers.components import TEST_IMAGE, docker_url
    from trainyard.scheduler.providers.docker import DockerProvider

    provider = DockerProvider(base_url=docker_url(), image=TEST_IMAGE, command=["sleep", "300"], env={})
    pool = f"dock{int(time.time() * 1000) % 100000}"
    try:
        started = provider.start_node(pool, f"{pool}-auto-1", slots=1, gpus=0)
        assert started.node_id == f"{pool}-auto-1"
        assert [n.node_id for n in provider.list_nodes(pool)] == [f"{pool}-auto-1"]
        provider.stop_node(f"{pool}-auto-1")
        assert provider.list_nodes(pool) == []
        provider.stop_node(f"{pool}-auto-1")  # already gone: no error
    finally:
        provider.stop_all(pool)
