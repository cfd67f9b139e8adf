"""API latency and submit rate with no log follower open, then with 1,000 idle followers, in one run.

One private cluster (one node, SQLite, embedded Redis, uvicorn with one worker). A few jobs that
print nothing (`sleep`) run; then, first with no follower and again with `--followers` streams
of `GET /v1/jobs/{id}/logs?follow=true` open on them (httpx.AsyncClient, idle):
- api_list_p50/p99: sequential `GET /v1/jobs?limit=5`;
- api_show_p50/p99: sequential `GET /v1/jobs/{id}`;
- api_submits_per_s: `POST /v1/jobs` from `--clients` concurrent clients (each its own connection),
  into a pool without nodes, so that the submitted jobs stay queued and load nothing else.
Each figure's value is with the followers open, its baseline without: goal p99 ratio ≤ 2
(issue 13: 80 idle followers used to stop the API). api_threads: the API process's threads with
the followers open (they must not hold one each).
JSON lines on stdout (harness.py); a table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
from harness import emit, note, percentile, private_cluster
from rich.console import Console
from rich.table import Table

QUIET_JOBS = 4  # the followers spread over these: several channels of the one subscription
PARKED_POOL = "bench-parked"  # no node: a submitted job waits there, queued
FD_HEADROOM = 1024
CONNECT_TIMEOUT_S = 300.0


@dataclass
class Phase:
    """What one round measured: latencies in seconds, submits per second."""

    followers: int
    list_s: list[float] = field(default_factory=list)
    show_s: list[float] = field(default_factory=list)
    submits_per_s: float = 0.0
    api_threads: int = 0


def raise_fd_limit(followers: int) -> None:
    """Each follower is a socket here and one in the API (which inherits this limit): lift the soft cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * followers + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        note(f"RLIMIT_NOFILE {soft} → {target}")


def _http(cluster: Any) -> httpx.Client:
    return httpx.Client(base_url=cluster.api_url, headers={"Authorization": f"Bearer {cluster.admin_token}"},
                        timeout=120)  # fmt: skip


def sequential_latencies(cluster: Any, path: str, params: dict[str, Any], samples: int) -> list[float]:
    out = []
    with _http(cluster) as http:
        for _ in range(samples):
            started = time.perf_counter()
            http.get(path, params=params).raise_for_status()
            out.append(time.perf_counter() - started)
    return out


def submit_rate(cluster: Any, clients: int, per_client: int, label: str) -> float:
    def one_client(index: int) -> None:
        with _http(cluster) as http:
            for i in range(per_client):
                spec = {"name": f"load-{label}-{index}-{i}", "command": "true", "pool": PARKED_POOL}
                http.post("/v1/jobs", json=spec).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def measure(cluster: Any, phase: Phase, job_id: str, opts: Options) -> None:
    phase.list_s = sequential_latencies(cluster, "/v1/jobs", {"limit": 5}, opts.samples)
    phase.show_s = sequential_latencies(cluster, f"/v1/jobs/{job_id}", {}, opts.samples)
    phase.submits_per_s = submit_rate(cluster, opts.clients, opts.submits_per_client, str(phase.followers))
    api = next(process for name, process in cluster.processes if name == "api")
    phase.api_threads = psutil.Process(api.pid).num_threads()
    note(f"{phase.followers} followers: list p99 {percentile(phase.list_s, 99) * 1000:.1f} ms, "
         f"show p99 {percentile(phase.show_s, 99) * 1000:.1f} ms, {phase.submits_per_s:.0f} submits/s, "
         f"{phase.api_threads} API threads")  # fmt: skip


async def _follow(http: httpx.AsyncClient, job_id: str, connected: list[int]) -> None:
    async with http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as response:
        response.raise_for_status()
        connected[0] += 1
        async for _chunk in response.aiter_bytes():
            pass
    raise RuntimeError("a follower ended while its job was running")


async def with_followers(cluster: Any, job_ids: list[str], opts: Options) -> Phase:
    """Open the followers, wait until every one has its response, then measure beside them."""
    http = httpx.AsyncClient(
        base_url=cluster.api_url, headers={"Authorization": f"Bearer {cluster.admin_token}"},
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        timeout=httpx.Timeout(CONNECT_TIMEOUT_S, read=None),
    )  # fmt: skip
    connected = [0]
    tasks = [asyncio.create_task(_follow(http, job_ids[i % len(job_ids)], connected)) for i in range(opts.followers)]
    try:
        started = time.monotonic()
        while connected[0] < opts.followers:
            ended = [task for task in tasks if task.done()]
            if ended:
                raise RuntimeError(f"{len(ended)} followers failed: {ended[0].exception()!r}")
            if time.monotonic() - started > CONNECT_TIMEOUT_S:
                raise RuntimeError(f"only {connected[0]}/{opts.followers} followers connected")
            await asyncio.sleep(0.1)
        note(f"{opts.followers} followers open after {time.monotonic() - started:.1f} s; letting them go idle")
        await asyncio.sleep(opts.settle_s)
        phase = Phase(opts.followers)
        await asyncio.to_thread(measure, cluster, phase, job_ids[0], opts)
        ended = [task for task in tasks if task.done()]
        if ended:
            raise RuntimeError(f"{len(ended)} followers ended during the measurement: {ended[0].exception()!r}")
        return phase
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()


def wait_running(cluster: Any, job_ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with _http(cluster) as http:
        while any(http.get(f"/v1/jobs/{job_id}").json()["state"] != "running" for job_id in job_ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the quiet jobs were not all running within {timeout_s:.0f} s")
            time.sleep(0.2)


def run(opts: Options) -> tuple[Phase, Phase]:
    raise_fd_limit(opts.followers)
    with private_cluster(workers=1, slots=QUIET_JOBS) as cluster:
        with _http(cluster) as http:
            job_ids = [http.post("/v1/jobs", json={"name": f"quiet-{i}", "command": "sleep 3600"}).json()["id"]
                       for i in range(QUIET_JOBS)]  # fmt: skip
        wait_running(cluster, job_ids)
        note(f"{QUIET_JOBS} quiet jobs running; measuring with no follower")
        alone = Phase(0)
        measure(cluster, alone, job_ids[0], opts)
        note(f"opening {opts.followers} followers")
        crowded = asyncio.run(with_followers(cluster, job_ids, opts))
    return alone, crowded


def report(alone: Phase, crowded: Phase) -> None:
    n = crowded.followers
    table = Table("figure", "0 followers", f"{n} followers", "ratio")
    for name, before, after in (("list", alone.list_s, crowded.list_s), ("show", alone.show_s, crowded.show_s)):
        for pct in (50, 99):
            ms_before, ms_after = percentile(before, pct) * 1000, percentile(after, pct) * 1000
            goal = "ratio <= 2" if pct == 99 else ""
            emit(f"api_{name}_p{pct}", ms_after, "ms", goal, baseline=ms_before, followers=n, samples=len(after))
            table.add_row(f"{name} p{pct} ms", f"{ms_before:.1f}", f"{ms_after:.1f}", f"{ms_after / ms_before:.2f}")
    emit("api_submits_per_s", crowded.submits_per_s, "jobs/s", "ratio >= 0.5", baseline=alone.submits_per_s,
         followers=n)  # fmt: skip
    emit("api_threads", crowded.api_threads, "threads", "<= 100", baseline=alone.api_threads, followers=n)
    table.add_row(
        "submits/s",
        f"{alone.submits_per_s:.0f}",
        f"{crowded.submits_per_s:.0f}",
        f"{crowded.submits_per_s / alone.submits_per_s:.2f}",
    )
    table.add_row("API threads", str(alone.api_threads), str(crowded.api_threads), "")
    Console(stderr=True).print(table)


@dataclass(frozen=True)
class Options:
    followers: int
    samples: int
    clients: int
    submits_per_client: int
    settle_s: float


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=None, help="idle followers to open (1000)")
    parser.add_argument("--samples", type=int, default=None, help="sequential requests per route and round (300)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent submitting clients")
    parser.add_argument("--submits", type=int, default=None, help="submits per client and round (20)")
    parser.add_argument("--quick", action="store_true", help="fewer followers and samples: a smoke run")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("TRAINYARD_BENCH_QUICK") == "1"
    return Options(
        followers=args.followers or (200 if quick else 1000),
        samples=args.samples or (50 if quick else 300),
        clients=args.clients,
        submits_per_client=args.submits or (4 if quick else 20),
        settle_s=2.0 if quick else 5.0,
    )


def main(argv: list[str] | None = None) -> None:
    alone, crowded = run(parse_args(argv))
    report(alone, crowded)


if __name__ == "__main__":
    main()
