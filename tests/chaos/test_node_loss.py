"""Nodes die (kill -9) or freeze (SIGSTOP): jobs are requeued, gangs rerun whole, zombies fenced."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest

from tests.chaos.conftest import kill_node, signal_node, wait_until

pytestmark = pytest.mark.chaos

JOBS = 120
ROUNDS = 3


def _parts_on(db: Any, node_id: str, ids: list[str]) -> dict[str, int]:
    """Jobs whose current attempt has a part on the node: job id → attempt number."""
    from sqlalchemy import select

    from trainyard.db.models import Job, Part

    with db.sessions() as session:
        rows = session.execute(
            select(Part.job_id, Part.attempt)
            .join(Job, (Job.id == Part.job_id) & (Job.attempt == Part.attempt))
            .where(Part.node_id == node_id, Part.active.is_(True), Part.job_id.in_(ids))
        ).tuples()
        return dict(rows.all())


def test_killing_worker_nodes_during_a_hundred_running_jobs_loses_and_duplicates_nothing(
    chaos_cluster: dict[str, Any],
) -> None:
    cluster, client, ledger, db = (chaos_cluster[k] for k in ("cluster", "client", "ledger", "db"))
    jobs = client.submit_many(
        [{"name": f"c{i}", "command": ledger.wrap("sleep 12"), "max_retries": 0} for i in range(JOBS)]
    )
    ids = [j.id for j in jobs]
    wait_until(lambda: sum(s == "running" for s in db.states(ids).values()) >= 100, 60, "100 jobs running")
    rerun_delays: list[float] = []
    addresses = {f"node-{i + 1}": f"127.0.0.{i + 2}" for i in range(3)}
    for round_number in range(ROUNDS):
        # Kill the busiest node: the one running the most of these jobs now.
        load = {n: len(_parts_on(db, n, ids)) for n in addresses}
        node_id = max(load, key=lambda n: load[n])
        affected = _parts_on(db, node_id, ids)
        assert affected, f"round {round_number}: no job runs on any node ({load})"
        killed_at = time.monotonic()
        kill_node(cluster, node_id)
        # Every affected job must run again (a later attempt running or done) within 30 s.
        pending = dict(affected)
        while pending and time.monotonic() - killed_at < 30:
            for job_id, attempt in list(pending.items()):
                later = [a for a in db.attempts(job_id) if a.number > attempt and a.started_at is not None]
                if later:
                    rerun_delays.append(time.monotonic() - killed_at)
                    del pending[job_id]
            time.sleep(0.2)
        assert not pending, f"{len(pending)} jobs not running again 30 s after {node_id} was killed"
        cluster.add_worker(node_id, addresses[node_id], slots=64)
    wait_until(lambda: db.all_terminal(ids), 180, "every job to end")
    states = db.states(ids)
    done = ledger.done_counts()
    lost = [j for j in ids if states[j] != "succeeded"]
    duplicated = [j for j in ids if done[j] > 1]
    recovered = [j for j in ids if len(db.attempts(j)) > 1]
    assert lost == [] and duplicated == [], (lost, duplicated)
    assert all(done[j] == 1 for j in ids)
    assert recovered, "no job was affected by the kills"
    assert max(rerun_delays) < 30


def test_losing_one_node_of_a_gang_tears_down_and_reruns_the_whole_gang(chaos_cluster: dict[str, Any]) -> None:
    cluster, client = chaos_cluster["cluster"], chaos_cluster["client"]
    job = client.submit(
        {
            "name": "gang",
            "nodes": 2,
            "max_retries": 0,
            "command": 'if [ "$TRAINYARD_ATTEMPT" = 1 ]; then sleep 120; fi; echo ok',
        }
    )
    wait_until(
        lambda: (
            job.refresh().state == "running"
            and len(job.data["attempts"][0]["nodes"]) == 2
            and all(c is None for c in job.data["attempts"][0]["exit_codes"])
        ),
        60,
        "the gang to run",
    )
    victim, survivor = job.data["attempts"][0]["nodes"]
    kill_node(cluster, victim)
    assert job.wait(timeout=60) == "succeeded"
    first, second = job.data["attempts"][:2]
    assert first["reason"] == "node_lost" and second["state"] == "succeeded"
    assert len(second["nodes"]) == 2 and victim not in second["nodes"]
    assert job.data["attempt"] == 2
    # Nothing of attempt 1 is left on the surviving node.
    leftovers = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if env.get("TRAINYARD_JOB_ID") == job.id and env.get("TRAINYARD_ATTEMPT") == "1":
            leftovers.append(proc)
    assert leftovers == [], f"attempt 1 still runs on {survivor}: {leftovers}"


def test_a_frozen_node_that_wakes_up_is_fenced_off(chaos_cluster: dict[str, Any]) -> None:
    cluster, client, ledger, db = (chaos_cluster[k] for k in ("cluster", "client", "ledger", "db"))
    job = client.submit({"name": "frozen", "max_retries": 0, "command": ledger.wrap("sleep 8")})
    wait_until(lambda: job.refresh().state == "running", 60, "the job to run")
    node_id = job.data["attempts"][0]["nodes"][0]
    paused = signal_node(cluster, node_id, signal.SIGSTOP)
    try:
        # The node is declared lost, the job reruns elsewhere and finishes there.
        assert job.wait(timeout=90) == "succeeded"
        assert job.data["attempt"] == 2
        assert job.data["attempts"][0]["reason"] == "node_lost"
        assert job.data["attempts"][1]["nodes"][0] != node_id
    finally:
        for proc in paused:
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                continue
    # Awake again: its late report for attempt 1 is rejected and counted, its processes killed.
    wait_until(lambda: bool(db.events("stale_rejected", job.id)), 60, "the stale exit to be rejected")

    def attempt_one_gone() -> bool:
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if env.get("TRAINYARD_JOB_ID") == job.id and env.get("TRAINYARD_ATTEMPT") == "1":
                return False
        return True

    wait_until(attempt_one_gone, 30, "attempt 1's processes to be gone")
    final = job.refresh().data
    assert (final["state"], final["attempt"], final["exit_code"]) == ("succeeded", 2, 0)
    assert final["attempts"][1]["state"] == "succeeded"
