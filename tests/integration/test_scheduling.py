"""Scheduling with real workers: wall clock limits, drain, gangs, backfill and preemption."""

from __future__ import annotations

import time

import pytest

from trainyard.client import Client
from trainyard.up import Cluster

pytestmark = pytest.mark.integration


def test_a_job_past_its_wall_clock_is_killed_and_failed(client: Client) -> None:
    job = client.submit({"name": "overtime", "command": "sleep 120", "max_wall_clock": "2s", "max_retries": 2})
    assert job.wait(timeout=60) == "failed"
    attempts = job.data["attempts"]
    assert len(attempts) == 1, "a wall-clock kill is not retried"
    assert attempts[0]["reason"] == "wall_clock"


def test_a_drained_node_gets_no_new_work_and_finishes_what_it_runs(client: Client, cluster: Cluster) -> None:
    pool = f"drain-{int(time.time() * 1000) % 100000}"
    cluster.add_worker(f"{pool}-a", "127.0.0.10", pool=pool, slots=1)
    deadline = time.monotonic() + 30
    while not any(n["id"] == f"{pool}-a" for n in client.nodes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    running = client.submit({"name": "on-drained", "pool": pool, "command": "sleep 2"})
    while running.refresh().state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    client.drain(f"{pool}-a")
    later = client.submit({"name": "after-drain", "pool": pool, "command": "true"})
    assert running.wait(timeout=60) == "succeeded"
    time.sleep(2)
    assert later.refresh().state == "queued"
    assert later.data["pending_reason"]
    client.cancel(later.id)
