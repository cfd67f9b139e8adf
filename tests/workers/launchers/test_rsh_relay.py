"""The rsh agent and its relay over a real Redis: MPI's remote starts without ssh."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.workers.launchers.gang import Captured
from trainyard.workers.launchers import LaunchContext, RunningPart, launcher_for, rsh_agent
from trainyard.workers.launchers.rsh_relay import RshRelay

HOSTS = ["127.0.0.2", "127.0.0.3"]


class Node:
    """One simulated node's part (a plain process standing by) with its relay."""

    def __init__(self, tmp_path: Path, client: redis.Redis, rank: int, job_id: str):
        self.ctx = LaunchContext(
            job_id=job_id,
            name="relay",
            attempt=1,
            rank=rank,
            num_nodes=2,
            node_hosts=HOSTS,
            node_address=HOSTS[rank],
            spec={"command": "sleep 60"},
            gpus=[],
            workdir=tmp_path / f"node-{rank}",
            checkpoint_dir=tmp_path / f"ckpt-{rank}",
            master_port=20000,
        )
        self.output = Captured()
        self.launcher = launcher_for("process")
        self.relay = RshRelay(client, self.ctx, self.output)
        self.part: RunningPart = self.launcher.start(self.ctx)
        self.relay.serve(self.launcher, self.part)

    def close(self) -> None:
        self.launcher.stop(self.part, grace_s=1.0)
        self.relay.close()


@pytest.fixture
def gang(tmp_path: Path, relay_redis_url: str, request: pytest.FixtureRequest) -> Iterator[list[Node]]:
    client = redis.Redis.from_url(relay_redis_url)
    job_id = f"relay-{request.node.name[-20:]}-{time.monotonic_ns()}"
    nodes = [Node(tmp_path, client, rank, job_id) for rank in range(2)]
    yield nodes
    for node in nodes:
        node.close()
    client.close()


def rsh(node: Node, *args: str) -> subprocess.Popen[str]:
    """Run the rsh agent as mpirun would, from inside `node`'s part."""
    env = {"PATH": "/usr/bin:/bin", **node.ctx.extra_env}
    return subprocess.Popen(
        [sys.executable, "-I", rsh_agent.__file__, *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_the_command_runs_in_the_named_nodes_part_and_its_status_comes_back(gang: list[Node]) -> None:
    agent = rsh(gang[0], HOSTS[1], 'echo "on $TRAINYARD_NODE_RANK"; echo oops >&2; exit 5')
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == 5, err
    deadline = time.monotonic() + 5
    while "on 1" not in gang[1].output.text("stdout") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gang[1].output.text("stdout") == "on 1\n"  # the target part's environment, into its logs
    assert "oops" in gang[1].output.text("stderr")
    assert gang[0].output.text("stdout") == ""


def test_a_host_outside_the_gang_is_refused_like_an_unreachable_ssh_host(gang: list[Node]) -> None:
    agent = rsh(gang[0], "10.1.2.3", "true")
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == rsh_agent.AGENT_FAILED
    assert "10.1.2.3 is not a node of this gang" in err


def test_when_the_rsh_agent_dies_the_remote_command_is_killed(gang: list[Node]) -> None:
    agent = rsh(gang[0], HOSTS[1], "echo started; exec sleep 303")
    deadline = time.monotonic() + 30
    while "started" not in gang[1].output.text("stdout") and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=10)  # reads its pipes to the end and closes them
    deadline = time.monotonic() + 10
    while _sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleepers() == []


def _sleepers() -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", "303"]:
            found.append(proc.pid)
    return found
