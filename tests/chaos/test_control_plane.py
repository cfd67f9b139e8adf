"""The control plane fails: the leader scheduler is killed, Redis restarts or loses every key."""

from __future__ import annotations

import random
import subprocess
import time
from typing import Any

import pytest
import redis

from tests.chaos.conftest import wait_until
from tests.services import private_redis

pytestmark = pytest.mark.chaos


def _leader_pid(cluster: Any, redis_url: str) -> int:
    """The pid of the scheduler holding the lease (its log names its identity)."""
    from trainyard import transport

    identity = redis.Redis.from_url(redis_url).get(transport.SCHEDULER_LEASE_KEY)
    assert identity is not None
    for name, process in cluster.processes:
        if name.startswith("scheduler") and process.poll() is None:
            log = (cluster.home / "logs" / f"{name}.log").read_text()
            if f"scheduler {identity.decode()} leads" in log:
                return int(process.pid)
    raise AssertionError("no live scheduler holds the lease")


def test_killing_the_leader_scheduler_loses_and_double_dispatches_nothing(chaos_cluster: dict[str, Any]) -> None:
    cluster, client, ledger, db, redis_url = (
        chaos_cluster[k] for k in ("cluster", "client", "ledger", "db", "redis_url")
    )
    cluster.add_scheduler("scheduler-2")
    rng = random.Random(7)
    jobs = client.submit_many(
        [{"name": f"s{i}", "command": ledger.wrap("sleep 0.2"), "max_retries": 0} for i in range(500)]
    )
    ids = [j.id for j in jobs]
    for kill in range(3):
        time.sleep(rng.uniform(0.5, 3.0))
        wait_until(lambda: _has_leader(cluster, redis_url), 20, "a leader")
        pid = _leader_pid(cluster, redis_url)
        subprocess.run(["kill", "-9", str(pid)], check=True)
        cluster.add_scheduler(f"scheduler-{kill + 3}")
    wait_until(lambda: db.all_terminal(ids), 240, "every job to end")
    states = db.states(ids)
    done = ledger.done_counts()
    assert [j for j in ids if states[j] != "succeeded"] == []
    assert [j for j in ids if done[j] != 1] == []
    # Exactly one attempt each: nobody dispatched a job twice.
    from sqlalchemy import func, select

    from trainyard.db.models import Attempt

    with db.sessions() as session:
        counts = dict(session.execute(select(Attempt.job_id, func.count()).group_by(Attempt.job_id)).tuples().all())
    assert all(counts[j] == 1 for j in ids)


def _has_leader(cluster: Any, redis_url: str) -> bool:
    try:
        _leader_pid(cluster, redis_url)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("mode", ["restart", "wipe"])
def test_redis_restart_or_wipe_mid_run_loses_no_job(chaos_cluster: dict[str, Any], mode: str) -> None:
    client, ledger, db = (chaos_cluster[k] for k in ("client", "ledger", "db"))
    jobs = client.submit_many(
        [{"name": f"r{i}", "command": ledger.wrap("sleep 3"), "max_retries": 0} for i in range(80)]
    )
    ids = [j.id for j in jobs]
    wait_until(lambda: sum(s == "running" for s in db.states(ids).values()) >= 20, 60, "jobs running")
    if mode == "wipe":
        redis.Redis.from_url(chaos_cluster["redis_url"]).flushall()
        more = client.submit_many(
            [{"name": f"after{i}", "command": ledger.wrap("true"), "max_retries": 0} for i in range(20)]
        )
        ids += [j.id for j in more]
    else:
        redis.Redis.from_url(chaos_cluster["redis_url"]).shutdown(nosave=True)
        time.sleep(3)
        with private_redis(chaos_cluster["redis_dir"], appendonly=True, port=chaos_cluster["redis_port"]):
            wait_until(lambda: db.all_terminal(ids), 180, "every job to end after the restart")
    wait_until(lambda: db.all_terminal(ids), 180, "every job to end")
    states = db.states(ids)
    done = ledger.done_counts()
    assert [j for j in ids if states[j] != "succeeded"] == []
    assert [j for j in ids if done[j] != 1] == []


def test_a_job_longer_than_the_visibility_timeout_runs_exactly_once(tmp_path: Any) -> None:
    from tests.chaos.conftest import ClusterDb, Ledger
    from trainyard.client import Client
    from trainyard.up import start_cluster

    with private_redis(tmp_path / "redis") as (redis_url, _port):
        cluster = start_cluster(
            workers=2,
            slots=2,
            home=tmp_path / "home",
            extra_env={
                "TRAINYARD_REDIS_URL": redis_url,
                "TRAINYARD_BROKER_VISIBILITY_TIMEOUT_S": "20",
                "TRAINYARD_DATABASE_URL": "",
                "TRAINYARD_ADMIN_TOKEN": "",
                "TRAINYARD_SECRET_KEY": "",
            },
        )
        try:
            ledger = Ledger(tmp_path / "ledger.txt")
            db = ClusterDb(f"sqlite:///{tmp_path / 'home' / 'trainyard.db'}")
            with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
                job = client.submit({"name": "long", "command": ledger.wrap("sleep 45"), "max_retries": 0})
                assert job.wait(timeout=120) == "succeeded"
                time.sleep(25)  # a redelivery, if any, would start within another visibility timeout
            assert ledger.done_counts()[job.id] == 1
            starts = [ln for ln in ledger.path.read_text().splitlines() if ln.endswith("start")]
            assert len(starts) == 1
            assert len(db.attempts(job.id)) == 1
        finally:
            cluster.stop()


def test_sigterm_to_the_whole_cluster_stops_every_process(chaos_cluster: dict[str, Any]) -> None:
    cluster = chaos_cluster["cluster"]
    pids = [p.pid for _, p in cluster.processes]
    cluster.stop()
    assert all(p.poll() is not None for _, p in cluster.processes), pids
