"""Reruns on a real cluster: the same spec and secrets again, as a new job linked to the old one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainyard.client import Client, NotFound
from trainyard.up import Cluster

pytestmark = pytest.mark.integration


def test_a_failed_job_rerun_runs_again_with_its_spec_and_secrets(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "ran-once"
    command = f'echo "token=$API_TOKEN"; test -f {marker} || {{ touch {marker}; exit 3; }}'
    first = client.submit(
        {"name": "rerun-me", "command": command, "max_retries": 0, "secrets": {"API_TOKEN": "s3cr3t-value"}}
    )
    assert first.wait(timeout=120) == "failed"

    again = client.rerun(first.id)
    assert again.id != first.id
    assert again.data["rerun_of"] == first.id and again.data["name"] == "rerun-me"
    assert again.wait(timeout=120) == "succeeded"
    assert again.log_bytes().decode() == "token=s3cr3t-value\n"
    shown = again.refresh().data
    assert shown["spec"]["command"] == first.refresh().data["spec"]["command"]
    assert shown["spec"]["secrets"] == {"API_TOKEN": "***"}  # stored as names only, like the first
    assert first.refresh().data["state"] == "failed"  # the rerun leaves the job it reruns as it was


def test_rerunning_a_sweep_point_keeps_its_values_and_leaves_the_sweep_alone(client: Client) -> None:
    sweep = client.sweep(
        {"name": "pt-{x}", "command": 'echo "x=$TRAINYARD_PARAM_X"', "max_retries": 0}, grid={"x": [7, 8]}
    )
    assert sweep.wait(timeout=120) == "finished"
    point = next(j for j in client.jobs(sweep=sweep.id) if j.data["name"] == "pt-7")
    again = client.rerun(point.id)
    assert again.wait(timeout=120) == "succeeded"
    assert again.log_bytes().decode() == "x=7\n"
    assert again.data["sweep_id"] is None and again.data["rerun_of"] == point.id
    assert len(client.jobs(sweep=sweep.id)) == 2


def test_rerun_of_an_unknown_job_is_404_and_stores_nothing(client: Client) -> None:
    before = len(client.jobs(name_prefix="rerun-"))
    with pytest.raises(NotFound):
        client.rerun("j000000000000")
    assert len(client.jobs(name_prefix="rerun-")) == before


def test_the_cli_reruns_and_job_show_names_the_rerun(client: Client, cluster: Cluster, cli_env: dict[str, str]) -> None:
    first = client.submit({"name": "rerun-cli", "command": "true"})
    assert first.wait(timeout=120) == "succeeded"
    out = subprocess.run(
        [sys.executable, "-m", "trainyard", "job", "rerun", first.id],
        env=cli_env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    new_id = out.split()[0]
    assert f"rerun of {first.id}" in out
    shown = subprocess.run(
        [sys.executable, "-m", "trainyard", "job", "show", new_id, "--json"],
        env=cli_env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(shown)["rerun_of"] == first.id
