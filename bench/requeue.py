"""Requeue after node loss: kill -9 a node running a job → the job runs again elsewhere (p50/p99).

Beside it, in the same run, Celery's own answer to the same fault: an `acks_late` task on the
same Redis whose worker is killed is delivered again only after the broker's visibility
timeout and its restore sweep. trainyard detects the loss by heartbeat (node_lost_after_s, 10 s
by default) and requeues at once; the goal is p99 ≤ 15 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import redis
from harness import REPO_ROOT, emit, note, percentile, private_cluster

from trainyard.client import Client

POLL_S = 0.05
BASELINE_VISIBILITY_TIMEOUT_S = 5


def _kill_node(cluster: object, node_id: str) -> None:
    worker = cluster.process(node_id)  # type: ignore[attr-defined]
    home = str(cluster.home)  # type: ignore[attr-defined]
    victims = [psutil.Process(worker.pid)]
    for proc in psutil.process_iter():
        try:
            if proc.pid != worker.pid and proc.cwd().startswith(f"{home}/nodes/{node_id}"):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in victims:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)


def _wait(predicate: object, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(POLL_S)
    raise TimeoutError(f"not within {timeout_s} s")


def measure_trainyard(kills: int) -> list[float]:
    samples: list[float] = []
    with private_cluster(workers=3, slots=2) as cluster, Client(cluster.api_url, cluster.admin_token) as client:
        addresses = {f"node-{i + 1}": f"127.0.0.{i + 2}" for i in range(3)}
        for round_number in range(kills):
            job = client.submit({"name": f"victim-{round_number}", "command": "sleep 600", "max_retries": 0})
            _wait(lambda j=job: j.refresh().state == "running", 60)
            node_id = job.data["attempts"][0]["nodes"][0]
            _kill_node(cluster, node_id)
            killed_at = time.monotonic()

            def rerunning(j=job) -> bool:  # type: ignore[no-untyped-def]
                attempts = j.refresh().data["attempts"]
                return len(attempts) > 1 and attempts[-1]["started_at"] is not None

            _wait(rerunning, 120)
            samples.append(time.monotonic() - killed_at)
            note(f"kill {round_number + 1}/{kills}: running again after {samples[-1]:.2f} s")
            client.cancel(job.id)
            cluster.add_worker(node_id, addresses[node_id], slots=2)
            time.sleep(1)
    return samples


def measure_celery(kills: int, redis_url: str, work_dir: Path) -> list[float]:
    """An acks_late task whose worker is killed: time until another worker starts it again."""
    samples: list[float] = []
    env = dict(
        os.environ,
        BENCH_REDIS_URL=redis_url,
        BENCH_VISIBILITY_TIMEOUT_S=str(BASELINE_VISIBILITY_TIMEOUT_S),
        PYTHONPATH=f"{REPO_ROOT / 'bench'}:{REPO_ROOT}",
    )
    client = redis.Redis.from_url(redis_url)
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import bare_celery

    app = bare_celery.make_app(redis_url)
    for round_number in range(kills):
        marker = work_dir / f"started-{uuid.uuid4().hex}"
        workers = [
            subprocess.Popen([sys.executable, "-m", "celery", "-A", "bare_celery", "worker", "-P", "threads", "-c", "1",
                              "-Q", bare_celery.QUEUE, "--without-mingle", "--without-gossip", "-n", f"w{i}@%h",
                              "--loglevel", "WARNING"], env=env, cwd=REPO_ROOT / "bench",
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(2)
        ]  # fmt: skip
        try:
            time.sleep(3)
            command = f"echo $$ >> {marker}; sleep 600"
            bare_celery.send(app, ["/bin/sh", "-c", command], str(work_dir / "out"), "bench:requeue:done")
            _wait(lambda m=marker: m.exists() and m.read_text().strip(), 60)
            first_pid = int(marker.read_text().split()[0])
            owner = psutil.Process(first_pid).parent()
            while owner is not None and owner.pid not in {w.pid for w in workers}:
                owner = owner.parent()
            assert owner is not None, "could not tell which worker runs the task"
            for proc in [owner, *owner.children(recursive=True)]:
                proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            _wait(lambda m=marker: len(m.read_text().split()) > 1, 600)
            samples.append(time.monotonic() - killed_at)
            note(f"celery kill {round_number + 1}/{kills}: redelivered after {samples[-1]:.1f} s")
        finally:
            for worker in workers:
                if worker.poll() is None:
                    for child in psutil.Process(worker.pid).children(recursive=True):
                        child.kill()
                    worker.kill()
            client.delete(bare_celery.QUEUE)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--celery-kills", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="5 kills, 1 baseline kill")
    args = parser.parse_args()
    kills, celery_kills = (
        (5, 1) if args.quick or os.environ.get("TRAINYARD_BENCH_QUICK") else (args.kills, args.celery_kills)
    )
    ours = measure_trainyard(kills)
    sys.path.insert(0, str(REPO_ROOT))
    import tempfile

    from tests.services import private_redis

    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as (redis_url, _port):
        theirs = measure_celery(celery_kills, redis_url, Path(tmp))
    baseline = percentile(theirs, 50)
    emit("requeue_p50", percentile(ours, 50), "s", "<= 15 s", baseline=baseline, samples=len(ours))
    emit(
        "requeue_p99",
        percentile(ours, 99),
        "s",
        "<= 15 s",
        baseline=percentile(theirs, 99),
        samples=len(ours),
        baseline_samples=len(theirs),
        baseline_what=f"Celery acks_late redelivery, visibility_timeout={BASELINE_VISIBILITY_TIMEOUT_S}s",
    )


if __name__ == "__main__":
    main()
