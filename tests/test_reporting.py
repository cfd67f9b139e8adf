"""trainyard.report inside a job, and what the node agent reads back and hands the job's environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import trainyard
from trainyard.workers.job_metrics import METRICS_FILE_NAME, job_python_env, read_metrics
from trainyard.workers.launchers.base import LaunchContext, base_environment

SYSTEM_PYTHON = Path("/usr/bin/python3")


def test_report_appends_one_json_line_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / METRICS_FILE_NAME
    monkeypatch.setenv("TRAINYARD_METRICS_FILE", str(path))
    trainyard.report(step=1, loss=0.5, acc=1)
    trainyard.report(loss=float("nan"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, None]
    assert lines[0]["metrics"] == {"loss": 0.5, "acc": 1} and lines[1]["metrics"] == {"loss": None}
    with pytest.raises(TypeError):
        trainyard.report(step=2, loss="low")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        trainyard.report(step=1.5, loss=1.0)  # type: ignore[arg-type]


def test_report_outside_trainyard_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINYARD_METRICS_FILE", raising=False)
    trainyard.report(step=1, loss=0.1)


def test_the_agent_reads_the_last_finite_value_of_each_metric_and_the_last_step(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE_NAME
    assert read_metrics(path) == {}
    lines = [
        {"step": 1, "metrics": {"loss": 0.9, "acc": 0.1}},
        {"step": 2, "metrics": {"loss": 0.4, "acc": None}},
        "not json",
        {"step": 3, "metrics": {"loss": True, "lr": 0.01}},
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + '\n{"step": 4, "metr')
    assert read_metrics(path) == {"metrics": {"loss": 0.4, "acc": 0.1, "lr": 0.01}, "metrics_step": 3}


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a Python without trainyard installed")
def test_a_job_on_a_python_without_trainyard_can_still_report(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    ctx = LaunchContext(
        job_id="s1-0",
        name="n",
        attempt=1,
        rank=0,
        num_nodes=1,
        node_hosts=["127.0.0.2"],
        node_address="127.0.0.2",
        spec={"env": {"PYTHONPATH": "/opt/mine"}},
        gpus=[],
        workdir=workdir,
        checkpoint_dir=tmp_path / "ckpt",
        master_port=29500,
        extra_env=job_python_env(tmp_path / "node", {"env": {"PYTHONPATH": "/opt/mine"}}),
        params={"lr": "0.1", "batch_size": "32"},
    )
    env = base_environment(ctx)
    assert env["TRAINYARD_PARAM_LR"] == "0.1" and env["TRAINYARD_PARAM_BATCH_SIZE"] == "32"
    assert env["PYTHONPATH"].startswith("/opt/mine" + os.pathsep)
    workdir.mkdir()
    script = "import trainyard; trainyard.report(step=7, loss=0.25); trainyard.report(step=8, loss=0.125)"
    without_shim = {**env, "PYTHONPATH": "/opt/mine"}
    assert (
        subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import trainyard"],
            env=without_shim,
            cwd=workdir,
            capture_output=True,
            check=False,
        ).returncode
        != 0
    )
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", script], env=env, cwd=workdir, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""
    assert read_metrics(Path(env["TRAINYARD_METRICS_FILE"])) == {"metrics": {"loss": 0.125}, "metrics_step": 8}
