"""A real cluster for the launcher integration tests: embedded Redis, API, scheduler, two 4-GPU nodes.

Kept out of tests/integration/conftest.py on purpose: this cluster is the launchers' own (nodes
that declare GPUs, a container engine when there is one), started once per module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.workers.launchers import components
from trainyard.client import Client, Job
from trainyard.up import Cluster, start_cluster

GPUS_PER_NODE = 4
SLOTS_PER_NODE = 4


def launcher_cluster(home: Path) -> Cluster:
    """Everything of `trainyard up` with its own Redis (TRAINYARD_REDIS_URL unset: embedded)."""
    extra_env = {
        "TRAINYARD_REDIS_URL": "",
        "TRAINYARD_DATABASE_URL": "",
        "TRAINYARD_ADMIN_TOKEN": "",
        "TRAINYARD_SECRET_KEY": "",
    }
    if url := components.cluster_docker_url():
        extra_env["TRAINYARD_DOCKER_URL"] = url
    return start_cluster(workers=2, slots=SLOTS_PER_NODE, gpus=GPUS_PER_NODE, home=home, extra_env=extra_env)


@pytest.fixture(scope="module")
def launchers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = launcher_cluster(tmp_path_factory.mktemp("launchers-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def launchers_client(launchers_cluster: Cluster) -> Iterator[Client]:
    with Client(api_url=launchers_cluster.api_url, token=launchers_cluster.admin_token) as client:
        yield client


def finished(job: Job, timeout_s: float = 240.0) -> dict[str, Any]:
    job.wait(timeout=timeout_s, poll_s=0.2)
    return dict(job.data)


def processes_of(job_id: str) -> list[str]:
    """Command lines of live processes that carry the job's id in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TRAINYARD_JOB_ID") == job_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(proc.cmdline()))
        except (psutil.Error, OSError):
            continue
    return found


def no_process_left(job_id: str, timeout_s: float = 5.0) -> list[str]:
    """[] once nothing of the job runs on any node (the simulated nodes share this machine)."""
    deadline = time.monotonic() + timeout_s
    left = processes_of(job_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_of(job_id)
    return left


def wait_for_log(job: Job, text: str, rank: int = 0, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = job.log_bytes(rank=rank).decode(errors="replace")
        if text in log:
            return log
        if job.refresh().data["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in rank {rank}'s log of {job.id}: {job.data}")
