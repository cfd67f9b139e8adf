"""Log followers are cheap and woken by Redis notices: hundreds idle beside a responsive API, and a Redis
restart (notices lost) delays a follower but costs it no byte.

Real processes throughout: API, scheduler, node agent, the cluster's embedded Redis, a file store.
The followers are httpx.AsyncClient streams on one event loop of the test.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.integration.store_clusters import store_cluster
from tests.services import wait_for_port
from trainyard.client import Client
from trainyard.up import Cluster, redis_server_args

pytestmark = pytest.mark.integration

IDLE_FOLLOWERS = 200
LIST_LATENCY_LIMIT_S = 5.0
# The API process's threads: AnyIO's pool (40), the followers' share (8), uvicorn and the rest.
API_THREADS_LIMIT = 100
LAG_LIMIT_S = 2.0  # SPEC §2.8: bytes readable through the API within 2 s (p99)
TICK_S = 0.1


def ticker(lines: int) -> list[str]:
    """A job printing `lines` numbered lines with its clock, one every TICK_S."""
    script = (f"import time\nfor i in range({lines}):\n"
              f"    print(f'{{i:05d}} {{time.time():.3f}}', flush=True)\n    time.sleep({TICK_S})\n")  # fmt: skip
    return ["python3", "-u", "-c", script]


def wait_state(client: Client, job_id: str, state: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.job(job_id).data["state"] != state:
        assert time.monotonic() < deadline, f"job {job_id} not {state} within {timeout_s} s"
        time.sleep(0.2)


def api_process(cluster: Cluster) -> psutil.Process:
    return psutil.Process(next(process for name, process in cluster.processes if name == "api").pid)


def nth_percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * pct / 100 + 0.999) - 1)]


class AsyncFollowers:
    """Many `?follow=true` streams of one client: how many got their headers, and what each received."""

    def __init__(self, cluster: Cluster):
        self.http = httpx.AsyncClient(
            base_url=cluster.api_url, headers={"Authorization": f"Bearer {cluster.admin_token}"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            timeout=httpx.Timeout(60.0, read=None),
        )  # fmt: skip
        self.connected = 0
        self.tasks: list[asyncio.Task[bytes]] = []

    def open(self, job_id: str, count: int) -> None:
        self.tasks += [asyncio.create_task(self._follow(job_id)) for _ in range(count)]

    async def _follow(self, job_id: str) -> bytes:
        received = bytearray()
        async with self.http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as response:
            assert response.status_code == 200
            self.connected += 1
            async for chunk in response.aiter_bytes():
                received += chunk
        return bytes(received)

    async def wait_connected(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.connected < count:
            failed = [task for task in self.tasks if task.done()]
            assert not failed, f"a follower ended early: {failed[0].exception() or failed[0].result()!r}"
            assert time.monotonic() < deadline, f"{self.connected}/{count} followers connected in {timeout_s} s"
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()


async def line_lags(http: httpx.AsyncClient, job_id: str) -> tuple[int, list[float]]:
    """Follow a ticker's stdout: its line count, and for each line printed once the follow was open,
    how long after it was printed it arrived."""
    count, lags, pending = 0, [], b""
    async with http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}) as response:
        opened_at = time.time()
        async for chunk in response.aiter_bytes():
            now = time.time()
            *lines, pending = (pending + chunk).split(b"\n")
            count += len(lines)
            lags += [now - printed for printed in (float(line.split()[1]) for line in lines) if printed > opened_at]
    return count, lags


async def _idle_followers_and_the_api(cluster: Cluster, client: Client, quiet_id: str) -> None:
    followers = AsyncFollowers(cluster)
    try:
        followers.open(quiet_id, IDLE_FOLLOWERS)
        await followers.wait_connected(IDLE_FOLLOWERS)
        await asyncio.sleep(2)  # every follower is past its first reads: idle, waiting for notices

        latencies = []
        for _ in range(10):
            started = time.monotonic()
            response = await followers.http.get("/v1/jobs", params={"limit": 5})
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
            assert [job["id"] for job in response.json()["jobs"]] == [quiet_id]
        assert max(latencies) < LIST_LATENCY_LIMIT_S, f"GET /v1/jobs?limit=5 took {max(latencies):.2f} s"
        shown = await followers.http.get(f"/v1/jobs/{quiet_id}")
        assert shown.json()["state"] == "running"
        threads = api_process(cluster).num_threads()
        assert threads < API_THREADS_LIMIT, f"the API holds {threads} threads for {IDLE_FOLLOWERS} followers"
        assert followers.connected == IDLE_FOLLOWERS
        assert not [task for task in followers.tasks if task.done()], "every idle follower is still connected"

        # A live follower beside them sees each line within the SPEC's 2 s.
        ticking = await asyncio.to_thread(client.submit, {"name": "ticking", "command": ticker(50)})
        count, lags = await line_lags(followers.http, ticking.id)
        assert count == 50 and len(lags) > 40
        assert nth_percentile(lags, 99) < LAG_LIMIT_S, f"p99 line lag {nth_percentile(lags, 99):.2f} s"

        # The idle ones end with their job.
        await asyncio.to_thread(client.cancel, quiet_id)
        done, pending = await asyncio.wait(followers.tasks, timeout=30)
        assert not pending, f"{len(pending)} followers still open 30 s after their job was cancelled"
        assert all(task.exception() is None and task.result() == b"" for task in done)
    finally:
        await followers.close()


def test_two_hundred_idle_followers_leave_the_job_list_fast_and_a_live_follower_on_time(tmp_path: Path) -> None:
    with store_cluster("file", tmp_path) as on_store:
        client = on_store.client
        quiet = client.submit({"name": "quiet", "command": "sleep 300"})
        wait_state(client, quiet.id, "running")
        asyncio.run(_idle_followers_and_the_api(on_store.cluster, client, quiet.id))


# -- a Redis restart under a follower --------------------------------------------------------------

REDIS_DOWN_S = 3.0
RESTART_LINES = 250  # 25 s of output: the restart lands in the middle


class Follower(threading.Thread):
    """The SDK's follow in a thread: every chunk with the time it arrived."""

    def __init__(self, client: Client, job_id: str):
        super().__init__(daemon=True)
        self.client, self.job_id = client, job_id
        self.chunks: list[tuple[float, bytes]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for chunk in self.client.log_chunks(self.job_id, follow=True):
                self.chunks.append((time.time(), chunk))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def received(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    def line_times(self) -> list[tuple[float, float]]:
        """(arrived, printed) of every whole line: a line arrives with the chunk that ends it."""
        times, pending = [], b""
        for at, chunk in self.chunks:
            *lines, pending = (pending + chunk).split(b"\n")
            times += [(at, float(line.split()[1])) for line in lines]
        return times


def restart_embedded_redis(cluster: Cluster, down_s: float) -> None:
    """Stop the cluster's Redis and start it again on the same port, password and data (its AOF)."""
    index, (name, process) = next((i, entry) for i, entry in enumerate(cluster.processes) if entry[0] == "redis")
    url = urlsplit(cluster.env["TRAINYARD_REDIS_URL"])
    assert url.port is not None
    process.terminate()
    process.wait(timeout=10)
    time.sleep(down_s)
    args = redis_server_args(url.port, cluster.home / "redis", appendonly=True, password=url.password)
    restarted = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cluster.processes[index] = (name, restarted)  # stopped with the cluster
    wait_for_port(url.port)


def test_a_follower_gets_every_byte_once_across_a_redis_restart(tmp_path: Path) -> None:
    with store_cluster("file", tmp_path) as on_store:
        client = on_store.client
        job = client.submit({"name": "through-restart", "command": ticker(RESTART_LINES)})
        follower = Follower(client, job.id)
        follower.start()
        deadline = time.monotonic() + 60
        while follower.received().count(b"\n") < 20:
            assert time.monotonic() < deadline and follower.is_alive(), follower.error
            time.sleep(0.05)

        restart_embedded_redis(on_store.cluster, REDIS_DOWN_S)
        back_at = time.time()
        assert job.wait(timeout=120) == "succeeded"
        follower.join(timeout=60)
        assert not follower.is_alive(), "the follow ended with the job"
        assert follower.error is None, follower.error

        received = follower.received()
        assert received == job.log_bytes(), "the follower got exactly the stored bytes, once each"
        lines = received.decode().splitlines()
        assert [int(line.split()[0]) for line in lines] == list(range(RESTART_LINES))
        # Notices flow again after the restart: lines arrive at notice pace, not at the fallback
        # poll's (every 4 s: a median lag of about 2 s).
        late_lags = [at - printed for at, printed in follower.line_times() if printed > back_at + 5]
        assert len(late_lags) > 50
        assert statistics.median(late_lags) < 1.2, f"median lag after the restart {statistics.median(late_lags):.2f} s"
