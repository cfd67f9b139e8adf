"""Azure Batch AI job files (2018-05-01) submitted to a real cluster run with Batch AI's variables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration import launchers_conftest_helpers as helpers
from tests.services import in_ci
from tests.workers.launchers import components
from trainyard.batchai import batchai_to_spec
from trainyard.client import Client
from trainyard.spec import parse_job_spec

pytestmark = pytest.mark.integration

launchers_cluster = helpers.launchers_cluster
launchers_client = helpers.launchers_client
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "batchai"


def _job_file(name: str, tmp_path: Path) -> dict[str, Any]:
    """An example job file with its Azure inputs and outputs pointed at this machine's disk."""
    doc = json.loads((EXAMPLES / name).read_text())
    props = doc["properties"]
    for ref in props.get("inputDirectories", []):
        ref["path"] = f"file://{EXAMPLES / ref['path'].rsplit('/', 1)[-1]}/"
    for ref in props.get("outputDirectories", []):
        ref["pathPrefix"] = f"file://{tmp_path / 'outputs'}"
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return doc


def _have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def test_a_custom_toolkit_job_file_runs_with_its_priority_prepare_and_variables(
    client: Client, cli_env: dict[str, str], tmp_path: Path
) -> None:
    _job_file("custom-toolkit.json", tmp_path)
    submitted = subprocess.run(
        [sys.executable, "-m", "trainyard", "job", "submit", "--format", "batchai",
         str(tmp_path / "custom-toolkit.json"), "--pool", "default", "--json"],
        env=cli_env, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = client.job(json.loads(submitted.stdout)["id"])
    assert job.wait(timeout=120) == "succeeded", job.log_bytes(stream="stderr")
    assert job.data["priority"] == 750 and job.data["nodes"] == 1
    out = job.log_bytes().decode()
    assert "task 0 of trainyard with 0 GPU(s)" in out
    assert "preparing in " in out  # jobPreparation ran first, in AZ_BATCHAI_JOB_TEMP


def test_a_two_node_horovod_job_file_runs_as_an_mpi_gang_and_writes_its_output(client: Client, tmp_path: Path) -> None:
    if not _have("mpi4py"):
        if in_ci():
            pytest.fail("mpi4py is missing (scripts/install-mpi.sh)")
        pytest.skip("mpi4py is missing")
    spec, _warnings = batchai_to_spec(_job_file("horovod-2node.json", tmp_path), name="hvd", pool="default")
    assert (spec["nodes"], spec["launcher"], spec["processes_per_node"]) == (2, "horovod", 1)
    job = client.submit(spec)
    assert job.wait(timeout=180) == "succeeded", job.log_bytes(stream="stderr")[-2000:]
    assert {len(a["nodes"]) for a in job.data["attempts"]} == {2}
    written = list((tmp_path / "outputs").rglob("*"))
    assert any(p.is_file() for p in written), written


def test_a_pytorch_job_file_runs_on_two_nodes_with_the_batchai_rendezvous(client: Client, tmp_path: Path) -> None:
    if not _have("torch"):
        if in_ci():
            pytest.fail("torch is missing (pip install torch==2.13.0)")
        pytest.skip("torch is missing")
    spec, _warnings = batchai_to_spec(_job_file("pytorch-gloo.json", tmp_path), name="pt", pool="default")
    assert spec["nodes"] == 2
    job = client.submit(spec)
    assert job.wait(timeout=240) == "succeeded", job.log_bytes(stream="stderr")[-2000:]
    assert len(job.data["attempts"][-1]["nodes"]) == 2


def test_a_container_job_file_runs_in_its_image_with_the_batchai_variables(
    launchers_client: Client, tmp_path: Path
) -> None:
    components.require("container")
    doc = _job_file("container.json", tmp_path)
    spec, _warnings = batchai_to_spec(doc, name="ctr")
    assert spec["image"] == "python:3.11-slim" and parse_job_spec(spec).priority == 250
    # No registry is reachable here: the same job file, pointed at the locally built test image.
    props = doc["properties"]
    props["containerSettings"]["imageSourceRegistry"]["image"] = components.TEST_IMAGE
    props["customToolkitSettings"]["commandLine"] = 'echo "task $AZ_BATCHAI_TASK_INDEX in $(cat /etc/hostname)"'
    spec, _warnings = batchai_to_spec(doc, name="ctr", pool="default")
    job = launchers_client.submit(spec)
    assert job.wait(timeout=180) == "succeeded", job.log_bytes(stream="stderr")[-2000:]
    assert job.log_bytes().startswith(b"task 0 in ")


ALLREDUCE_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rank, size, mine, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    mine = rank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d on node %s sum %d\n", rank, size, getenv("TRAINYARD_NODE_RANK"), sum);
    MPI_Finalize();
    return 0;
}
"""


def test_a_custom_toolkit_job_runs_its_own_mpirun_over_two_nodes_through_the_rsh_agent(
    launchers_client: Client, tmp_path: Path
) -> None:
    if shutil.which("mpirun") is None or shutil.which("mpicc") is None:
        if in_ci():
            pytest.fail("Open MPI with mpicc is missing (scripts/install-mpi.sh)")
        pytest.skip("Open MPI with mpicc is missing")
    (tmp_path / "allreduce.c").write_text(ALLREDUCE_C)
    subprocess.run(["mpicc", "-o", str(tmp_path / "allreduce"), str(tmp_path / "allreduce.c")], check=True, timeout=120)
    command = (
        f"cat $AZ_BATCHAI_MPI_HOST_FILE; echo hosts=$AZ_BATCH_HOST_LIST; "
        f"mpirun -np 4 -hostfile $AZ_BATCHAI_MPI_HOST_FILE {tmp_path / 'allreduce'}"
    )
    doc = {"properties": {"nodeCount": 2, "customToolkitSettings": {"commandLine": command}}}
    spec, _warnings = batchai_to_spec(doc, name="own-mpirun", slots=2)
    assert (spec["launcher"], spec["nodes"], spec["processes_per_node"]) == ("mpi", 2, 2)
    job = launchers_client.submit(spec)
    assert job.wait(timeout=180) == "succeeded", job.log_bytes(stream="stderr")[-3000:]
    out = job.log_bytes().decode()
    hosts = [line.split()[0] for line in out.splitlines() if " slots=2" in line]
    assert len(hosts) == 2 and len(set(hosts)) == 2, out
    assert f"hosts={','.join(hosts)}" in out
    ranks = sorted(line for line in out.splitlines() if line.startswith("rank "))
    assert ranks == [f"rank {r} of 4 on node {r // 2} sum 10" for r in range(4)], out


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainyard", *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )


def test_a_job_file_that_asks_for_no_gpus_gets_every_gpu_of_its_pools_nodes(
    launchers_cluster: Any, tmp_path: Path
) -> None:
    env = dict(os.environ, TRAINYARD_API_URL=launchers_cluster.api_url, TRAINYARD_TOKEN=launchers_cluster.admin_token)
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": "true"}}}))
    done = _cli(["job", "submit", "--format", "batchai", "--dry-run", str(path), "--pool", "default"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resources"]["gpus"] == helpers.GPUS_PER_NODE
    assert f"resources.gpus: {helpers.GPUS_PER_NODE} per node, the GPUs of pool default's nodes" in done.stderr
    done = _cli(["job", "submit", "--format", "batchai", "--dry-run", str(path), "--pool", "empty"], env)
    assert json.loads(done.stdout)["resources"]["gpus"] == 0
    assert "pool empty has no nodes to count GPUs on" in done.stderr
    done = _cli(["job", "submit", "--format", "batchai", "--dry-run", str(path), "--gpus", "1"], env)
    assert json.loads(done.stdout)["resources"]["gpus"] == 1 and "GPUs of pool" not in done.stderr


CLUSTER_FILE = {
    "name": "demo/bai-auto",
    "properties": {
        "vmSize": "STANDARD_NC12",
        "scaleSettings": {"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 2}},
        "userAccountSettings": {"adminUserName": "demo", "adminUserPassword": "not-shown"},
        "nodeSetup": {
            "setupTask": {
                "commandLine": "echo ready",
                "environmentVariables": [{"name": "STAGE", "value": "warm"}],
                "secrets": [{"name": "REGISTRY_TOKEN", "value": "tok-123"}],
                "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            },
            "mountVolumes": {
                "azureFileShares": [
                    {
                        "accountName": "a",
                        "azureFileUrl": "https://a.file.core.windows.net/scripts",
                        "relativeMountPath": "afs",
                    }
                ]
            },
        },
    },
}


def test_a_cluster_file_creates_a_pool_with_its_scale_volumes_and_setup_task(
    client: Client, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(CLUSTER_FILE))
    refused = _cli(["pool", "create", "--format", "batchai", str(path)], cli_env)
    assert refused.returncode == 2 and "nodeSetup.mountVolumes.azureFileShares[0]" in refused.stderr
    dry = _cli(
        ["pool", "create", "--format", "batchai", "--dry-run", str(path), "--volume", f"scripts={tmp_path}"], cli_env
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["setup"]["secrets"] == {"REGISTRY_TOKEN": "***"}
    assert "warning: userAccountSettings: not applied" in dry.stderr and "not-shown" not in dry.stderr + dry.stdout
    assert "bai-auto" not in [p["name"] for p in client.pools()]  # a dry run changes nothing
    done = _cli(["pool", "create", "--format", "batchai", str(path), "--volume", f"scripts={tmp_path}"], cli_env)
    assert done.returncode == 0, done.stderr
    pool = next(p for p in client.pools() if p["name"] == "bai-auto")
    settings = pool["settings"]
    assert (pool["min_nodes"], pool["max_nodes"], settings["autoscale"], settings["gpus_per_node"]) == (0, 2, True, 2)
    [volume] = settings["volumes"]
    assert (volume["name"], volume["kind"], volume["path"]) == ("bai_cluster_afs", "host", str(tmp_path))
    assert volume["mount_path"] == ".batchai/mounts/afs"  # $AZ_BATCHAI_MOUNT_ROOT/afs in the pool's jobs
    assert settings["setup"]["command"] == "echo ready"
    assert settings["setup"]["env"] == {
        "STAGE": "warm",
        "AZ_BATCHAI_COMPAT": "2018-05-01",  # the node gives the task $AZ_BATCHAI_MOUNT_ROOT and the rest
        "AZ_BATCHAI_STDOUTERR_PREFIX": "$AZ_BATCHAI_MOUNT_ROOT/afs",
    }
    assert "tok-123" not in json.dumps(pool)
