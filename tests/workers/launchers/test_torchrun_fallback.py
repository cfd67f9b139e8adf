"""The torchrun launcher where the node has no torchrun (PyTorch 0.4 images): one process per rank, as Batch AI did.

Real processes on two simulated nodes: PATH holds no `torchrun`, and the Python the launcher
would run torchrun with (/usr/bin/python3, Debian's) has no torch. The job's script runs with
this test's Python, which has torch, so the ranks do a real Gloo allreduce over the init URL
Batch AI gave them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workers.launchers import components
from tests.workers.launchers.gang import Gang
from trainyard.batchai import batchai_to_spec
from trainyard.workers.launchers.torchrun import TorchrunLauncher

pytestmark = pytest.mark.integration

NO_TORCH_PYTHON = "/usr/bin/python3"
PLAIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

ALLREDUCE = r"""
import os, sys, torch, torch.distributed as dist
rank = int(sys.argv[sys.argv.index("--rank") + 1])
dist.init_process_group("gloo", init_method=sys.argv[sys.argv.index("--dist-url") + 1],
                        rank=rank, world_size=int(sys.argv[sys.argv.index("--world-size") + 1]))
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
sys.stdout.write(f"rank {rank} local {os.environ['LOCAL_RANK']} node {os.environ['TRAINYARD_NODE_RANK']} "
                 f"world {os.environ['WORLD_SIZE']} sum {value.item():.0f}\n")
dist.destroy_process_group()
"""


def _without_torchrun() -> None:
    if shutil.which("torchrun", path=PLAIN_PATH):
        pytest.skip(f"torchrun is on {PLAIN_PATH} here")
    found = subprocess.run([NO_TORCH_PYTHON, "-c", "import torch"], capture_output=True, check=False)
    if found.returncode == 0:
        pytest.skip(f"{NO_TORCH_PYTHON} has torch here")


def _legacy(gang: Gang) -> Gang:
    for run in gang.ranks:
        run.launcher = TorchrunLauncher(host_python=NO_TORCH_PYTHON)
    return gang


def test_a_batchai_pytorch_job_without_torchrun_runs_one_process_per_rank_and_allreduces(
    make_gang: Callable[..., Gang], tmp_path: Path
) -> None:
    components.require_torch()
    _without_torchrun()
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    doc = {
        "properties": {
            "nodeCount": 2,
            "pyTorchSettings": {
                "pythonInterpreterPath": sys.executable,
                "pythonScriptFilePath": str(script),
                "commandLineArgs": "--world-size 4 --dist-url $AZ_BATCHAI_PYTORCH_INIT_METHOD "
                "--rank $AZ_BATCHAI_TASK_INDEX",
                "processCount": 4,
            },
            "environmentVariables": [{"name": "PATH", "value": PLAIN_PATH}],
        }
    }
    spec, _warnings = batchai_to_spec(doc, name="legacy-pt")
    assert (spec["launcher"], spec["processes_per_node"]) == ("torchrun", 2)
    gang = _legacy(make_gang(spec, nodes=2)).start()
    assert gang.wait(timeout_s=55) == [0, 0], gang.describe()
    lines = sorted(re.findall(r"rank \d+ local \d+ node \d+ world \d+ sum \d+", gang.all_stdout()))
    assert lines == [f"rank {r} local {r % 2} node {r // 2} world 4 sum 10" for r in range(4)], gang.describe()
    assert "no torchrun in this environment" in gang.stderr(0)


def test_without_torchrun_a_failing_rank_stops_the_nodes_other_ranks_with_its_status(
    make_gang: Callable[..., Gang],
) -> None:
    _without_torchrun()
    command = 'if [ "$RANK" = 1 ]; then exit 7; fi; exec sleep 301'
    spec = {"launcher": "torchrun", "processes_per_node": 2, "command": command, "env": {"PATH": PLAIN_PATH}}
    gang = _legacy(make_gang(spec, nodes=1)).start()
    assert gang.wait(timeout_s=30) == [7], gang.describe()
    assert "rank-1 exited with status 7" in gang.stderr(0)
    assert gang.leftover_processes() == []
