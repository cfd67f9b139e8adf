"""Gangs over two separate hosts: MPI (ranks spawned through the rsh agent over Redis), torchrun and Ray."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns.cluster import NetnsCluster
from tests.workers.launchers import components
from trainyard.client import Client, Job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

GANG_TIMEOUT_S = 180.0

MPI_ALLREDUCE = """
import socket
from mpi4py import MPI
world = MPI.COMM_WORLD
total = world.allreduce(world.rank + 1)
hosts = world.gather(socket.gethostname())
if world.rank == 0:
    print(f"size={world.size} sum={total} hosts={','.join(sorted(set(hosts)))}", flush=True)
"""

TORCH_ALLREDUCE = """
import socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(f"rank={dist.get_rank()} world={dist.get_world_size()} sum={value.item()} on {socket.gethostname()}", flush=True)
dist.destroy_process_group()
"""

RAY_PLACEMENT = """
import ray
from ray.util.placement_group import placement_group
ray.init()
addresses = sorted(node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"])
print(f"ray-nodes={','.join(addresses)}", flush=True)
group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
ray.get(group.ready(), timeout=120)
print("placement-group-ready", flush=True)
"""


def _code(tmp_path: Path, source: str) -> str:
    """A code directory with the program: each node stages its own copy from the store."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "program.py").write_text(source)
    return str(code)


def _gang(client: Client, launcher: str, code: str, **spec: Any) -> tuple[Job, dict[str, Any]]:
    job = client.submit(
        {
            "name": f"{launcher}-gang",
            "launcher": launcher,
            "nodes": 2,
            "max_retries": 0,
            "code": code,
            "command": f"{sys.executable} program.py",  # relative: every rank in its own node's copy
            **spec,
        }
    )
    job.wait(timeout=GANG_TIMEOUT_S, poll_s=0.2)
    return job, dict(job.data)


def _addresses(cluster: NetnsCluster) -> list[str]:
    return sorted(host.address for host in cluster.hosts.values())


def test_mpi_allreduce_spans_both_hosts_with_ranks_in_their_own_node_s_directory(
    netns_cluster: NetnsCluster, netns_client: Client, tmp_path: Path
) -> None:
    components.require_mpi()
    job, data = _gang(netns_client, "mpi", _code(tmp_path, MPI_ALLREDUCE), processes_per_node=2)
    assert data["state"] == "succeeded", (data, job.log_bytes(rank=0, stream="stderr")[-4000:])
    assert job.log_bytes(rank=0).decode() == "size=4 sum=10 hosts=node-1,node-2\n"  # 2 hosts x 2 ranks
    # Neither node keeps Open MPI's session files or trainyard's rsh agent dir past the job.
    for host in netns_cluster.hosts.values():
        assert host.run(["sh", "-c", "ls -d /tmp/trainyard-* 2>/dev/null"]).stdout == "", host.name


def test_torchrun_gloo_allreduce_spans_both_hosts(
    netns_cluster: NetnsCluster, netns_client: Client, tmp_path: Path
) -> None:
    components.require_torch()
    job, data = _gang(netns_client, "torchrun", _code(tmp_path, TORCH_ALLREDUCE))
    assert data["state"] == "succeeded", (data, job.log_bytes(rank=0, stream="stderr")[-4000:])
    nodes = data["attempts"][0]["nodes"]
    for rank in (0, 1):
        expected = f"rank={rank} world=2 sum=3.0 on {nodes[rank]}\n"
        assert job.log_bytes(rank=rank).decode() == expected


def test_ray_cluster_spans_both_hosts_and_places_a_strict_spread_group(
    netns_cluster: NetnsCluster, netns_client: Client, tmp_path: Path
) -> None:
    components.require_ray()
    job, data = _gang(netns_client, "ray", _code(tmp_path, RAY_PLACEMENT))
    log = job.log_bytes(rank=0).decode()
    assert data["state"] == "succeeded", (data, log, job.log_bytes(rank=0, stream="stderr")[-4000:])
    assert f"ray-nodes={','.join(_addresses(netns_cluster))}\n" in log
    assert "placement-group-ready\n" in log
