"""The control plane fails: the leader scheduler is killed, Redis restarts or loses every key."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.chaos.conftest import wait_until
from tests.services import private_redis

pytestmark = pytest.mark.chaos


def _leader_pid(cluster: Any, db: Any) -> int:
    """The pid of the scheduler holding the lease in the database (its log names its identity)."""
    from trainyard.scheduler.lease import current_leader

    with db.sessions() as session:
        leader = current_leader(session)
    assert leader is not None
    identity, epoch = leader
    for name, process in cluster.processes:
        if name.startswith("scheduler") and process.poll() is None:
            log = (cluster.home / "logs" / f"{name}.log").read_text()
            if f"scheduler {identity} leads (epoch {epoch})" in log:
                return int(process.pid)
    raise AssertionError("no live scheduler holds the lease")


def test_killing_the_leader_scheduler_loses_and_double_dispatches_nothing(chaos_cluster: dict[str, Any]) -> None:
    cluster, client, ledger, db = (chaos_cluster[k] for k in ("cluster", "client", "ledger", "db"))
    cluster.add_scheduler("scheduler-2")
    rng = random.Random(7)
    jobs = client.submit_many(
        [{"name": f"s{i}", "command": ledger.wrap("sleep 0.2"), "max_retries": 0} for i in range(500)]
    )
    ids = [j.id for j in jobs]
    for kill in range(3):
        time.sleep(rng.uniform(0.5, 3.0))
        wait_until(lambda: _has_leader(cluster, db), 20, "a leader")
        pid = _leader_pid(cluster, db)
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


def _has_leader(cluster: Any, db: Any) -> bool:
    try:
        _leader_pid(cluster, db)
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
        chaos_cluster["restart_redis"]()  # up until the cluster has stopped
        wait_until(lambda: db.all_terminal(ids), 180, "every job to end after the restart")
    wait_until(lambda: db.all_terminal(ids), 180, "every job to end")
    states = db.states(ids)
    done = ledger.done_counts()
    assert [j for j in ids if states[j] != "succeeded"] == []
    assert [j for j in ids if done[j] != 1] == []


VISIBILITY_TIMEOUT_S = 2


def test_a_job_longer_than_the_visibility_timeout_runs_exactly_once(tmp_path: Path) -> None:
    """The broker's visibility timeout is never what redelivers a part (SPEC §2 invariant 7).

    Kombu redelivers a message only while it sits in its `unacked` set and only when a worker's
    periodic sweep (about every 100 s) finds it older than the timeout. So the test looks at that
    set while the part runs, well past a short timeout, then runs kombu's own sweep at once.
    """
    from tests.chaos.conftest import ClusterDb, Ledger
    from trainyard.client import Client
    from trainyard.transport import make_celery
    from trainyard.up import start_cluster

    with private_redis(tmp_path / "redis") as (redis_url, _port):
        cluster = start_cluster(
            workers=1,
            slots=2,
            home=tmp_path / "home",
            extra_env={
                "TRAINYARD_REDIS_URL": redis_url,
                "TRAINYARD_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
                "TRAINYARD_DATABASE_URL": "",
                "TRAINYARD_ADMIN_TOKEN": "",
                "TRAINYARD_SECRET_KEY": "",
            },
        )
        try:
            ledger = Ledger(tmp_path / "ledger.txt")
            broker = redis.Redis.from_url(redis_url)
            with (
                Client(api_url=cluster.api_url, token=cluster.admin_token) as client,
                ClusterDb(f"sqlite:///{tmp_path / 'home' / 'trainyard.db'}") as db,
                broker,
            ):
                job = client.submit({"name": "long", "command": ledger.wrap("sleep 15"), "max_retries": 0})
                wait_until(lambda: "start" in ledger.path.read_text(), 60, "the job to start")
                time.sleep(3 * VISIBILITY_TIMEOUT_S)
                with make_celery(redis_url, task_events=False).connection_for_read() as connection:
                    channel: Any = connection.default_channel
                    # The running part's message is acknowledged: nothing waits on the timeout.
                    assert broker.hlen(channel.unacked_key) == 0
                    assert broker.zcard(channel.unacked_index_key) == 0
                    assert broker.llen("node.node-1") == 0
                    # What a worker's periodic sweep would do, now: restore whatever is past the timeout.
                    channel.qos.restore_visible(num=None, interval=1)
                    assert broker.llen("node.node-1") == 0
                assert job.wait(timeout=120) == "succeeded"
                time.sleep(3)  # an idle worker would have taken a restored message by now
                assert ledger.done_counts()[job.id] == 1
                starts = [ln for ln in ledger.path.read_text().splitlines() if ln.endswith("start")]
                assert len(starts) == 1
                assert len(db.attempts(job.id)) == 1
        finally:
            cluster.stop()


def _processes_of(home: Path) -> list[str]:
    """Every live process whose environment, command line or working directory names `home`."""
    marker, found = str(home).encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ, cmdline = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z" and (marker in environ or marker in cmdline or cwd.startswith(str(home))):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"{entry.name}: {command}")
    return found


def test_sigterm_to_trainyard_up_stops_every_process_it_started(tmp_path: Path) -> None:
    from trainyard.client import Client
    from trainyard.up import free_port

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "FLOWER_"))}
    env.update(TRAINYARD_HOME=str(home))  # its own embedded Redis and SQLite, under home
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "trainyard", "up", "--workers", "1", "--gpus", "0", "--port", str(free_port())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Ctrl-C stops it" in log_path.read_text() or up.poll() is not None, 90, "trainyard up")
        assert up.poll() is None, log_path.read_text()
        api_url, token = ((home / name).read_text().strip() for name in ("api-url", "admin-token"))
        with Client(api_url=api_url, token=token) as client:
            # The job's shell and its two sleeps are grandchildren of the worker; the job's own
            # environment drops TRAINYARD_*, so it carries home under a name of its own.
            job = client.submit(
                {
                    "name": "long",
                    "command": "sleep 301 & sleep 302; wait",
                    "env": {"UP_TEST_HOME": str(home)},
                    "max_retries": 0,
                }
            )
            wait_until(lambda: client.job(job.id).data["state"] == "running", 60, "the job to run")
        wait_until(
            lambda: len([p for p in _processes_of(home) if p.split(": ", 1)[1].startswith("sleep 30")]) == 2,
            30,
            "the job's two sleeps",
        )
        assert len(_processes_of(home)) >= 5, _processes_of(home)  # up, redis, api, scheduler, worker, job
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, log_path.read_text()
        left: list[str] = []

        def nothing_left() -> bool:
            left[:] = _processes_of(home)
            return not left

        with contextlib.suppress(AssertionError):
            wait_until(nothing_left, 30, "every process of the cluster to end")
        assert left == [], f"still running after trainyard up exited: {left}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for line in _processes_of(home):  # what a failed run left behind must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
