"""Scheduler pass benchmark: one `plan()` over 1,000 simulated nodes with 1k, 10k and 100k queued jobs.

Run: `.venv/bin/python bench/scheduler.py [--quick]`. The cluster is 85% busy (the steady state
a deep queue implies) with a mix of shapes, priorities, workspaces, sweeps and preemptible work;
a second scenario starts from an idle cluster, where one pass places thousands of jobs. The
baseline is the naive greedy pass (every node scanned for every job, no reservations), timed up
to 10k jobs. The last lines are JSON, one per figure, for the bench runner.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable

from trainyard.scheduler import gangs
from trainyard.scheduler.capacity import Capacity
from trainyard.scheduler.placement import JobView, NodeView, RunningPart, RunningView, Snapshot, plan

NOW_S = 1_000_000.0
GPU_NODES, CPU_NODES = 800, 200
GPUS_PER_NODE, CPUS_PER_GPU_NODE, CPUS_PER_CPU_NODE = 8, 64, 32
WORKSPACES = [f"ws{i}" for i in range(8)]
SWEEPS = [f"sweep{i}" for i in range(20)]
# (weight, pool, nodes, cpus, gpus): what people queue.
SHAPES = [
    (40, "gpu", 1, 4, 1), (15, "gpu", 1, 8, 2), (10, "gpu", 1, 16, 4), (5, "gpu", 1, 32, 8),
    (5, "gpu", 2, 32, 8), (2, "gpu", 4, 32, 8), (20, "cpu", 1, 1, 0), (3, "cpu", 1, 4, 0),
]  # fmt: skip
REPEATS = 5


def make_nodes() -> list[NodeView]:
    nodes = [
        NodeView(id=f"g{i:04d}", pool="gpu", address=f"10.0.{i // 250}.{i % 250}", cpus=CPUS_PER_GPU_NODE,
                 gpus=list(range(GPUS_PER_NODE)), free_cpus=CPUS_PER_GPU_NODE, free_gpus=list(range(GPUS_PER_NODE)))
        for i in range(GPU_NODES)
    ]  # fmt: skip
    nodes += [
        NodeView(id=f"c{i:04d}", pool="cpu", address=f"10.1.{i // 250}.{i % 250}", cpus=CPUS_PER_CPU_NODE,
                 gpus=[], free_cpus=CPUS_PER_CPU_NODE, free_gpus=[])
        for i in range(CPU_NODES)
    ]  # fmt: skip
    return nodes


def fill(nodes: list[NodeView], busy_fraction: float, rng: random.Random) -> list[RunningView]:
    """Occupy each node to about `busy_fraction` with running single-node jobs (some preemptible)."""
    running: list[RunningView] = []
    for node in nodes:
        while True:
            gpus = min(len(node.free_gpus), rng.choice([1, 1, 2, 4])) if node.gpus else 0
            cpus = float(rng.choice([1, 2, 4, 8]))
            used_gpus = 1 - len(node.free_gpus) / len(node.gpus) if node.gpus else 0.0
            used_cpus = 1 - node.free_cpus / node.cpus
            if max(used_gpus, used_cpus) >= busy_fraction or node.free_cpus < cpus or (node.gpus and not gpus):
                break
            taken, node.free_gpus = node.free_gpus[:gpus], node.free_gpus[gpus:]
            node.free_cpus -= cpus
            running.append(RunningView(
                job_id=f"r{len(running)}", attempt=1, priority=rng.choice([250, 500, 500, 750]),
                preemptible=rng.random() < 0.3, node_ids=[node.id], expected_end_s=NOW_S + rng.uniform(60, 86400),
                parts=[RunningPart(node_id=node.id, cpus=cpus, gpus=taken)],
            ))  # fmt: skip
    return running


def make_queue(count: int, rng: random.Random) -> list[JobView]:
    weights = [shape[0] for shape in SHAPES]
    queued = []
    for seq in range(count):
        _, pool, nodes, cpus, gpus = rng.choices(SHAPES, weights)[0]
        queued.append(JobView(
            id=f"q{seq}", pool=pool, priority=rng.choices([250, 500, 750], [2, 7, 1])[0], seq=seq,
            workspace=rng.choice(WORKSPACES), nodes=nodes, cpus=float(cpus), gpus=gpus,
            max_wall_clock_s=rng.choice([600.0, 3600.0, 86400.0]), preemptible=rng.random() < 0.3,
            sweep_id=rng.choice(SWEEPS) if rng.random() < 0.3 else None,
            submitted_s=NOW_S - rng.uniform(0, 7200),
        ))  # fmt: skip
    return queued


def snapshot(queue_length: int, busy_fraction: float, seed: int = 7) -> Snapshot:
    rng = random.Random(seed)
    nodes = make_nodes()
    running = fill(nodes, busy_fraction, rng)
    return Snapshot(
        nodes=nodes, queued=make_queue(queue_length, rng), running=running, now_s=NOW_S,
        workspace_usage={ws: rng.uniform(0, 1e6) for ws in WORKSPACES},
        sweep_max_concurrency={sweep: rng.choice([8, 16, 64]) for sweep in SWEEPS},
        sweep_running={sweep: rng.choice([0, 4, 8]) for sweep in SWEEPS},
        workspace_gpu_quota={"ws0": 64, "ws1": 128},
        workspace_gpus_in_use={"ws0": 60, "ws1": 32},
    )  # fmt: skip


def gang_snapshot(gang_nodes: int = 64) -> Snapshot:
    """A full GPU pool, a gang of `gang_nodes` whole nodes at the head of the queue, 1k jobs behind it."""
    base = snapshot(1000, busy_fraction=1.0)
    gang = JobView(id="gang", pool="gpu", priority=1000, seq=-1, nodes=gang_nodes, cpus=32.0, gpus=8,
                   submitted_s=NOW_S)  # fmt: skip
    base.queued.insert(0, gang)
    return base


def naive_plan(snapshot: Snapshot) -> int:
    """The baseline: greedy in (priority, seq) order, scanning every node for every job; no reservations."""
    nodes = [n for n in snapshot.nodes if n.schedulable]
    free_cpus = {n.id: n.free_cpus for n in nodes}
    free_gpus = {n.id: len(n.free_gpus) for n in nodes}
    placed = 0
    for job in sorted(snapshot.queued, key=lambda j: (-j.priority, j.seq)):
        fits = [
            n.id for n in nodes if n.pool == job.pool and free_cpus[n.id] >= job.cpus and free_gpus[n.id] >= job.gpus
        ]
        if len(fits) < job.nodes:
            continue
        fits.sort(key=lambda node_id: (free_gpus[node_id], free_cpus[node_id]))
        for node_id in fits[: job.nodes]:
            free_cpus[node_id] -= job.cpus
            free_gpus[node_id] -= job.gpus
        placed += 1
    return placed


def time_ms(run: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def peak_mib(run: Callable[[], object]) -> float:
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def result(bench: str, value: float, unit: str, goal: str = "", baseline: float | None = None) -> dict[str, object]:
    ratio = round(value / baseline, 3) if baseline else None
    row: dict[str, object] = {"bench": bench, "value": round(value, 1), "unit": unit, "goal": goal}
    return row | {"baseline": None if baseline is None else round(baseline, 1), "ratio": ratio}


def pass_rows(quick: bool) -> list[dict[str, object]]:
    rows = []
    print(f"{'scenario':<36} {'queued':>8} {'placed':>7} {'pass ms':>9} {'cpu ms':>8} {'peak MiB':>9} {'naive ms':>9}")
    for busy, label in ((0.85, "busy"), (0.0, "idle")):
        for queue_length in (1_000, 10_000, 100_000):
            snap = snapshot(queue_length, busy)
            placed = len(plan(snap).placements)
            pass_ms = time_ms(lambda snap=snap: plan(snap), 3 if quick else REPEATS)  # type: ignore[misc]
            started_cpu_s = time.process_time()
            plan(snap)
            cpu_ms = (time.process_time() - started_cpu_s) * 1000
            memory_mib = peak_mib(lambda snap=snap: plan(snap))  # type: ignore[misc]
            naive_ms = None
            if queue_length <= 10_000 and not quick:  # the naive scan is O(jobs x nodes): minutes at 100k
                naive_ms = time_ms(lambda snap=snap: naive_plan(snap), 1)  # type: ignore[misc]
            naive = f"{naive_ms:>9.1f}" if naive_ms is not None else f"{'-':>9}"
            name = f"{label} cluster, 1,000 nodes"
            print(
                f"{name:<36} {queue_length:>8,} {placed:>7,} {pass_ms:>9.1f} {cpu_ms:>8.1f} {memory_mib:>9.1f} {naive}"
            )
            if label == "busy":
                tag = f"scheduler_pass_{queue_length // 1000}k"
                rows.append(result(tag, pass_ms, "ms", "<= 200", baseline=naive_ms))
                rows.append(result(f"{tag}_peak_memory", memory_mib, "MiB"))
    return rows


def gang_rows(quick: bool) -> list[dict[str, object]]:
    gang = gang_snapshot()
    gang_plan = plan(gang)
    assert gang_plan.reservations and gang_plan.reservations[0].job_id == "gang", "the gang should reserve"
    gang_ms = time_ms(lambda: plan(gang), 3 if quick else REPEATS)
    pool_nodes = Capacity(gang.nodes, gang.running, NOW_S).pool_nodes("gpu")
    reserve_ms = time_ms(lambda: gangs.reserve(gang.queued[0], pool_nodes, NOW_S), 3 if quick else REPEATS)
    print(f"{'64-node gang reserves (whole pass)':<36} {len(gang.queued):>8,} {len(gang_plan.placements):>7,} "
          f"{gang_ms:>9.1f}")  # fmt: skip
    print(f"{'64-node gang reservation alone':<36} {'':>8} {'':>7} {reserve_ms:>9.1f}")
    return [result("scheduler_gang_reservation_64", gang_ms, "ms", "<= 100")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no naive baseline")
    quick = parser.parse_args().quick or os.environ.get("TRAINYARD_BENCH_QUICK") == "1"
    rows = pass_rows(quick) + gang_rows(quick)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
