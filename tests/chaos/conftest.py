"""Chaos fixtures: clusters whose processes the tests kill, pause and restart, and a job ledger."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from tests.services import private_redis
from trainyard.client import Client
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.db.models import Attempt, Event, Job
from trainyard.up import Cluster, start_cluster

NODE_LOST_AFTER_S = "6"


class Ledger:
    """A file every chaos job appends to: `<job> <attempt> start|done`; proof of what ran."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()

    def wrap(self, body: str) -> str:
        line = '"$TRAINYARD_JOB_ID $TRAINYARD_ATTEMPT'
        return f'echo {line} start" >> {self.path}; {body}; echo {line} done" >> {self.path}'

    def done_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "done":
                counts[parts[0]] += 1
        return counts


def node_processes(cluster: Cluster, node_id: str) -> list[psutil.Process]:
    """The worker process of a node and every job process running in its work directory."""
    worker = cluster.process(node_id)
    found = [psutil.Process(worker.pid)]
    work_dir = str(cluster.home / "nodes" / node_id)
    for proc in psutil.process_iter():
        try:
            if proc.pid != worker.pid and proc.cwd().startswith(work_dir):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_node(cluster: Cluster, node_id: str) -> None:
    """kill -9 the node: its worker and its jobs at once (a machine dying)."""
    procs = node_processes(cluster, node_id)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def signal_node(cluster: Cluster, node_id: str, sig: signal.Signals) -> list[psutil.Process]:
    procs = node_processes(cluster, node_id)
    for proc in procs:
        proc.send_signal(sig)
    return procs


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class ClusterDb:
    """Read the cluster's database directly: the system of record is what the tests judge."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)

    def __enter__(self) -> ClusterDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def states(self, ids: list[str]) -> dict[str, str]:
        with self.sessions() as session:
            return dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(ids))).tuples().all())

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.sessions() as session:
            return list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))

    def events(self, kind: str, job_id: str | None = None) -> list[Event]:
        with self.sessions() as session:
            query = select(Event).where(Event.kind == kind)
            if job_id:
                query = query.where(Event.job_id == job_id)
            return list(session.scalars(query))

    def all_terminal(self, ids: list[str]) -> bool:
        return all(s in ("succeeded", "failed", "cancelled") for s in self.states(ids).values())


@pytest.fixture
def chaos_cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three nodes with room to spare, a private persistent Redis, quick node-loss detection."""
    with started_chaos_cluster(tmp_path) as started:
        yield started


@contextlib.contextmanager
def started_chaos_cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The chaos cluster under `tmp_path`, for a fixture of any scope (a module's may share one)."""
    with (
        private_redis(tmp_path / "redis", appendonly=True) as (redis_url, port),
        contextlib.ExitStack() as restarted,  # Redis started again by a test: stopped after the cluster
    ):
        home = tmp_path / "home"

        def restart_redis() -> None:
            """Start the cluster's Redis again, on its port and its data (once the test stopped it)."""
            restarted.enter_context(private_redis(tmp_path / "redis", appendonly=True, port=port))

        cluster = start_cluster(
            workers=3,
            slots=64,
            home=home,
            extra_env={
                "TRAINYARD_REDIS_URL": redis_url,
                "TRAINYARD_NODE_LOST_AFTER_S": NODE_LOST_AFTER_S,
                "TRAINYARD_DATABASE_URL": "",
                "TRAINYARD_ADMIN_TOKEN": "",
                "TRAINYARD_SECRET_KEY": "",
            },
        )
        try:
            with (
                Client(api_url=cluster.api_url, token=cluster.admin_token) as client,
                ClusterDb(f"sqlite:///{home / 'trainyard.db'}") as db,
            ):
                wait_until(lambda: sum(n["state"] == "up" for n in client.nodes()) == 3, 60, "3 nodes up")
                yield {
                    "cluster": cluster,
                    "client": client,
                    "redis_url": redis_url,
                    "redis_port": port,
                    "redis_dir": tmp_path / "redis",
                    "restart_redis": restart_redis,
                    "ledger": Ledger(tmp_path / "ledger.txt"),
                    "db": db,
                }
        finally:
            cluster.stop()
            # Anything a test paused must not outlive it.
            for proc in psutil.process_iter():
                try:
                    if proc.environ().get("TRAINYARD_HOME") == str(home) or proc.cwd().startswith(str(home)):
                        proc.send_signal(signal.SIGCONT)
                        proc.kill()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
    os.environ.pop("TRAINYARD_BROKER_VISIBILITY_TIMEOUT_S", None)
