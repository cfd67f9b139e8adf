"""The SDK against real API processes that are shared by 200 threads, killed, restarted, or lose an answer."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from trainyard.client import Client
from trainyard.up import Cluster, start_cluster

pytestmark = pytest.mark.integration

THREADS = 200
KEYS = 20


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of its own (SQLite, embedded Redis): its API is killed and started again."""
    home: Path = tmp_path_factory.mktemp("restartable")
    cluster = start_cluster(
        workers=1,
        slots=8,
        home=home,
        extra_env={
            "TRAINYARD_DATABASE_URL": "",
            "TRAINYARD_REDIS_URL": "",
            "TRAINYARD_ADMIN_TOKEN": "",
            "TRAINYARD_SECRET_KEY": "",
        },
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def restartable(own_cluster: Cluster) -> Cluster:
    """The module's cluster with its API up, even after a test that failed while it was down."""
    if own_cluster.process("api").poll() is not None:
        restart_api(own_cluster)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{own_cluster.api_url}/healthz", timeout=1).status_code == 200:
                return own_cluster
        time.sleep(0.1)
    raise AssertionError("the API did not come back")


def restart_api(cluster: Cluster, down_s: float = 0.0, graceful: bool = False) -> None:
    """kill -9 the API (a crash; or SIGTERM: a deploy), then start it again on the same port (its supervisor)."""
    old = cluster.process("api")
    if graceful:
        old.terminate()
        assert old.wait(timeout=30) is not None  # open follows do not hold a shutdown up
    else:
        old.kill()
    old.wait()
    time.sleep(down_s)
    port = cluster.api_url.rsplit(":", 1)[1]
    with (cluster.home / "logs" / "api.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainyard", "api", "--port", port],
            env=cluster.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    cluster.processes.append(("api", process))


def restart_api_later(cluster: Cluster, after_s: float, down_s: float) -> tuple[threading.Timer, threading.Event]:
    """restart_api in `after_s` seconds, in a thread; the event is set once the new API is started."""
    restarted = threading.Event()

    def restart() -> None:
        restart_api(cluster, down_s)
        restarted.set()

    timer = threading.Timer(after_s, restart)
    timer.start()
    return timer, restarted


def stored_names(client: Client, prefix: str) -> list[str]:
    return [job.name for job in client.jobs(name_prefix=prefix, limit=100_000)]


def in_threads(call: Callable[[int], str], count: int = THREADS) -> list[str]:
    """`call(i)` for i in range(count), each in its own thread, all released at once."""
    barrier = threading.Barrier(count)

    def released(index: int) -> str:
        barrier.wait()
        return call(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(released, range(count)))


def test_200_threads_on_one_client_with_20_keys_make_20_jobs(cluster: Cluster) -> None:
    tag = f"threads-{uuid.uuid4().hex[:8]}"
    with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:

        def submit(index: int) -> str:
            name = f"{tag}-{index % KEYS}"
            return client.submit({"name": name, "command": "true", "idempotency_key": name}).id

        ids = in_threads(submit)
        by_key: dict[int, set[str]] = {}
        for index, job_id in enumerate(ids):
            by_key.setdefault(index % KEYS, set()).add(job_id)
        assert all(len(found) == 1 for found in by_key.values()) and len(set(ids)) == KEYS
        assert sorted(stored_names(client, tag)) == sorted(f"{tag}-{k}" for k in range(KEYS))


def test_200_threads_on_one_client_with_generated_keys_make_200_jobs(cluster: Cluster) -> None:
    tag = f"generated-{uuid.uuid4().hex[:8]}"
    with Client(api_url=cluster.api_url, token=cluster.admin_token) as client:
        ids = in_threads(lambda index: client.submit({"name": f"{tag}-{index}", "command": "true"}).id)
        assert len(set(ids)) == THREADS
        assert sorted(stored_names(client, tag)) == sorted(f"{tag}-{i}" for i in range(THREADS))


def test_submits_through_an_api_kill_and_restart_make_each_job_once(restartable: Cluster) -> None:
    tag = f"through-{uuid.uuid4().hex[:8]}"
    threads, per_thread = 50, 10
    with Client(api_url=restartable.api_url, token=restartable.admin_token) as client:

        def submit_several(index: int) -> str:
            for n in range(per_thread):
                client.submit({"name": f"{tag}-{index}-{n}", "command": "true"})
            return ""

        timer, restarted = restart_api_later(restartable, after_s=1.0, down_s=1.0)
        in_threads(submit_several, count=threads)
        assert restarted.is_set()  # the submits were still going when the API died
        timer.join()
        names = stored_names(client, tag)
        assert len(names) == len(set(names)) == threads * per_thread


def test_wait_returns_the_final_state_across_an_api_restart(restartable: Cluster) -> None:
    with Client(api_url=restartable.api_url, token=restartable.admin_token) as client:
        job = client.submit({"name": "wait-through-restart", "command": "sleep 6; exit 3", "max_retries": 0})
        timer, restarted = restart_api_later(restartable, after_s=1.5, down_s=2.0)
        assert job.wait(timeout=120) == "failed"
        assert restarted.is_set()  # it was waiting when the API died
        timer.join()
        assert job.exit_code == 3


def test_follow_gives_every_line_once_in_order_across_two_api_restarts(restartable: Cluster) -> None:
    count = 400
    command = f'for i in $(seq 1 {count}); do echo "line $i"; sleep 0.03; done'
    with Client(api_url=restartable.api_url, token=restartable.admin_token) as client:
        job = client.submit({"name": "follow-through-restart", "command": command, "max_retries": 0})
        lines = []
        for line in job.logs(follow=True):
            lines.append(line)
            if len(lines) in (60, 200):
                restart_api(restartable)
        assert lines == [f"line {i}\n" for i in range(1, count + 1)]
        assert job.wait(timeout=60) == "succeeded"


def test_follow_goes_on_when_the_api_shuts_down_cleanly_mid_follow(restartable: Cluster) -> None:
    """SIGTERM: the API stops within its grace although a follow is open; the follow reconnects (and,
    had the stream ended cleanly, the SDK checks that the attempt is over before it believes it)."""
    count = 300
    command = f'for i in $(seq 1 {count}); do echo "line $i"; sleep 0.03; done'
    with Client(api_url=restartable.api_url, token=restartable.admin_token) as client:
        job = client.submit({"name": "follow-through-sigterm", "command": command, "max_retries": 0})
        lines = []
        for line in job.logs(follow=True):
            lines.append(line)
            if len(lines) == 50:
                restart_api(restartable, graceful=True)
        assert lines == [f"line {i}\n" for i in range(1, count + 1)]
        assert job.wait(timeout=60) == "succeeded"


class LosesOneAnswer:
    """A TCP proxy in front of the API that swallows the answer to the first request whose line
    starts with `request_line`: the API has stored what it was sent, the client sees the
    connection close without a response."""

    def __init__(self, upstream_port: int, request_line: bytes):
        self.upstream_port, self.request_line = upstream_port, request_line
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the API is away: so is this proxy, for this connection
                _close(downstream)
                continue
            marked = threading.Event()  # this connection carries the request whose answer is lost
            threading.Thread(target=self._requests, args=(downstream, upstream, marked), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, downstream, marked), daemon=True).start()

    def _requests(self, downstream: socket.socket, upstream: socket.socket, marked: threading.Event) -> None:
        try:
            while data := downstream.recv(65536):
                if data.startswith(self.request_line) and not self.dropped.is_set():
                    marked.set()  # before the API can see it, so its answer is known to be this one's
                upstream.sendall(data)
        except OSError:
            pass
        _close(upstream)

    def _answers(self, upstream: socket.socket, downstream: socket.socket, marked: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                if marked.is_set() and not self.dropped.is_set():
                    self.dropped.set()
                    break
                downstream.sendall(data)
        except OSError:
            pass
        _close(downstream)
        _close(upstream)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.mark.parametrize("call", ["submit", "submit_many", "sweep"])
def test_a_submit_whose_answer_is_lost_is_retried_and_makes_its_jobs_once(restartable: Cluster, call: str) -> None:
    tag = f"lost-{call}-{uuid.uuid4().hex[:8]}"
    line = {"submit": b"POST /v1/jobs ", "submit_many": b"POST /v1/jobs:batch ", "sweep": b"POST /v1/sweeps "}[call]
    proxy = LosesOneAnswer(int(restartable.api_url.rsplit(":", 1)[1]), line)
    try:
        with Client(api_url=proxy.url, token=restartable.admin_token) as client:
            if call == "submit":
                ids = [client.submit({"name": tag, "command": "true"}).id]
            elif call == "submit_many":
                ids = [
                    job.id for job in client.submit_many([{"name": f"{tag}-{i}", "command": "true"} for i in range(3)])
                ]
            else:
                sweep = client.sweep({"name": tag + "-{lr}", "command": "true"}, grid={"lr": [1, 2, 3]})
                ids = [job.id for job in sweep.jobs()]
            assert proxy.dropped.is_set()
    finally:
        proxy.close()
    with Client(api_url=restartable.api_url, token=restartable.admin_token) as direct:
        stored = direct.jobs(name_prefix=tag, limit=100)
        assert sorted(job.id for job in stored) == sorted(ids) and len(ids) == (1 if call == "submit" else 3)
        if call == "sweep":
            assert [s.id for s in direct.sweeps(limit=1000) if s.name == tag + "-{lr}"] == [stored[0].sweep_id]
