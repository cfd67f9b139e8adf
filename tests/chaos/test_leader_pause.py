"""A paused leader: SIGSTOP the leading scheduler past its lease, again and again, while GPU jobs run.

Two schedulers, four nodes with one GPU each, 200 one-GPU jobs of 0.3-1.2 s with no retries.
The leader is stopped for 7-10 s (its lease is 6 s) up to eight times, then continued. The other
scheduler takes over; the resumed one must commit nothing as it was. Judged from the jobs' own
ledger and the database: every job ran exactly once, no two attempts of a job overlapped, no GPU
of a node was held by two jobs at once, and no node that kept heartbeating was called lost.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select

from tests.chaos.conftest import ClusterDb, wait_until
from tests.services import private_postgres_database, private_redis
from trainyard.client import Client
from trainyard.db.models import Attempt, Event
from trainyard.scheduler.lease import current_leader
from trainyard.up import Cluster, start_cluster

pytestmark = pytest.mark.chaos

JOBS = 200
NODES = 4
PAUSES = 8


class TimedLedger:
    """Each job appends `<job> <attempt> <node address> <gpus> start|done <epoch s>` to one file."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()

    def wrap(self, body: str) -> str:
        line = '"$TRAINYARD_JOB_ID $TRAINYARD_ATTEMPT $TRAINYARD_NODE_HOSTS ${CUDA_VISIBLE_DEVICES:-none}'
        return (f'echo {line} start $(date +%s.%N)" >> {self.path}; {body}; '
                f'echo {line} done $(date +%s.%N)" >> {self.path}')  # fmt: skip

    def runs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(job, attempt) → {node, gpus, start, done}."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue
            job, attempt, node, gpus, what, at = parts
            entry = found.setdefault((job, attempt), {"node": node, "gpus": gpus})
            entry[what] = float(at)
        return found


@pytest.fixture(params=["sqlite", "postgresql"])
def paused_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with private_redis(tmp_path / "redis") as (redis_url, _port), _database(request.param, tmp_path) as db_url:
        home = tmp_path / "home"
        cluster = start_cluster(
            workers=0,
            home=home,
            extra_env={
                "TRAINYARD_REDIS_URL": redis_url,
                "TRAINYARD_DATABASE_URL": db_url,
                "TRAINYARD_NODE_LOST_AFTER_S": "6",
                "TRAINYARD_SCHEDULER_LEASE_S": "6",
                "TRAINYARD_ADMIN_TOKEN": "",
                "TRAINYARD_SECRET_KEY": "",
            },
        )
        try:
            cluster.add_scheduler("scheduler-2")
            for index in range(NODES):
                cluster.add_worker(f"gpu-{index}", f"127.0.0.{40 + index}", slots=4, gpus=1)
            with Client(api_url=cluster.api_url, token=cluster.admin_token) as client, ClusterDb(db_url) as db:
                wait_until(lambda: sum(n["state"] == "up" for n in client.nodes()) == NODES, 60, "4 nodes up")
                yield {"cluster": cluster, "client": client, "db": db,
                       "ledger": TimedLedger(tmp_path / "ledger.txt")}  # fmt: skip
        finally:
            for _, process in cluster.processes:  # nothing stays stopped
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(process.pid).send_signal(signal.SIGCONT)
            cluster.stop()


class _database:
    def __init__(self, backend: str, tmp_path: Path):
        self.backend, self.tmp_path = backend, tmp_path

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            self._pg = None
            return f"sqlite:///{self.tmp_path / 'home' / 'trainyard.db'}"
        self._pg = private_postgres_database()
        return self._pg.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.__exit__(*exc)


def _leader_process(cluster: Cluster, db: ClusterDb) -> psutil.Process | None:
    with db.sessions() as session:
        leader = current_leader(session)
    if leader is None:
        return None
    identity, epoch = leader
    for name, process in cluster.processes:
        if name.startswith("scheduler") and process.poll() is None:
            log = (cluster.home / "logs" / f"{name}.log").read_text()
            if f"scheduler {identity} leads (epoch {epoch})" in log:
                return psutil.Process(process.pid)
    return None


def test_a_leader_paused_past_its_lease_runs_no_job_twice(paused_cluster: dict[str, Any]) -> None:
    cluster, client, db, ledger = (paused_cluster[k] for k in ("cluster", "client", "db", "ledger"))
    rng = random.Random(12)
    specs = [
        {"name": f"g{i}", "command": ledger.wrap(f"sleep {rng.uniform(0.3, 1.2):.2f}"), "max_retries": 0,
         "resources": {"gpus": 1}}
        for i in range(JOBS)
    ]  # fmt: skip
    ids = [job.id for job in client.submit_many(specs)]
    pauses = 0
    while pauses < PAUSES and not db.all_terminal(ids):
        wait_until(lambda: _leader_process(cluster, db) is not None, 30, "a leader")
        leader = _leader_process(cluster, db)
        assert leader is not None
        time.sleep(rng.uniform(0.5, 2.0))
        leader.send_signal(signal.SIGSTOP)
        time.sleep(rng.uniform(7.0, 10.0))
        leader.send_signal(signal.SIGCONT)
        pauses += 1
    assert pauses >= 3, "the jobs ended before the leader could be paused a few times"
    wait_until(lambda: db.all_terminal(ids), 240, "every job to end")
    with db.sessions() as session:
        leader = current_leader(session)
    # Each pause outlived the lease: leadership changed hands (a new epoch) at least that often.
    assert leader is not None and leader[1] > pauses, (leader, pauses)

    states = db.states(ids)
    assert [j for j in ids if states[j] != "succeeded"] == []
    with db.sessions() as session:
        attempts = dict(session.execute(
            select(Attempt.job_id, func.count()).where(Attempt.job_id.in_(ids)).group_by(Attempt.job_id)
        ).tuples().all())  # fmt: skip
        lost = list(session.scalars(select(Event).where(Event.kind.in_(("node_lost", "requeued")))))
    assert [(e.kind, e.node_id, e.job_id, e.detail) for e in lost] == [], "no node stopped heartbeating"
    assert [j for j in ids if attempts.get(j) != 1] == [], "exactly one attempt per job"

    runs = ledger.runs()
    ran = defaultdict(list)
    for (job, _attempt), run in runs.items():
        ran[job].append(run)
    assert sorted(ran) == sorted(ids)
    assert [j for j in ids if len(ran[j]) != 1 or "done" not in ran[j][0]] == [], "each job ran once, to its end"
    # No GPU of a node held by two jobs at the same time.
    by_gpu: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for run in runs.values():
        assert run["gpus"] != "none"
        by_gpu[(run["node"], run["gpus"])].append((run["start"], run["done"]))
    for key, spans in by_gpu.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"GPU {key} given to two jobs at once"
