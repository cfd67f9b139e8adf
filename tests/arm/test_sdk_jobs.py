"""Batch AI jobs through Azure's own SDKs (azure-mgmt-batchai 7.0.0 and 2.0.0) on a real cluster: every
example job file (examples/batchai/*.json) and a recipe job file run to `succeeded`, lists page, a
running job's stdout.txt is read by range through its download link, terminate and delete, deletes of
what is not there end their pollers, and the recipes' bulk parameter sweep.

Both generations send the same 2018-05-01 bodies; what differs is the client plumbing (msrest's
pollers and pages against azure-core's begin_*/by_page). So the job files run through 7.0.0 only,
and 2.0.0 drives every call kind once: create, get, list, output files and links, terminate, delete,
the deletes of what is not there, and the sweep's creates left polling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.arm.clients import ArmTarget, run_client
from tests.services import in_ci
from tests.workers.launchers import components

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "sdk_jobs_script.py"
EXAMPLES = HERE.parents[1] / "examples" / "batchai"
RECIPES = HERE.parents[1] / "tests" / "data" / "batchai-recipes"
FLAVORS = ("sdk7", "sdk2")
# Example files that run on the test cluster's plain CPU nodes; each of the others has a test of its own
# (MPI, torch, a container engine), and every file of the folder is one of these.
PLAIN_EXAMPLES = ("custom-toolkit.json", "io-env-secrets.json")
OWN_TESTS = ("horovod-2node.json", "pytorch-gloo.json", "container.json")


def cluster_id(target: ArmTarget, workspace: str, pool: str = "default") -> str:
    """A cluster id naming the trainyard pool the test cluster's nodes are in."""
    return (f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}"
            f"/providers/Microsoft.BatchAI/workspaces/{workspace}/clusters/{pool}")  # fmt: skip


def on_local_disk(doc: dict[str, Any], target: ArmTarget, workspace: str, tmp_path: Path) -> dict[str, Any]:
    """A job file with its cluster the test pool and its Azure inputs and outputs on this machine's disk."""
    doc = json.loads(json.dumps(doc))
    doc.pop("$schema", None)
    props = doc["properties"]
    props["cluster"] = {"id": cluster_id(target, workspace)}
    for ref in props.get("inputDirectories", []):
        ref["path"] = f"file://{EXAMPLES / ref['path'].rsplit('/', 1)[-1]}/"
    for ref in props.get("outputDirectories", []):
        ref["pathPrefix"] = f"file://{tmp_path / 'outputs'}"
    return doc


def _run(flavor: str, mode: str, args: dict[str, Any], target: ArmTarget, tmp_path: Path) -> Any:
    args_file = tmp_path / f"{flavor}-{mode}.json"
    args_file.write_text(json.dumps(args))
    return run_client(flavor, SCRIPT, flavor, mode, str(args_file), target=target, timeout_s=420)


def test_example_job_files_run_to_succeeded_and_page_through_the_sdk(arm_target: ArmTarget, tmp_path: Path) -> None:
    flavor = "sdk7"
    workspace = f"examples-{flavor}"
    jobs = {
        Path(name).stem.replace("-", "_"): on_local_disk(
            json.loads((EXAMPLES / name).read_text()), arm_target, workspace, tmp_path
        )
        for name in PLAIN_EXAMPLES
    }
    result = _run(
        flavor, "jobs", {"workspace": workspace, "experiment": "examples", "jobs": jobs}, arm_target, tmp_path
    )
    assert result["states"] == dict.fromkeys(jobs, "succeeded"), result["stderr"]
    assert result["exit_codes"] == dict.fromkeys(jobs, 0) and set(result["tool_types"].values()) == {"custom"}
    assert result["listed"] == sorted(jobs)
    assert result["pages"] == 1 + (len(jobs) - 1) // 2  # maxresults=2: nextLink followed
    assert result["files"] == ["stderr.txt", "stdout.txt"]
    assert result["stdout_status"] == 206 and result["stdout"].startswith(result["stdout_head"])
    assert "task 0 of trainyard" in result["stdout"]
    assert list((tmp_path / "outputs").rglob("report.txt")), "io-env-secrets wrote no report"


def _importable(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def test_the_two_node_pytorch_example_runs_and_its_model_output_is_listed_and_downloaded(
    arm_target: ArmTarget, tmp_path: Path
) -> None:
    if not _importable("torch"):
        pytest.skip("torch is missing")
    doc = on_local_disk(json.loads((EXAMPLES / "pytorch-gloo.json").read_text()), arm_target, "frameworks", tmp_path)
    args = {"workspace": "frameworks", "experiment": "pytorch", "jobs": {"pt": doc}, "output_id": "MODEL"}
    result = _run("sdk7", "jobs", args, arm_target, tmp_path)
    assert result["states"] == {"pt": "succeeded"}, result["stderr"]
    files = {name: body for name, body in result["outputs"].items() if body != "(directory)"}
    assert files, result["outputs"]
    for name, body in files.items():  # each link gives the bytes the job wrote
        on_disk = [p.read_bytes().decode(errors="replace") for p in (tmp_path / "outputs").rglob(name)]
        assert body in on_disk, name


def test_the_two_node_horovod_example_runs_as_an_mpi_gang_and_its_model_output_is_listed(
    arm_target: ArmTarget, tmp_path: Path
) -> None:
    if not _importable("mpi4py"):  # as tests/integration/test_batchai_jobs.py: CI must have it
        if in_ci():
            pytest.fail("mpi4py is missing (scripts/install-mpi.sh)")
        pytest.skip("mpi4py is missing")
    doc = on_local_disk(json.loads((EXAMPLES / "horovod-2node.json").read_text()), arm_target, "mpi", tmp_path)
    args = {"workspace": "mpi", "experiment": "horovod", "jobs": {"hvd": doc}, "output_id": "MODEL"}
    result = _run("sdk7", "jobs", args, arm_target, tmp_path)
    assert result["states"] == {"hvd": "succeeded"}, result["stderr"]
    assert result["tool_types"] == {"hvd": "horovod"}
    files = {name: body for name, body in result["outputs"].items() if body != "(directory)"}
    assert files, result["outputs"]
    for name, body in files.items():
        assert body in [p.read_text(errors="replace") for p in (tmp_path / "outputs").rglob(name)], name


def test_the_container_example_runs_in_its_image_on_the_clusters_engine(arm_target: ArmTarget, tmp_path: Path) -> None:
    flavor = "sdk7"
    components.docker_url()  # skips (fails in CI) without an engine; the cluster's nodes were given it
    doc = on_local_disk(json.loads((EXAMPLES / "container.json").read_text()), arm_target, f"ctr-{flavor}", tmp_path)
    # No registry is reachable here: the same job file on the locally built test image (busybox: no python).
    props = doc["properties"]
    props["containerSettings"]["imageSourceRegistry"]["image"] = components.TEST_IMAGE
    props["customToolkitSettings"]["commandLine"] = 'echo "task $AZ_BATCHAI_TASK_INDEX in $(cat /etc/hostname)"'
    args = {"workspace": f"ctr-{flavor}", "experiment": "container", "jobs": {"ctr": doc}}
    result = _run(flavor, "jobs", args, arm_target, tmp_path)
    assert result["states"] == {"ctr": "succeeded"}, result["stderr"]
    assert result["stdout"].startswith("task 0 in "), result["stdout"]


def test_every_example_job_file_has_a_test_here() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(PLAIN_EXAMPLES + OWN_TESTS)


DELETE_MISSING = """
import sys
from clients import emit, sdk2_client, sdk7_client, target_from_env

flavor, ws = sys.argv[1:3]
target = target_from_env()
client = sdk7_client() if flavor == "sdk7" else sdk2_client()
rg = target.resource_group
if flavor == "sdk7":
    from azure.mgmt.batchai.models import WorkspaceCreateParameters
    client.workspaces.begin_create(rg, ws, WorkspaceCreateParameters(location="eastus")).result()
    client.experiments.begin_create(rg, ws, "exp").result()
else:
    client.workspaces.create(rg, ws, "eastus").result()
    client.experiments.create(rg, ws, "exp").result()
ended = {}
deletes = [
    ("workspace", client.workspaces, ("nowhere",)),
    ("experiment", client.experiments, (ws, "nothing")),
    ("job", client.jobs, (ws, "exp", "nobody")),
    ("job of a missing experiment", client.jobs, (ws, "nothing", "nobody")),
    ("cluster", client.clusters, (ws, "nothing")),
]
if flavor == "sdk2":  # 7.0.0 has no file server delete (create, get and list only)
    deletes.append(("file server", client.file_servers, (ws, "nothing")))
for kind, group, args in deletes:
    poller = (group.begin_delete if flavor == "sdk7" else group.delete)(rg, *args)
    poller.result(timeout=30) if flavor == "sdk2" else poller.result()
    ended[kind] = [poller.done(), str(poller.status()).lower()]
emit(ended)
"""


@pytest.mark.parametrize("flavor", FLAVORS)
def test_deleting_what_is_not_there_ends_every_delete_poller(flavor: str, arm_target: ArmTarget) -> None:
    ended = run_client(flavor, None, flavor, f"deletes-{flavor}", target=arm_target, code=DELETE_MISSING)
    kinds = {"workspace", "experiment", "job", "job of a missing experiment", "cluster"}
    assert set(ended) == kinds | ({"file server"} if flavor == "sdk2" else set())
    assert all(done and status == "succeeded" for done, status in ended.values()), ended


def test_a_recipe_job_file_with_a_local_command_runs_through_the_sdk(arm_target: ArmTarget, tmp_path: Path) -> None:
    recipe = json.loads((RECIPES / "Keras__Keras-GPU__job_tensorflow.json").read_text())
    props = recipe["properties"]
    tool = next(key for key in props if key.endswith("Settings") and key != "containerSettings")
    # The recipe's script and data are on Azure storage: the same file, with a command that needs none.
    props.pop("containerSettings", None)
    props.pop("inputDirectories", None)
    props.pop("outputDirectories", None)
    props.pop("mountVolumes", None)
    for key in [k for k in props if k.endswith("Settings") and k != "containerSettings"]:
        props.pop(key)
    props["customToolkitSettings"] = {"commandLine": f"echo recipe {tool} ran"}
    doc = on_local_disk(recipe, arm_target, "recipes", tmp_path)
    result = _run(
        "sdk7", "jobs", {"workspace": "recipes", "experiment": "keras", "jobs": {"keras": doc}}, arm_target, tmp_path
    )
    assert result["states"] == {"keras": "succeeded"}, result["stderr"]
    assert f"recipe {tool} ran" in result["stdout"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_running_jobs_stdout_is_read_by_range_then_it_is_terminated_and_deleted(
    flavor: str, arm_target: ArmTarget, tmp_path: Path
) -> None:
    workspace = f"live-{flavor}"
    job = {"properties": {
        "cluster": {"id": cluster_id(arm_target, workspace)},
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs",
        "customToolkitSettings": {"commandLine": "for i in $(seq 0 600); do echo tick $i; sleep 0.5; done"},
    }}  # fmt: skip
    args = {"workspace": workspace, "experiment": "live", "name": "ticker", "job": job}
    result = _run(flavor, "live", args, arm_target, tmp_path)
    assert result["running"] == "running" and result["while_running"] == "running"
    assert "tick 3" in result["seen"]
    assert result["range_status"] == 206 and result["range"] == "tick 1"
    assert result["files"] == ["stderr.txt", "stdout.txt"]
    assert result["listed"] == ["ticker"]
    assert result["after_terminate"] == "failed" and result["deleted"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_the_recipes_bulk_parameter_sweep_creates_and_runs_every_job(
    flavor: str, arm_target: ArmTarget, tmp_path: Path
) -> None:
    workspace = f"sweep-{flavor}"
    rates = [0.1, 0.01, 0.001, 0.0001]
    args = {"workspace": workspace, "experiment": "sweep", "cluster_id": cluster_id(arm_target, workspace),
            "learning_rates": rates}  # fmt: skip
    result = _run(flavor, "sweep", args, arm_target, tmp_path)
    assert set(result["states"].values()) == {"succeeded"}, result
    assert sorted(result["stdout"].values()) == sorted(f"training with lr={r}" for r in rates)
