"""Scheduling with real workers: wall clock limits, drain, gangs, backfill and preemption."""

from __future__ import annotations

import time
from datetime import datetime

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


def _pool_with_nodes(client: Client, cluster: Cluster, tag: str, count: int, slots: int, base: int) -> str:
    pool = f"{tag}-{int(time.time() * 1000) % 100000}"
    for index in range(count):
        cluster.add_worker(f"{pool}-{index}", f"127.0.0.{base + index}", pool=pool, slots=slots)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(n["pool"] == pool and n["state"] == "up" for n in client.nodes()) == count:
            return pool
        time.sleep(0.2)
    raise AssertionError(f"pool {pool} did not get {count} nodes")


def _started(job_data: dict) -> str:  # type: ignore[type-arg]
    return str(job_data["attempts"][0]["started_at"])


def test_a_gang_behind_a_flood_of_small_jobs_starts_within_one_wall_clock(client: Client, cluster: Cluster) -> None:
    pool = _pool_with_nodes(client, cluster, "flood", 2, 2, 20)
    small = {"pool": pool, "command": "sleep 3", "max_wall_clock": "6s", "max_retries": 0}
    first = [client.submit({**small, "name": f"before-{i}"}) for i in range(4)]
    gang = client.submit({"name": "gang", "pool": pool, "nodes": 2, "resources": {"cpus": 2}, "command": "true"})
    later = [client.submit({**small, "name": f"after-{i}"}) for i in range(12)]
    gang_submitted = time.monotonic()
    assert gang.wait(timeout=90) == "succeeded"
    # The small jobs run at most 6 s, so with a reservation the gang waits about one wall clock.
    all_done = [j.wait(timeout=120) for j in first + later]
    assert all(state == "succeeded" for state in all_done)
    gang_start = _started(gang.refresh().data)
    later_starts = sorted(_started(j.refresh().data) for j in later)
    assert sum(start > gang_start for start in later_starts) >= 8, "later small jobs kept jumping the gang"
    assert time.monotonic() - gang_submitted < 90


def test_two_gangs_on_three_nodes_both_finish(client: Client, cluster: Cluster) -> None:
    pool = _pool_with_nodes(client, cluster, "gangs", 3, 1, 30)
    gangs = [client.submit({"name": f"g{i}", "pool": pool, "nodes": 2, "command": "sleep 2"}) for i in range(2)]
    assert [g.wait(timeout=90) for g in gangs] == ["succeeded", "succeeded"]
    # Neither deadlocked nor was retried: each ran once, on two distinct nodes.
    for gang in gangs:
        assert len(gang.data["attempts"]) == 1
        assert len(set(gang.data["attempts"][0]["nodes"])) == 2


def test_a_high_priority_job_preempts_a_preemptible_low_one_which_later_succeeds(
    client: Client, cluster: Cluster
) -> None:
    pool = _pool_with_nodes(client, cluster, "preempt", 1, 1, 40)
    low = client.submit(
        {
            "name": "low",
            "pool": pool,
            "priority": "low",
            "preemptible": True,
            "command": 'if [ "$TRAINYARD_ATTEMPT" = 1 ]; then sleep 120; fi; echo resumed',
        }
    )
    deadline = time.monotonic() + 30
    while low.refresh().state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    high = client.submit({"name": "high", "pool": pool, "priority": "high", "command": "echo urgent"})
    assert high.wait(timeout=60) == "succeeded"
    assert low.wait(timeout=60) == "succeeded"
    first, second = low.data["attempts"][:2]
    assert first["reason"] == "preempted"
    assert low.data["retries_used"] == 0
    high_start, low_restart = (datetime.fromisoformat(a["started_at"]) for a in (high.data["attempts"][0], second))
    assert high_start <= low_restart
    assert low.log_bytes(attempt=2) == b"resumed\n"


def test_pending_reasons_say_why_in_words(client: Client, cluster: Cluster) -> None:
    pool = _pool_with_nodes(client, cluster, "why", 1, 1, 50)
    blocker = client.submit({"name": "blocker", "pool": pool, "command": "sleep 4"})
    waiting = [client.submit({"name": f"w{i}", "pool": pool, "command": "true"}) for i in range(3)]
    deadline = time.monotonic() + 20
    reasons: list[str] = []
    while time.monotonic() < deadline:
        reasons = [w.refresh().data.get("pending_reason") or "" for w in waiting]
        if all(reasons):
            break
        time.sleep(0.2)
    assert all(reasons), reasons
    assert any("behind" in r for r in reasons), reasons
    assert any("needs 1 node" in r or "free slot" in r for r in reasons), reasons
    listed = {j.id: j.data.get("pending_reason") for j in client.jobs(state="queued", limit=1000)}
    assert listed[waiting[-1].id]
    blocker.wait(timeout=60)
    from trainyard.client import SpecRejected

    with pytest.raises(SpecRejected) as refused:
        client.submit({"name": "too-big", "pool": pool, "nodes": 2, "command": "true"})
    assert "can never run" in refused.value.problems[0]["reason"]
    assert "pool" in refused.value.problems[0]["reason"]
