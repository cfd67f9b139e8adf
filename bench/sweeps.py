"""Sweeps and bulk submission at scale: 100k-point sweep acceptance, submit_many, job lists at 1M jobs.

One run starts a private cluster (`trainyard up`, no worker nodes, embedded Redis, SQLite) and,
if a PostgreSQL server answers, a second one on a database of its own. It prints JSON lines
(harness.py) and a table on stderr:
- sweep_accept_s: a 100,000-point grid sweep through the SDK (`client.sweep`), request → stored
  and committed; median of 3 (goal ≤ 2 s).
- sweep_accept_rate: the same as jobs/s; baseline: Celery `apply_async` of as many messages on
  the same Redis, no worker consuming (goal ratio ≥ 10).
- submit_many_rate: `client.submit_many` of 10,000 specs, jobs/s, median of 3 (goal ≥ 20,000).
- dag_accept_s: a 10,000-job DAG (chains of 10, each job `depends_on` the one before it by name)
  through `client.submit_many`, one call; baseline: 10,000 independent jobs, the same way, in the
  same round; median of 3 each, printed as a ratio (goal ≤ 2). `--dag-only` measures just this.
- job_list_p99_ms / sweep_show_p99_ms: pages of 100 jobs (no filter, state, experiment, sweep,
  sweep+state, a deep cursor) and the sweep object (counts over 100k jobs) once the database
  holds 1,000,000 jobs (SQLite only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from celery import Celery
from harness import FOREIGN_ENV, emit, note, percentile, private_cluster
from rich.console import Console
from rich.table import Table

from trainyard.client import Client

POSTGRES_ADMIN_URL = os.environ.get(
    "TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
LIST_SAMPLES = 20
CELERY_TASK_NAME = "bench.sweeps.noop"
LIST_VARIANTS = ("none", "state", "experiment", "sweep", "sweep+state", "deep cursor")


@dataclass(frozen=True)
class Options:
    points: int
    specs: int
    rounds: int
    fill_to: int
    postgres: bool
    dag_only: bool = False
    chain: int = 10


@dataclass
class Figures:
    backend: str
    sweep_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    # CPU seconds the API process spent on each call: a figure that other load on the machine
    # does not inflate (the wall-clock figures above are what a user sees).
    sweep_api_cpu_s: list[float] = field(default_factory=list)
    submit_api_cpu_s: list[float] = field(default_factory=list)
    dag_s: list[float] = field(default_factory=list)
    independent_s: list[float] = field(default_factory=list)  # the DAG's baseline, same rounds
    dag_api_cpu_s: list[float] = field(default_factory=list)
    independent_api_cpu_s: list[float] = field(default_factory=list)
    list_ms: dict[str, list[float]] = field(default_factory=dict)
    show_ms: list[float] = field(default_factory=list)
    total_jobs: int = 0


def grid_for(points: int) -> dict[str, list[Any]]:
    """A grid of `points` points: lr x batch x seed (seed takes what is left)."""
    lrs = [round(0.001 * (i + 1), 6) for i in range(100)]
    batches = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    seeds = list(range(max(1, points // (len(lrs) * len(batches)))))
    return {"lr": lrs, "batch": batches, "seed": seeds}


def accept_sweep(client: Client, points: int) -> tuple[float, Any]:
    template = {
        "name": "lr{lr}-b{batch}-s{seed}",
        "command": "python train.py --lr {lr} --batch {batch}",
        "env": {"SEED": "{seed}"},
        "experiment": f"bench-{uuid.uuid4().hex[:8]}",
    }
    start = time.perf_counter()
    sweep = client.sweep(template, grid=grid_for(points), max_concurrency=64)
    elapsed = time.perf_counter() - start
    assert sweep.total == points, sweep.total
    return elapsed, sweep


def submit_many(client: Client, count: int) -> float:
    experiment = f"bench-many-{uuid.uuid4().hex[:8]}"
    specs = [
        {"name": f"many-{i}", "command": ["python", "train.py", f"--i={i}"], "experiment": experiment}
        for i in range(count)
    ]
    start = time.perf_counter()
    jobs = client.submit_many(specs)
    elapsed = time.perf_counter() - start
    assert len(jobs) == count
    return elapsed


def submit_dag(client: Client, count: int, chain: int) -> float:
    """`count` jobs in chains of `chain`: each job after the first of its chain waits for the one before."""
    run = uuid.uuid4().hex[:8]
    specs: list[dict[str, Any]] = []
    for i in range(count):
        spec: dict[str, Any] = {"name": f"dag-{run}-{i}", "command": ["python", "train.py", f"--i={i}"],
                                "experiment": f"bench-dag-{run}"}  # fmt: skip
        if i % chain:
            spec["depends_on"] = [{"job": f"dag-{run}-{i - 1}"}]
        specs.append(spec)
    start = time.perf_counter()
    jobs = client.submit_many(specs)
    elapsed = time.perf_counter() - start
    assert len(jobs) == count
    return elapsed


def measure_dag(client: Client, api: psutil.Process, opts: Options, figures: Figures) -> None:
    """The DAG and its baseline alternate within each round, so that load on the machine hits both;
    the API's CPU seconds per call are kept too (other load does not inflate them)."""
    for round_index in range(opts.rounds):
        before = api_cpu_s(api)
        figures.independent_s.append(submit_many(client, opts.specs))
        middle = api_cpu_s(api)
        figures.dag_s.append(submit_dag(client, opts.specs, opts.chain))
        figures.independent_api_cpu_s.append(middle - before)
        figures.dag_api_cpu_s.append(api_cpu_s(api) - middle)
        note(
            f"{figures.backend} round {round_index + 1}: {opts.specs:,} independent jobs in "
            f"{figures.independent_s[-1]:.3f} s, a DAG of {opts.specs:,} (chains of {opts.chain}) in "
            f"{figures.dag_s[-1]:.3f} s"
        )


def celery_apply_async_rate(redis_url: str, count: int) -> float:
    """Messages/s of Celery's apply_async into a fresh queue on the same Redis (no consumer).

    The app has the settings of bench/bare_celery.py (JSON, acks_late, prefetch 1).
    """
    app = Celery("bench_sweeps", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    task = app.task(name=CELERY_TASK_NAME, ignore_result=True)(_noop)
    queue = f"bench.sweeps.{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    for i in range(count):
        task.apply_async(args=[["/bin/true"], f"/tmp/none-{i}", "bench:none"], queue=queue)
    elapsed = time.perf_counter() - start
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        client.delete(queue)
    return count / elapsed


def _noop(argv: list[str], out_prefix: str, done_key: str) -> None:
    """The baseline's task body (never run here: only its messages are timed)."""


def timed_ms(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def list_latencies(http: httpx.Client, sweep: Any) -> dict[str, list[float]]:
    """Page of 100 jobs per filter variant, LIST_SAMPLES times each (ms)."""
    deep = http.get("/v1/jobs", params={"limit": 1000}).json()["next_cursor"]
    params: dict[str, dict[str, Any]] = {
        "none": {}, "state": {"state": "queued"}, "experiment": {"experiment": sweep.experiment},
        "sweep": {"sweep": sweep.id}, "sweep+state": {"sweep": sweep.id, "state": "queued"},
        "deep cursor": {"cursor": deep},
    }  # fmt: skip
    found: dict[str, list[float]] = {name: [] for name in LIST_VARIANTS}
    for _ in range(LIST_SAMPLES):
        for name in LIST_VARIANTS:
            found[name].append(
                timed_ms(lambda p=params[name]: http.get("/v1/jobs", params={**p, "limit": 100}).raise_for_status())
            )
    return found


def api_cpu_s(api: psutil.Process) -> float:
    times = api.cpu_times()
    return float(times.user + times.system)


def measure(
    client: Client, api: psutil.Process, redis_url: str, opts: Options, backend: str, fill: bool
) -> tuple[Figures, float | None]:
    figures = Figures(backend)
    measure_dag(client, api, opts, figures)
    if opts.dag_only:
        return figures, None
    for round_index in range(opts.rounds):
        before = api_cpu_s(api)
        seconds, sweep = accept_sweep(client, opts.points)
        figures.sweep_s.append(seconds)
        middle = api_cpu_s(api)
        figures.submit_s.append(submit_many(client, opts.specs))
        figures.sweep_api_cpu_s.append(middle - before)
        figures.submit_api_cpu_s.append(api_cpu_s(api) - middle)
        note(
            f"{backend} round {round_index + 1}: sweep of {opts.points:,} in {seconds:.3f} s, "
            f"submit_many of {opts.specs:,} in {figures.submit_s[-1]:.3f} s"
        )
    figures.total_jobs = opts.rounds * (opts.points + opts.specs)
    baseline = None
    if not fill:
        return figures, baseline
    note(f"Celery apply_async of {opts.points:,} messages on the same Redis")
    baseline = celery_apply_async_rate(redis_url, opts.points)
    while figures.total_jobs < opts.fill_to:
        _, sweep = accept_sweep(client, opts.points)
        figures.total_jobs += opts.points
    note(f"{figures.total_jobs:,} jobs in the database; timing lists and sweep views")
    with httpx.Client(base_url=client.api_url, headers={"Authorization": f"Bearer {client.token}"}, timeout=60) as http:
        figures.list_ms = list_latencies(http, sweep)
        figures.show_ms = [
            timed_ms(lambda: http.get(f"/v1/sweeps/{sweep.id}").raise_for_status()) for _ in range(LIST_SAMPLES)
        ]
    return figures, baseline


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Any]:
    """A cluster like private_cluster's, on a PostgreSQL database of its own (dropped afterwards)."""
    import psycopg

    from trainyard.up import free_port, start_cluster

    name = f"trainyard_bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    saved = {key: os.environ.pop(key) for key in FOREIGN_ENV if key in os.environ}
    try:
        with tempfile.TemporaryDirectory(prefix="trainyard-bench-pg-") as home:
            cluster = start_cluster(
                workers=0,
                home=Path(home),
                port=free_port(),
                extra_env={"TRAINYARD_DATABASE_URL": url, "TRAINYARD_HOME": home},
            )
            try:
                yield cluster
            finally:
                cluster.stop()
    finally:
        os.environ.update(saved)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_backend(opts: Options, backend: str) -> tuple[Figures, float | None]:
    context = private_cluster(workers=0, slots=1) if backend == "sqlite" else postgres_cluster()
    with context as cluster, Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
        redis_url = (Path(cluster.home) / "redis-url").read_text().strip()
        api = psutil.Process(next(process.pid for name, process in cluster.processes if name == "api"))
        return measure(client, api, redis_url, opts, backend, fill=backend == "sqlite")


def report(all_figures: list[Figures], baseline: float | None, opts: Options) -> list[dict[str, Any]]:
    rows = []
    for figures in all_figures:
        suffix = "" if figures.backend == "sqlite" else f"_{figures.backend}"
        rows.append(
            emit(
                f"dag_accept_s{suffix}",
                statistics.median(figures.dag_s),
                "s",
                "ratio <= 2",
                baseline=statistics.median(figures.independent_s),
                baseline_what=f"{opts.specs:,} independent jobs, submit_many, same rounds",
                jobs=opts.specs,
                chain=opts.chain,
                runs=[round(s, 3) for s in figures.dag_s],
                baseline_runs=[round(s, 3) for s in figures.independent_s],
            )
        )
        rows.append(
            emit(
                f"dag_accept_api_cpu_s{suffix}",
                statistics.median(figures.dag_api_cpu_s),
                "s",
                "ratio <= 2",
                baseline=statistics.median(figures.independent_api_cpu_s),
                baseline_what="the API's CPU seconds for the independent jobs",
                runs=[round(s, 3) for s in figures.dag_api_cpu_s],
                baseline_runs=[round(s, 3) for s in figures.independent_api_cpu_s],
            )
        )
        if not figures.sweep_s:
            continue
        accept_s = statistics.median(figures.sweep_s)
        rows.append(
            emit(
                f"sweep_accept_s{suffix}",
                accept_s,
                "s",
                "<= 2 s",
                points=opts.points,
                runs=[round(s, 3) for s in figures.sweep_s],
                api_cpu_s=[round(s, 3) for s in figures.sweep_api_cpu_s],
            )
        )
        rows.append(
            emit(
                f"sweep_accept_rate{suffix}",
                opts.points / accept_s,
                "jobs/s",
                "ratio >= 10",
                baseline=baseline if figures.backend == "sqlite" else None,
                baseline_what="Celery apply_async, same count, same Redis",
            )
        )
        submit_rates = [opts.specs / s for s in figures.submit_s]
        rows.append(
            emit(
                f"submit_many_rate{suffix}",
                statistics.median(submit_rates),
                "jobs/s",
                ">= 20000",
                specs=opts.specs,
                runs=[round(r) for r in submit_rates],
                api_cpu_s=[round(s, 3) for s in figures.submit_api_cpu_s],
            )
        )
        if figures.list_ms:
            every = [ms for samples in figures.list_ms.values() for ms in samples]
            rows.append(
                emit(
                    "job_list_p99_ms",
                    percentile(every, 99),
                    "ms",
                    "<= 100 ms",
                    jobs=figures.total_jobs,
                    p50_by_filter={k: round(percentile(v, 50), 1) for k, v in figures.list_ms.items()},
                )
            )
            rows.append(
                emit(
                    "sweep_show_p99_ms",
                    percentile(figures.show_ms, 99),
                    "ms",
                    "<= 250 ms",
                    jobs_in_sweep=opts.points,
                    p50_ms=round(percentile(figures.show_ms, 50), 1),
                )
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table("bench", "value", "unit", "baseline", "ratio", "goal", title="sweeps and bulk submission")
    for row in rows:
        table.add_row(
            row["bench"],
            f"{row['value']:g}",
            row["unit"],
            "" if row["baseline"] is None else f"{row['baseline']:g}",
            "" if row["ratio"] is None else f"{row['ratio']:g}",
            row["goal"],
        )
    Console(stderr=True).print(table)


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except Exception as exc:  # any failure means: no PostgreSQL row in this run
        note(f"PostgreSQL not measured: {exc}")
        return False


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=None, help="points of the timed sweep (100,000)")
    parser.add_argument("--specs", type=int, default=10_000, help="specs per submit_many (10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per backend")
    parser.add_argument("--fill-to", type=int, default=None, help="jobs in the database for the list figures")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--quick", action="store_true", help="20k-point sweeps, 100k jobs: a smoke run")
    parser.add_argument("--dag-only", action="store_true", help="only the DAG against independent jobs")
    parser.add_argument("--chain", type=int, default=10, help="jobs per chain of the DAG (10)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("TRAINYARD_BENCH_QUICK") == "1"
    return Options(
        points=args.points or (20_000 if quick else 100_000),
        specs=args.specs,
        rounds=1 if quick else args.rounds,
        fill_to=args.fill_to or (100_000 if quick else 1_000_000),
        postgres=not args.no_postgres,
        dag_only=args.dag_only,
        chain=args.chain,
    )


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    figures, baseline = run_backend(opts, "sqlite")
    all_figures = [figures]
    if opts.postgres and postgres_available():
        all_figures.append(run_backend(opts, "postgresql")[0])
    print_table(report(all_figures, baseline, opts))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
