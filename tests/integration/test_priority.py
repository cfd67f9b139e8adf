"""Priority is an invariant: every freed slot goes to the highest-priority job waiting, states tell
the truth while jobs wait, and preemption lands the job that caused it (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.integration.conftest import PREEMPT_GRACE_S
from tests.integration.test_scheduling import _pool_with_nodes
from trainyard.client import Client, Job
from trainyard.up import Cluster

pytestmark = pytest.mark.integration


def _wait_state(job: Job, state: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while job.refresh().state != state:
        assert time.monotonic() < deadline, f"{job.id} is {job.state}, not {state}, after {timeout_s} s"
        time.sleep(0.1)


def _started_at(job: Job, attempt: int = 1) -> datetime:
    return datetime.fromisoformat(job.data["attempts"][attempt - 1]["started_at"])


def test_a_high_job_submitted_after_normals_takes_the_first_freed_slot(client: Client, cluster: Cluster) -> None:
    pool = _pool_with_nodes(client, cluster, "inv", 2, 2, 60)
    first = client.submit({"name": "ends-first", "pool": pool, "command": "sleep 4"})
    busy = [client.submit({"name": f"busy-{i}", "pool": pool, "command": "sleep 12"}) for i in range(3)]
    for job in [first, *busy]:
        _wait_state(job, "running", 30)
    normals = [client.submit({"name": f"normal-{i}", "pool": pool, "command": "sleep 1"}) for i in range(5)]
    time.sleep(1.0)  # the scheduler has seen the normals (and given them nothing: no slot is free)
    assert all(j.refresh().state == "queued" for j in normals)
    high = client.submit({"name": "high", "pool": pool, "priority": "high", "command": "true"})
    assert high.wait(timeout=60) == "succeeded"
    for job in normals:
        assert job.wait(timeout=90) == "succeeded"
    high_start = _started_at(high)
    assert all(high_start <= _started_at(j) for j in normals), (
        high_start, sorted(_started_at(j) for j in normals))  # fmt: skip
    for job in busy:
        job.wait(timeout=60)


def test_every_waiting_job_is_queued_with_a_reason_and_no_node_is_overcommitted(
    client: Client, cluster: Cluster
) -> None:
    pool = _pool_with_nodes(client, cluster, "busy", 3, 1, 70)
    running = [client.submit({"name": f"r{i}", "pool": pool, "command": "sleep 8"}) for i in range(3)]
    for job in running:
        _wait_state(job, "running", 30)
    waiting = [client.submit({"name": f"w{i}", "pool": pool, "command": "true"}) for i in range(3)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(w.refresh().data.get("pending_reason") for w in waiting):
            break
        time.sleep(0.2)
    for job in waiting:
        assert job.state == "queued", (job.id, job.state)
        assert job.data["pending_reason"], job.data
    reasons = [w.data["pending_reason"] for w in waiting]
    assert any(r.startswith(f"waiting for a free slot in pool {pool} (3 of 3 slots busy)") for r in reasons), reasons
    assert f"behind 1 job in the queue for pool {pool} (3 of 3 slots busy)" in reasons, reasons
    # While they wait, no node shows more slots used than it has (nothing is queued on a node).
    for _ in range(10):
        for node in client.nodes():
            if node["pool"] == pool:
                assert node["slots_used"] <= node["slots"], node
        time.sleep(0.2)
    for job in running + waiting:
        assert job.wait(timeout=90) == "succeeded"


def test_preemption_lands_the_high_job_within_the_grace_and_the_preempted_job_then_succeeds(
    client: Client, cluster: Cluster
) -> None:
    pool = _pool_with_nodes(client, cluster, "pre", 3, 1, 80)
    # Attempt 1 ignores SIGTERM (so only the SIGKILL after the grace ends it); attempt 2 succeeds.
    command = """if [ "$TRAINYARD_ATTEMPT" = 1 ]; then trap '' TERM; sleep 120; fi; echo resumed"""
    lows = [client.submit({"name": f"low-{i}", "pool": pool, "priority": "low", "preemptible": True,
                           "command": command}) for i in range(3)]  # fmt: skip
    for job in lows:
        _wait_state(job, "running", 30)
    high = client.submit({"name": "high", "pool": pool, "priority": "high", "command": "echo urgent"})
    assert high.wait(timeout=60) == "succeeded"
    high_start = _started_at(high)
    waited_s = (high_start - datetime.fromisoformat(high.data["submitted_at"])).total_seconds()
    assert PREEMPT_GRACE_S - 1 <= waited_s <= PREEMPT_GRACE_S + 5, waited_s  # SIGKILL after the grace, then at once
    # The victim's first attempt ended `preempted` (its second may not be placed yet: it queues behind).
    preempted = [j for j in lows if j.refresh().data["attempts"][0]["reason"] == "preempted"]
    assert len(preempted) == 1, [j.data["attempts"] for j in lows]
    victim = preempted[0]
    assert victim.wait(timeout=90) == "succeeded"
    first, _second = victim.data["attempts"][:2]
    assert first["reason"] == "preempted"
    assert victim.data["retries_used"] == 0
    assert high_start <= _started_at(victim, 2)
    assert victim.log_bytes(attempt=2) == b"resumed\n"
    # The high job ran where the victim was stopped (the room freed for it was held for it).
    assert high.data["attempts"][0]["nodes"] == first["nodes"]
    for job in lows:
        if job is not victim:
            client.cancel(job.id)
