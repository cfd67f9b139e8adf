"""End to end: short jobs through trainyard vs. a bare Celery runner, idle dispatch latency, log lag.

One run starts a private cluster (`trainyard up` with 2 worker nodes x K slots, embedded Redis,
SQLite) and, on the same Redis, bare Celery workers with the same total concurrency (2 worker
processes x K threads). It prints JSON lines (see harness.py):
- e2e_throughput: N `/bin/true` jobs, first submit → all terminal, jobs/s (median of alternating
  rounds); baseline = bare Celery, tasks sent with `send_task` in a loop.
- dispatch_latency_p50/p99: idle submit → the job's own process reads the clock (`date +%s.%N`).
- log_lag_p99: a job prints a timestamp every 100 ms; a reader follows its logs through the API.
- priority_inversions: every slot busy, then N jobs of mixed priorities queued; once slots free,
  the number of (higher, lower) pairs placed lower first (goal 0; the bare Celery FIFO baseline
  places them in arrival order, so its figure is the pairs the arrival order inverts).
- dispatch_with_5000_queued_s: every slot busy, 5,000 low jobs queued, one high job; seconds from
  the moment a slot frees (the ending job's own clock) to the high job's process start (goal <= 2 s).
- cpu_ms_per_job: CPU time (user + system, the process itself; its jobs' own processes not counted)
  each service spent per job during the throughput rounds: trainyard's api, scheduler, nodes and
  Redis, and the bare Celery workers and Redis during theirs. On a shared machine wall-clock jobs/s
  move with the neighbours' load; CPU per job does not, so it says where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bare_celery
import psutil
import redis
from harness import REPO_ROOT, TERMINAL_STATES, JobCounter, emit, note, percentile, private_cluster

from trainyard.client import Client

POLL_S = 0.01
IDLE_GAP_S = 0.1
DATE_ARGV = ["/bin/date", "+%s.%N"]
LOG_LINE_PERIOD_S = 0.1


@dataclass(frozen=True)
class Options:
    jobs: int
    workers: int
    slots: int
    latency_samples: int
    log_seconds: float
    rounds: int
    priority_jobs: int = 400
    deep_queue: int = 5000


@dataclass(frozen=True)
class Throughput:
    jobs: int
    seconds: float
    submit_seconds: float
    failed: int

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds


def wait_until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def throughput_timeout_s(jobs: int) -> float:
    return max(120.0, jobs / 10)


class CpuMeter:
    """CPU seconds (user + system) of named processes, summed over measured intervals."""

    def __init__(self, processes: dict[str, int]):
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.seconds: dict[str, float] = dict.fromkeys(self.processes, 0.0)

    def _now(self) -> dict[str, float]:
        out = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                out[name] = 0.0
        return out

    @contextmanager
    def measuring(self) -> Iterator[None]:
        before = self._now()
        try:
            yield
        finally:
            after = self._now()
            for name in self.processes:
                self.seconds[name] += max(0.0, after[name] - before[name])

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        return {name: round(1000 * seconds / max(1, jobs), 2) for name, seconds in self.seconds.items()}


# -- trainyard ---------------------------------------------------------------------------------


class TrainyardRunner:
    """Submits through the SDK; sees progress in the cluster's database, read-only."""

    def __init__(self, cluster: Any):
        self.client = Client(api_url=cluster.api_url, token=cluster.admin_token)
        self.db = JobCounter(Path(cluster.home) / "trainyard.db").__enter__()

    def close(self) -> None:
        self.client.close()
        self.db.__exit__()

    def throughput(self, jobs: int, argv: list[str]) -> Throughput:
        experiment = f"bench-{uuid.uuid4().hex[:8]}"
        specs = [{"name": f"e2e-{i}", "command": argv, "experiment": experiment} for i in range(jobs)]
        start = time.perf_counter()
        self.client.submit_many(specs)
        submitted = time.perf_counter()
        wait_until(lambda: self.db.terminal(experiment) >= jobs, throughput_timeout_s(jobs), "trainyard jobs")
        elapsed = time.perf_counter() - start
        failed = jobs - self.db.count_state(experiment, "succeeded")
        return Throughput(jobs, elapsed, submitted - start, failed)

    def start_latency_s(self, index: int) -> float:
        """Submit one job reading the clock; seconds from before the submit call to its process start."""
        sent = time.time()
        spec = {"name": f"latency-{index}", "command": DATE_ARGV, "experiment": "bench-latency"}
        job = self.client.submit(spec)
        wait_until(lambda: self.db.job_state(job.id) in TERMINAL_STATES, 60, "latency job")
        return float(job.log_bytes().decode()) - sent

    def _placed_order(self, experiment: str) -> list[tuple[str, int]]:
        """(placement time, priority) of an experiment's jobs in the order they were placed (first attempt).

        Jobs placed by one pass share its time: they took slots that freed together.
        """
        assert self.db._conn is not None
        rows = self.db._conn.execute(
            "SELECT a.created_at, j.priority FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.number = 1 "
            "WHERE j.experiment = ? ORDER BY a.created_at, j.seq",
            (experiment,),
        ).fetchall()
        return [(str(placed_at), int(priority)) for placed_at, priority in rows]

    def _fill_slots(self, slots: int, command: list[str], experiment: str) -> list[Any]:
        blockers = self.client.submit_many(
            [{"name": f"blocker-{i}", "command": command, "experiment": experiment} for i in range(slots)]
        )
        wait_until(
            lambda: (
                self.db.scalar("SELECT count(*) FROM jobs WHERE experiment = ? AND state = 'running'", experiment)
                >= slots
            ),
            60,
            "blockers running",
        )
        return blockers

    def priority_inversions(self, slots: int, jobs: int, seed: int = 5) -> tuple[int, int, int]:
        """(inversions, inversions of arrival order, jobs): random priorities queued behind busy slots."""
        import random

        rng = random.Random(seed)
        experiment = f"bench-prio-{uuid.uuid4().hex[:8]}"
        self._fill_slots(slots, ["/bin/sleep", "2"], experiment + "-blockers")
        priorities = [rng.choice((250, 500, 750, rng.randint(0, 1000))) for _ in range(jobs)]
        self.client.submit_many(
            [
                {"name": f"p{i}", "command": ["/bin/true"], "priority": p, "experiment": experiment}
                for i, p in enumerate(priorities)
            ]
        )
        wait_until(lambda: self.db.terminal(experiment) >= jobs, throughput_timeout_s(jobs), "mixed-priority jobs")
        placed = count_inversions(self._placed_order(experiment))
        # A FIFO runner (bare Celery) places them in arrival order, one at a time.
        return placed, count_inversions([(str(i), p) for i, p in enumerate(priorities)]), len(priorities)

    def dispatch_with_queue_s(self, slots: int, queued: int) -> float:
        """Seconds from a slot freeing to a high job's start, with `queued` low jobs waiting."""
        experiment = f"bench-deep-{uuid.uuid4().hex[:8]}"
        long_jobs = self._fill_slots(slots - 1, ["/bin/sleep", "600"], experiment)
        ender = self.client.submit(
            {"name": "ender", "experiment": experiment, "command": ["/bin/sh", "-c", "sleep 6; date +%s.%N"]}
        )
        wait_until(lambda: ender.refresh().state == "running", 60, "the job that frees a slot")
        sweep = self.client.sweep(
            {"name": "low-{i}", "command": ["/bin/true"], "priority": "low", "experiment": experiment},
            grid={"i": list(range(queued))},
        )
        time.sleep(1.0)  # the scheduler has read the deep queue before the high job arrives
        high = self.client.submit({"name": "high", "command": DATE_ARGV, "priority": "high", "experiment": experiment})
        assert high.wait(timeout=120) == "succeeded"
        assert ender.wait(timeout=60) == "succeeded"
        freed = float(ender.log_bytes().decode())
        started = float(high.log_bytes().decode())
        self.client.cancel_sweep(sweep.id)
        for job in long_jobs:
            self.client.cancel(job.id)
        wait_until(lambda: self.db.terminal(experiment) >= queued + slots + 1, 600, "the deep queue to drain")
        return started - freed

    def log_lags_s(self, seconds: float) -> list[float]:
        """Follow a job printing a timestamp every 100 ms; lag of each line = read time - printed time."""
        lines = max(1, round(seconds / LOG_LINE_PERIOD_S))
        script = f"i=0; while [ $i -lt {lines} ]; do date +%s.%N; sleep {LOG_LINE_PERIOD_S}; i=$((i+1)); done"
        job = self.client.submit(
            {"name": "log-lag", "command": ["/bin/sh", "-c", script], "experiment": "bench-loglag"}
        )
        lags: list[float] = []
        pending = b""
        for chunk in job.log_chunks(follow=True):
            now = time.time()
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lags.extend(now - float(line) for line in complete if line.strip())
        if len(lags) < lines:
            note(f"log lag: read {len(lags)} of {lines} lines")
        return lags


def count_inversions(placed: list[tuple[str, int]]) -> int:
    """Pairs (a placed before b, in an earlier pass) where b has the higher priority: each is a slot
    given to a lower job while a higher one waited (every job was queued before the first slot
    freed). `placed` is (placement time, priority) in placement order; equal times are one pass."""
    from bisect import bisect_left, insort
    from itertools import groupby

    seen: list[int] = []
    count = 0
    for _, group in groupby(placed, key=lambda item: item[0]):
        batch = [priority for _, priority in group]
        count += sum(bisect_left(seen, priority) for priority in batch)  # earlier passes, strictly lower
        for priority in batch:
            insort(seen, priority)
    return count


# -- bare Celery -------------------------------------------------------------------------------


class BareCeleryRunner:
    """The baseline: `bench.bare_celery` workers on the same Redis, completion counted in Redis."""

    def __init__(self, redis_url: str, out_dir: Path):
        self.app = bare_celery.make_app(redis_url)
        self.redis = redis.Redis.from_url(redis_url)
        self.out_dir = out_dir

    def close(self) -> None:
        self.redis.close()

    def _run(self, count: int, argv: list[str], done_key: str) -> None:
        for i in range(count):
            bare_celery.send(self.app, argv, str(self.out_dir / f"{done_key}-{i}"), done_key)

    def _done(self, done_key: str) -> int:
        return int(self.redis.get(done_key) or 0)

    def throughput(self, jobs: int, argv: list[str]) -> Throughput:
        done_key = f"bench:bare:{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        self._run(jobs, argv, done_key)
        submitted = time.perf_counter()
        wait_until(lambda: self._done(done_key) >= jobs, throughput_timeout_s(jobs), "bare Celery tasks")
        elapsed = time.perf_counter() - start
        self.redis.delete(done_key)
        return Throughput(jobs, elapsed, submitted - start, 0)

    def start_latency_s(self, index: int) -> float:
        done_key = f"bench:bare-latency:{uuid.uuid4().hex[:8]}"
        sent = time.time()
        self._run(1, DATE_ARGV, done_key)
        wait_until(lambda: self._done(done_key) >= 1, 60, "bare latency task")
        self.redis.delete(done_key)
        return float((self.out_dir / f"{done_key}-0.out").read_text()) - sent


@contextmanager
def bare_workers(redis_url: str, workers: int, threads: int, log_dir: Path) -> Iterator[dict[str, int]]:
    """Start `workers` bare Celery worker processes (threads pool, `threads` each); stop them after.

    Yields their pids by name (bare1, bare2, ...)."""
    env = dict(os.environ, BENCH_REDIS_URL=redis_url)
    processes = []
    for index in range(workers):
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.bare_celery",
            "worker",
            "-P",
            "threads",
            "-c",
            str(threads),
            "-Q",
            bare_celery.QUEUE,
            "--prefetch-multiplier",
            "1",
            "-O",
            "fair",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "WARNING",
            "-n",
            f"bare{index + 1}@127.0.0.1",
        ]
        with (log_dir / f"bare{index + 1}.log").open("ab") as log:
            processes.append(
                subprocess.Popen(
                    args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            )
    try:
        yield {f"bare{index + 1}": process.pid for index, process in enumerate(processes)}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Results:
    ours: list[Throughput]
    bare: list[Throughput]
    ours_latency_ms: list[float]
    bare_latency_ms: list[float]
    log_lags_s: list[float]
    inversions: int = 0
    inversion_pairs_fifo: int = 0
    priority_jobs: int = 0
    deep_dispatch_s: float = float("nan")
    ours_cpu_ms: dict[str, float] = field(default_factory=dict)  # per job, per process
    bare_cpu_ms: dict[str, float] = field(default_factory=dict)


def warm_up(runner: TrainyardRunner | BareCeleryRunner, opts: Options) -> None:
    """Fill every slot twice so imports, connections and caches are warm before timing."""
    runner.throughput(2 * opts.workers * opts.slots, ["/bin/true"])


def throughput_rounds(
    ours: TrainyardRunner,
    bare: BareCeleryRunner,
    opts: Options,
    ours_cpu: CpuMeter | None = None,
    bare_cpu: CpuMeter | None = None,
) -> tuple[list[Throughput], list[Throughput]]:
    """Alternate the two runners so that load from elsewhere on the machine hits both alike."""
    ours_runs, bare_runs = [], []
    for round_index in range(opts.rounds):
        with ours_cpu.measuring() if ours_cpu else contextlib.nullcontext():
            ours_runs.append(ours.throughput(opts.jobs, ["/bin/true"]))
        with bare_cpu.measuring() if bare_cpu else contextlib.nullcontext():
            bare_runs.append(bare.throughput(opts.jobs, ["/bin/true"]))
        note(
            f"round {round_index + 1}: trainyard {ours_runs[-1].per_s:.0f} jobs/s, "
            f"bare Celery {bare_runs[-1].per_s:.0f} jobs/s"
        )
    return ours_runs, bare_runs


def latency_samples(ours: TrainyardRunner, bare: BareCeleryRunner, samples: int) -> tuple[list[float], list[float]]:
    """Sequential single submits on an idle system, alternating trainyard and bare Celery (ms)."""
    ours_ms, bare_ms = [], []
    for index in range(samples):
        ours_ms.append(ours.start_latency_s(index) * 1000)
        time.sleep(IDLE_GAP_S)
        bare_ms.append(bare.start_latency_s(index) * 1000)
        time.sleep(IDLE_GAP_S)
    return ours_ms, bare_ms


def median_per_s(runs: list[Throughput]) -> float:
    return statistics.median(run.per_s for run in runs)


def report(results: Results, opts: Options) -> None:
    ours, bare = results.ours, results.bare
    emit(
        "e2e_throughput",
        median_per_s(ours),
        "jobs/s",
        "ratio >= 0.8",
        baseline=median_per_s(bare),
        jobs=opts.jobs,
        workers=opts.workers,
        slots=opts.slots,
        rounds=opts.rounds,
        per_round=[round(run.per_s, 1) for run in ours],
        baseline_per_round=[round(run.per_s, 1) for run in bare],
        submit_seconds=[round(run.submit_seconds, 3) for run in ours],
        baseline_submit_seconds=[round(run.submit_seconds, 3) for run in bare],
        failed=sum(run.failed for run in ours),
    )
    for pct, goal in ((50, "<= 50 ms"), (99, "<= 250 ms")):
        emit(
            f"dispatch_latency_p{pct}",
            percentile(results.ours_latency_ms, pct),
            "ms",
            goal,
            baseline=percentile(results.bare_latency_ms, pct),
            samples=len(results.ours_latency_ms),
        )
    emit(
        "priority_inversions",
        results.inversions,
        "pairs",
        "0",
        baseline=results.inversion_pairs_fifo,
        jobs=results.priority_jobs,
        baseline_is="bare Celery's FIFO order (arrival order) on the same jobs",
    )
    emit("dispatch_with_5000_queued_s", results.deep_dispatch_s, "s", "<= 2 s", queued=opts.deep_queue)
    lags = results.log_lags_s
    if results.ours_cpu_ms:
        emit(
            "cpu_ms_per_job",
            sum(results.ours_cpu_ms.values()),
            "ms",
            "",  # where the time goes; the goal is the throughput ratio
            baseline=sum(results.bare_cpu_ms.values()) or None,
            per_process=results.ours_cpu_ms,
            baseline_per_process=results.bare_cpu_ms,
        )
    emit(
        "log_lag_p99",
        percentile(lags, 99),
        "s",
        "<= 2 s",
        p50_s=round(percentile(lags, 50), 3),
        max_s=round(max(lags, default=float("nan")), 3),
        lines=len(lags),
    )


def measure(cluster: Any, bare_dir: Path, opts: Options) -> Results:
    home = Path(cluster.home)
    redis_url = (home / "redis-url").read_text().strip()
    ours = TrainyardRunner(cluster)
    bare = BareCeleryRunner(redis_url, bare_dir)
    try:
        with bare_workers(redis_url, opts.workers, opts.slots, home / "logs") as bare_pids:
            note(f"up: {opts.workers} nodes x {opts.slots} slots, and as many bare Celery threads; warming up")
            warm_up(ours, opts)
            warm_up(bare, opts)
            services = {name: process.pid for name, process in cluster.processes}
            ours_cpu = CpuMeter(services)
            bare_cpu = CpuMeter({**bare_pids, **{k: v for k, v in services.items() if k == "redis"}})
            ours_runs, bare_runs = throughput_rounds(ours, bare, opts, ours_cpu, bare_cpu)
            jobs_timed = opts.jobs * opts.rounds
            note(f"CPU ms/job: trainyard {ours_cpu.ms_per_job(jobs_timed)}; bare {bare_cpu.ms_per_job(jobs_timed)}")
            note(f"idle latency: {opts.latency_samples} single submits each")
            ours_ms, bare_ms = latency_samples(ours, bare, opts.latency_samples)
            note(f"log lag: a job printing every {LOG_LINE_PERIOD_S} s for {opts.log_seconds:.0f} s")
            lags = ours.log_lags_s(opts.log_seconds)
            slots = opts.workers * opts.slots
            note(f"priority: {opts.priority_jobs} mixed-priority jobs behind {slots} busy slots")
            inversions, fifo, jobs = ours.priority_inversions(slots, opts.priority_jobs)
            note(f"deep queue: {opts.deep_queue:,} low jobs queued, one high job, a slot frees")
            deep_s = ours.dispatch_with_queue_s(slots, opts.deep_queue)
    finally:
        ours.close()
        bare.close()
    return Results(
        ours_runs, bare_runs, ours_ms, bare_ms, lags, inversions, fifo, jobs, deep_s,
        ours_cpu.ms_per_job(jobs_timed), bare_cpu.ms_per_job(jobs_timed),
    )  # fmt: skip


def run(opts: Options) -> None:
    with (
        private_cluster(opts.workers, opts.slots) as cluster,
        tempfile.TemporaryDirectory(prefix="bench-bare-") as bare_dir,
    ):
        results = measure(cluster, Path(bare_dir), opts)
    report(results, opts)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per throughput run (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (and bare worker processes)")
    parser.add_argument("--slots", type=int, default=4, help="slots per node (and threads per bare worker)")
    parser.add_argument("--latency-samples", type=int, default=None, help="sequential single submits (100)")
    parser.add_argument("--log-seconds", type=float, default=None, help="how long the log job prints (10)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating throughput rounds each (3)")
    parser.add_argument("--priority-jobs", type=int, default=None, help="mixed-priority jobs (400)")
    parser.add_argument("--deep-queue", type=int, default=None, help="low jobs queued for the dispatch figure (5000)")
    parser.add_argument("--quick", action="store_true", help="fewer jobs and samples: a smoke run")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("TRAINYARD_BENCH_QUICK") == "1"
    return Options(
        jobs=args.jobs or (200 if quick else 1000),
        workers=args.workers,
        slots=args.slots,
        latency_samples=args.latency_samples or (20 if quick else 100),
        log_seconds=args.log_seconds or (3.0 if quick else 10.0),
        rounds=args.rounds or (1 if quick else 3),
        priority_jobs=args.priority_jobs or (100 if quick else 400),
        deep_queue=args.deep_queue or (1000 if quick else 5000),
    )


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
