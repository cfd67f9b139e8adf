"""Multi-node jobs of every launcher through a real cluster: API, scheduler, workers; real MPI, Ray, torch, Podman."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration import launchers_conftest_helpers as helpers
from tests.integration.launchers_conftest_helpers import GPUS_PER_NODE, finished, no_process_left, wait_for_log
from tests.workers.launchers import components
from trainyard.client import Client

pytestmark = pytest.mark.integration

# This module's own cluster (nodes with GPUs, the container engine), not the suite's shared one.
launchers_cluster = helpers.launchers_cluster
launchers_client = helpers.launchers_client

PYTHON = sys.executable

MPI_ALLREDUCE = """
from mpi4py import MPI
world = MPI.COMM_WORLD
total = world.allreduce(world.rank + 1)
if world.rank == 0:
    print(f"size={world.size} sum={total}", flush=True)
"""

RAY_PLACEMENT = """
import ray
from ray.util.placement_group import placement_group
ray.init()
alive = [node for node in ray.nodes() if node["Alive"]]
print(f"ray-nodes={len(alive)}", flush=True)
group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
ray.get(group.ready(), timeout=120)
print("placement-group-ready", flush=True)
"""

TORCH_ALLREDUCE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(f"rank={dist.get_rank()} world={dist.get_world_size()} sum={value.item()}", flush=True)
dist.destroy_process_group()
"""

MPI_HANG = """
import os, time
from mpi4py import MPI
world = MPI.COMM_WORLD
marks = os.environ["MARKS"]
open(os.path.join(marks, f"{world.rank}-{os.environ['TRAINYARD_NODE_RANK']}.pid"), "w").write(str(os.getpid()))
world.barrier()
time.sleep(600)
"""


def _program(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return f"{PYTHON} {path}"


@pytest.mark.parametrize("launcher", ["mpi", "horovod"])
def test_mpi_allreduce_over_two_nodes_prints_the_sum_from_rank_zero(
    launcher: str, launchers_client: Client, tmp_path: Path
) -> None:
    components.require_mpi()
    job = launchers_client.submit(
        {
            "name": f"{launcher}-allreduce",
            "launcher": launcher,
            "nodes": 2,
            "processes_per_node": 2,
            "max_retries": 0,
            "command": _program(tmp_path, "allreduce.py", MPI_ALLREDUCE),
        }
    )
    data = finished(job)
    log = job.log_bytes(rank=0).decode()
    assert data["state"] == "succeeded", (data, log, job.log_bytes(rank=0, stream="stderr"))
    assert "size=4 sum=10" in log  # 1 + 2 + 3 + 4 over 2 nodes x 2 ranks
    assert len(set(data["attempts"][0]["nodes"])) == 2
    assert no_process_left(job.id) == []


def test_ray_gang_sees_two_nodes_places_a_strict_spread_group_and_leaves_no_ray_process(
    launchers_client: Client, tmp_path: Path
) -> None:
    components.require_ray()
    job = launchers_client.submit(
        {
            "name": "ray-gang",
            "launcher": "ray",
            "nodes": 2,
            "max_retries": 0,
            "command": _program(tmp_path, "placement.py", RAY_PLACEMENT),
        }
    )
    data = finished(job)
    log = job.log_bytes(rank=0).decode()
    assert data["state"] == "succeeded", (data, log, job.log_bytes(rank=0, stream="stderr")[-4000:])
    assert "ray-nodes=2" in log
    assert "placement-group-ready" in log
    assert no_process_left(job.id) == []  # raylets, GCS, workers of this gang on both nodes


def test_torchrun_gloo_allreduce_over_two_nodes(launchers_client: Client, tmp_path: Path) -> None:
    components.require_torch()
    job = launchers_client.submit(
        {
            "name": "torchrun-allreduce",
            "launcher": "torchrun",
            "nodes": 2,
            "processes_per_node": 1,
            "max_retries": 0,
            "command": _program(tmp_path, "allreduce.py", TORCH_ALLREDUCE),
        }
    )
    data = finished(job)
    assert data["state"] == "succeeded", (data, job.log_bytes(rank=0, stream="stderr")[-4000:])
    assert "rank=0 world=2 sum=3.0" in job.log_bytes(rank=0).decode()
    assert "rank=1 world=2 sum=3.0" in job.log_bytes(rank=1).decode()


def test_killing_one_rank_fails_the_attempt_and_leaves_no_process_on_any_node(
    launchers_client: Client, tmp_path: Path
) -> None:
    components.require_mpi()
    marks = tmp_path / "marks"
    marks.mkdir()
    job = launchers_client.submit(
        {
            "name": "mpi-rank-dies",
            "launcher": "mpi",
            "nodes": 2,
            "processes_per_node": 2,
            "max_retries": 0,
            "env": {"MARKS": str(marks)},
            "command": _program(tmp_path, "hang.py", MPI_HANG),
        }
    )
    deadline = time.monotonic() + 120
    while len(list(marks.glob("*.pid"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = next(marks.glob("*-1.pid"))  # an MPI rank on the second node
    os.kill(int(victim.read_text()), signal.SIGKILL)
    data = finished(job)

    assert data["state"] == "failed", data
    assert data["exit_code"] == 137  # the killed rank's status, through mpirun
    assert no_process_left(job.id) == []


def test_container_job_reads_its_input_writes_its_output_and_streams_stdout(
    launchers_client: Client, tmp_path: Path
) -> None:
    components.docker_url()
    (tmp_path / "data.txt").write_text("forty-two\n")
    outputs = tmp_path / "results"
    job = launchers_client.submit(
        {
            "name": "container-io",
            "image": components.TEST_IMAGE,
            "max_retries": 0,
            "inputs": [{"id": "data", "uri": f"file://{tmp_path / 'data.txt'}"}],
            "outputs": [{"id": "result", "uri": f"file://{outputs}/"}],
            "command": 'echo "read $(cat $TRAINYARD_INPUT_DATA)"; sleep 3; '
            'echo answer > "$TRAINYARD_OUTPUT_RESULT/answer.txt"; echo done',
        }
    )
    assert "read forty-two" in wait_for_log(job, "read forty-two")  # streamed while the job still runs
    assert job.refresh().data["state"] == "running"
    data = finished(job)
    assert data["state"] == "succeeded", (data, job.log_bytes(stream="stderr"))
    assert job.log_bytes().decode().endswith("done\n")
    assert (outputs / "answer.txt").read_text() == "answer\n"


def test_cancelling_a_container_job_stops_and_removes_its_container(launchers_client: Client) -> None:
    url = components.docker_url()
    job = launchers_client.submit(
        {"name": "container-cancel", "image": components.TEST_IMAGE, "command": "echo started; sleep 300"}
    )
    wait_for_log(job, "started")
    launchers_client.cancel(job.id)
    assert finished(job, timeout_s=60)["state"] == "cancelled"
    import docker  # the SDK, imported here: the repository's docker/ folder shares its name

    engine = docker.DockerClient(base_url=url)
    try:
        deadline = time.monotonic() + 10
        left = engine.containers.list(all=True, filters={"label": f"trainyard.job={job.id}"})
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = engine.containers.list(all=True, filters={"label": f"trainyard.job={job.id}"})
        assert left == []
    finally:
        engine.close()


def test_one_gpu_jobs_on_a_four_gpu_node_get_four_different_gpus(launchers_client: Client, tmp_path: Path) -> None:
    jobs_total = 2 * GPUS_PER_NODE  # every GPU of both nodes taken at once
    ready = tmp_path / "ready"
    ready.mkdir()
    command = (
        f'echo "gpus=$CUDA_VISIBLE_DEVICES"; touch {ready}/$TRAINYARD_JOB_ID; '
        f'while [ "$(ls {ready} | wc -l)" -lt {jobs_total} ]; do sleep 0.1; done'
    )
    jobs = launchers_client.submit_many(
        [
            {"name": f"gpu-{i}", "command": command, "max_retries": 0, "resources": {"gpus": 1, "cpus": 0.5}}
            for i in range(jobs_total)
        ]
    )
    per_node: dict[str, list[str]] = {}
    for job in jobs:
        data = finished(job)
        assert data["state"] == "succeeded", data
        attempt = data["attempts"][0]
        seen = job.log_bytes().decode().strip()
        assert seen == f"gpus={attempt['gpus'][0][0]}"  # exactly the index the scheduler gave
        per_node.setdefault(attempt["nodes"][0], []).append(seen)
    for node, seen in per_node.items():
        assert len(seen) == len(set(seen)), f"{node} gave one GPU twice: {seen}"
    assert sorted(len(seen) for seen in per_node.values()) == [GPUS_PER_NODE, GPUS_PER_NODE]


def test_prepare_runs_on_every_node_before_the_command(launchers_client: Client) -> None:
    job = launchers_client.submit(
        {
            "name": "prepare-gang",
            "nodes": 2,
            "max_retries": 0,
            "prepare": 'echo "prepared on $TRAINYARD_NODE_RANK"; echo ready > prepared.txt',
            "command": "cat prepared.txt",
        }
    )
    assert finished(job)["state"] == "succeeded"
    for rank in (0, 1):
        assert job.log_bytes(rank=rank).decode() == f"prepared on {rank}\nready\n"


def test_prepare_failure_fails_the_attempt_with_reason_prepare_failed_and_keeps_its_output(
    launchers_client: Client,
) -> None:
    job = launchers_client.submit(
        {
            "name": "prepare-fails",
            "max_retries": 0,
            "command": "echo never",
            "prepare": "echo preparing; echo broken >&2; exit 4",
        }
    )
    data = finished(job)
    assert data["state"] == "failed"
    assert data["exit_code"] == 4
    assert data["attempts"][0]["reason"] == "prepare_failed"
    assert job.log_bytes().decode() == "preparing\n"
    assert "broken" in job.log_bytes(stream="stderr").decode()


def test_a_container_job_writes_1_gib_to_dev_shm_and_a_smaller_shm_size_holds(launchers_client: Client) -> None:
    """The engines' 64 MiB /dev/shm crashes PyTorch data loaders; the default holds 1 GiB, shm_size is applied."""
    components.docker_url()
    write = "dd if=/dev/zero of=/dev/shm/blob bs=1048576 count=1024 && ls -l /dev/shm/blob && df -k /dev/shm"
    default = launchers_client.submit(
        {"name": "shm-default", "image": components.TEST_IMAGE, "max_retries": 0, "command": write}
    )
    small = launchers_client.submit(
        {
            "name": "shm-small",
            "image": components.TEST_IMAGE,
            "max_retries": 0,
            "container": {"shm_size": "128m"},
            "command": write,
        }
    )
    data = finished(default, timeout_s=180)
    assert data["state"] == "succeeded", (data, default.log_bytes(stream="stderr"))
    assert " 1073741824 " in default.log_bytes().decode()
    data = finished(small, timeout_s=180)
    assert data["state"] == "failed", data
    assert b"No space left on device" in small.log_bytes(stream="stderr")
