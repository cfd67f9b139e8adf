"""Jobs on nodes that are separate hosts: the walking skeleton, live logs, and a node lost for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.cluster import NetnsCluster
from trainyard.client import Client, Job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LIVE_LAG_LIMIT_S = 2.0
TERMINAL = ("succeeded", "failed", "cancelled")


def _wait_for(job: Job, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = job.log_bytes().decode(errors="replace")
        if text in log:
            return log
        if job.refresh().data["state"] in TERMINAL:
            break
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {job.id}'s log: {job.data}")


def test_nodes_find_their_own_address_and_share_no_path_with_the_control_plane(
    netns_cluster: NetnsCluster, netns_client: Client, tmp_path: Path
) -> None:
    nodes = netns_cluster.nodes()
    # No --address given: each worker took the address of its interface towards Redis.
    assert {name: nodes[name]["address"] for name in netns_cluster.hosts} == {
        name: host.address for name, host in netns_cluster.hosts.items()
    }
    code = tmp_path / "code"
    code.mkdir()
    (code / "hello.py").write_text("import socket\nprint(f'hello from {socket.gethostname()}', flush=True)\n")
    control_home = netns_cluster.plane.home
    job = netns_client.submit(
        {
            "name": "skeleton",
            "code": str(code),  # uploaded through the API to S3, staged by the node from there
            "max_retries": 0,
            "command": f'{sys.executable} hello.py; test ! -e {control_home} && test ! -e {code} && echo "private"',
        }
    )
    lines = list(job.logs(follow=True))
    assert job.wait(timeout=60) == "succeeded", (job.data, job.log_bytes(stream="stderr"))
    node = job.data["attempts"][0]["nodes"][0]
    assert lines == [f"hello from {node}\n", "private\n"]


def test_output_streams_live_through_the_api_and_the_cli(netns_cluster: NetnsCluster, netns_client: Client) -> None:
    script = "import sys, time\nfor i in range(20):\n    print(f'{i} {time.time():.6f}')\n    time.sleep(0.15)\n"
    script += "sys.stderr.buffer.write(bytes(range(256)))\n"
    job = netns_client.submit({"name": "live", "max_retries": 0, "command": [sys.executable, "-c", script]})
    lags, numbers = [], []
    for line in job.logs(follow=True):
        arrived = time.time()
        number, printed = line.split()
        numbers.append(int(number))
        lags.append(arrived - float(printed))
    assert numbers == list(range(20))
    assert job.wait(timeout=60) == "succeeded"
    assert max(lags) < LIVE_LAG_LIMIT_S, sorted(lags)[-3:]
    assert job.log_bytes(stream="stderr") == bytes(range(256))
    plane = netns_cluster.plane
    env = dict(os.environ, TRAINYARD_API_URL=plane.api_url, TRAINYARD_TOKEN=plane.admin_token)
    followed = subprocess.run(
        [sys.executable, "-m", "trainyard", "job", "logs", job.id, "--follow"],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    assert [int(line.split()[0]) for line in followed.stdout.decode().splitlines()] == list(range(20))


def test_a_node_killed_with_sigkill_is_lost_and_its_job_runs_again_on_the_other_node(
    netns_cluster: NetnsCluster, netns_client: Client
) -> None:
    job = netns_client.submit(
        {
            "name": "survivor",
            "max_retries": 0,
            "command": 'echo "attempt $TRAINYARD_ATTEMPT on $(hostname)"; [ "$TRAINYARD_ATTEMPT" -gt 1 ] || sleep 300',
        }
    )
    _wait_for(job, "attempt 1 on ")
    first = job.refresh().data["attempts"][0]["nodes"][0]
    host = netns_cluster.hosts[first]
    os.kill(netns_cluster.workers[first].pid, signal.SIGKILL)

    assert job.wait(timeout=90) == "succeeded", job.data
    attempts = job.data["attempts"]
    survivor = next(name for name in netns_cluster.hosts if name != first)
    assert [a["reason"] for a in attempts] == ["node_lost", "exit"]
    assert attempts[1]["nodes"] == [survivor]
    assert job.log_bytes(attempt=2) == f"attempt 2 on {survivor}\n".encode()
    assert netns_cluster.nodes()[first]["state"] == "lost"
    # The lost node's watchdog ended the job there: only the host's namespace holder is left.
    deadline = time.monotonic() + 10
    while host.pids() != [str(host.holder.pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host.pids() == [str(host.holder.pid)]
