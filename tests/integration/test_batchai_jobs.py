"""Azure Batch AI job files (2018-05-01) submitted to a real cluster run with Batch AI's variables."""

from __future__ import annotations

import json
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
         str(tmp_path / "custom-toolkit.json"), "--json"], env=cli_env, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = client.job(json.loads(submitted.stdout)["id"])
    assert job.wait(timeout=120) == "succeeded", job.log_bytes(stream="stderr")
    assert job.data["priority"] == 750 and job.data["nodes"] == 1
    out = job.log_bytes().decode()
    assert "task 0 of trainyard with 0 GPU(s)" in out
    assert "preparing in " in out  # jobPreparation ran first, in AZ_BATCHAI_JOB_TEMP


def test_a_two_node_horovod_job_file_runs_as_an_mpi_gang_and_writes_its_output(
    client: Client, tmp_path: Path
) -> None:
    if not _have("mpi4py"):
        if in_ci():
            pytest.fail("mpi4py is missing (scripts/install-mpi.sh)")
        pytest.skip("mpi4py is missing")
    spec, _warnings = batchai_to_spec(_job_file("horovod-2node.json", tmp_path), name="hvd")
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
    spec, _warnings = batchai_to_spec(_job_file("pytorch-gloo.json", tmp_path), name="pt")
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
    spec, _warnings = batchai_to_spec(doc, name="ctr")
    job = launchers_client.submit(spec)
    assert job.wait(timeout=180) == "succeeded", job.log_bytes(stream="stderr")[-2000:]
    assert job.log_bytes().startswith(b"task 0 in ")
