"""Drive launchers directly, as the node agents of a gang would, without a scheduler or Celery.

Each rank gets a LaunchContext on its own loopback address (127.0.0.2, 127.0.0.3, ...), runs its
`prepare`, starts, takes spawns through a real RshRelay on a real Redis, and pumps its output
into memory. Like the scheduler, when one rank ends with a failure the others are stopped.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from trainyard.workers.launchers import LaunchContext, Launcher, PrepareFailed, RunningPart, launcher_for
from trainyard.workers.launchers.process_tree import tagged_processes
from trainyard.workers.launchers.ray import ray_ports
from trainyard.workers.launchers.rsh_relay import relay_for

PUMP_JOIN_S = 10.0


class Captured:
    """An output sink (what PartLogs is to the agent): each stream kept in memory."""

    def __init__(self) -> None:
        self.streams: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._lock = threading.Lock()

    def pump(self, fd: int, stream: str) -> threading.Thread:
        def read_loop() -> None:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self.streams[stream] += chunk
            os.close(fd)

        thread = threading.Thread(target=read_loop, daemon=True)
        thread.start()
        return thread

    def text(self, stream: str) -> str:
        with self._lock:
            return self.streams[stream].decode(errors="replace")


def free_master_port() -> int:
    """A port for the attempt's rendezvous whose derived ports (Ray's, for two nodes) are free too."""
    while True:
        port = random.randrange(20000, 32000)
        wanted = [port, *(p for rank in range(2) for p in vars(ray_ports(port, rank)).values())]
        if all(_free(candidate) for candidate in wanted):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


@dataclass
class RankRun:
    ctx: LaunchContext
    launcher: Launcher
    output: Captured = field(default_factory=Captured)
    running: RunningPart | None = None
    exit_code: int | None = None
    reason: str = "exit"
    started_at: float | None = None
    torn_down: bool = False  # stopped because another rank ended first (as the scheduler does)


class Gang:
    """One attempt of a job spread over `nodes` simulated nodes of this machine."""

    def __init__(
        self, tmp_path: Path, redis_url: str, spec: dict[str, Any], nodes: int = 1, gpus: list[list[int]] | None = None
    ):
        self.job_id = f"job-{secrets.token_hex(4)}"
        self.spec = {"launcher": "process", "processes_per_node": 1, **spec}
        self.hosts = [f"127.0.0.{index + 2}" for index in range(nodes)]
        self.redis = redis.Redis.from_url(redis_url)
        master_port = free_master_port()
        self.token = secrets.token_hex(32)  # what the agents derive alike from the cluster's key
        self.ranks = [
            RankRun(
                self._context(tmp_path, rank, master_port, (gpus or [[]] * nodes)[rank]),
                launcher_for(self.spec["launcher"], image=self.spec.get("image")),
            )
            for rank in range(nodes)
        ]
        # A directory every rank can write (mounted read-write in containers): markers, go-files.
        self.shared_dir = tmp_path / "shared"
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        for run in self.ranks:
            run.ctx.data_env["TRAINYARD_OUTPUT_SHARED"] = str(self.shared_dir)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False

    def _context(self, tmp_path: Path, rank: int, master_port: int, gpus: list[int]) -> LaunchContext:
        node_dir = tmp_path / f"node-{rank + 1}"
        return LaunchContext(
            job_id=self.job_id,
            name="contract",
            attempt=1,
            rank=rank,
            num_nodes=len(self.hosts),
            node_hosts=list(self.hosts),
            node_address=self.hosts[rank],
            spec=self.spec,
            gpus=gpus,
            workdir=node_dir / "work" / f"{self.job_id}-1-{rank}",
            checkpoint_dir=node_dir / "checkpoints" / self.job_id,
            master_port=master_port,
            secrets=dict(self.spec.get("secrets") or {}),
            gang_token=self.token,
        )

    def start(self) -> Gang:
        for run in self.ranks:
            thread = threading.Thread(target=self._run_rank, args=(run,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run_rank(self, run: RankRun) -> None:
        relay = relay_for(run.launcher, self.redis, run.ctx, run.output)
        try:
            self._prepare(run)
            if self._stopping:
                raise PrepareFailed(143, "cancelled")
            run.running = run.launcher.start(run.ctx)
            run.started_at = time.monotonic()
            relay.serve(run.launcher, run.running)
            pumps = [run.output.pump(run.running.stdout_fd, "stdout"), run.output.pump(run.running.stderr_fd, "stderr")]
            run.exit_code = run.launcher.wait(run.running)
            _join(pumps)
            if any(pump.is_alive() for pump in pumps):
                # As the agent does: a leftover child holding the pipe ends with the part.
                run.launcher.stop(run.running, grace_s=1.0)
                _join(pumps)
        except PrepareFailed as exc:
            run.exit_code, run.reason = exc.exit_code, exc.reason
        finally:
            relay.close()
        if run.exit_code != 0:
            self.stop(grace_s=2.0)  # the scheduler's gang teardown

    def _prepare(self, run: RankRun) -> None:
        part = run.launcher.prepare(run.ctx)
        if part is None:
            return
        run.running = part
        pumps = [run.output.pump(part.stdout_fd, "stdout"), run.output.pump(part.stderr_fd, "stderr")]
        code = run.launcher.wait(part)
        for pump in pumps:
            pump.join(PUMP_JOIN_S)
        if code != 0:
            raise PrepareFailed(code)

    def stop(self, grace_s: float = 5.0) -> None:
        self._stopping = True
        for run in self.ranks:
            if run.running is not None and run.exit_code is None:
                run.torn_down = True
                threading.Thread(target=run.launcher.stop, args=(run.running, grace_s), daemon=True).start()

    def wait(self, timeout_s: float = 120.0) -> list[int | None]:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            self.stop(grace_s=1.0)
            for thread in self._threads:
                thread.join(30)
            raise TimeoutError(f"the gang did not end within {timeout_s} s: {self.describe()}")
        return [run.exit_code for run in self.ranks]

    def attempt_status(self) -> int | None:
        """The attempt's exit code as the scheduler reports it: the first rank, by rank, that
        ended on its own with a non-zero code (ranks torn down after it say nothing), else 0."""
        own = [run for run in self.ranks if not run.torn_down] or self.ranks
        for run in own:
            if run.exit_code not in (0, None):
                return run.exit_code
        return own[0].exit_code

    def wait_started(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(run.started_at is None for run in self.ranks):
            if time.monotonic() > deadline:
                raise TimeoutError("the gang did not start")
            time.sleep(0.05)

    def wait_for_output(self, text: str, timeout_s: float = 120.0) -> None:
        """Block until some rank's stdout holds `text` (output streams while the job runs)."""
        deadline = time.monotonic() + timeout_s
        while not any(text in run.output.text("stdout") for run in self.ranks):
            if time.monotonic() > deadline or all(run.exit_code is not None for run in self.ranks):
                raise TimeoutError(f"no {text!r} in the output: {self.describe()}")
            time.sleep(0.05)

    def all_stdout(self) -> str:
        return "".join(run.output.text("stdout") for run in self.ranks)

    def all_stderr(self) -> str:
        return "".join(run.output.text("stderr") for run in self.ranks)

    def stdout(self, rank: int = 0) -> str:
        return self.ranks[rank].output.text("stdout")

    def stderr(self, rank: int = 0) -> str:
        return self.ranks[rank].output.text("stderr")

    def describe(self) -> str:
        return "; ".join(
            f"rank {r.ctx.rank}: exit {r.exit_code}, stdout {r.output.text('stdout')[-2000:]!r}, "
            f"stderr {r.output.text('stderr')[-3000:]!r}"
            for r in self.ranks
        )

    def leftover_processes(self) -> list[str]:
        return [" ".join(p.cmdline()) for p in tagged_processes({"TRAINYARD_JOB_ID": self.job_id}) if _alive(p)]


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(PUMP_JOIN_S)


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.status() != "zombie")
    except Exception:
        return False
