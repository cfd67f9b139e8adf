"""Sweep reruns on a real cluster and both databases: `--failed` reruns only the points that failed,
inside the sweep, each new job linked to the one it reruns; the leaderboard then covers the reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from trainyard.client import Client, NotFound
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]
# Even points fail on their first run (a marker file says they ran), then succeed; each success reports x.
TRAIN = """\
import os, pathlib, sys, trainyard
x = int(os.environ["TRAINYARD_PARAM_X"])
marker = pathlib.Path(sys.argv[1]) / f"ran-{x}"
if x % 2 == 0 and not marker.exists():
    marker.touch()
    sys.exit(3)
trainyard.report(step=1, loss=float(x))
"""


def _failing_sweep(client: Client, tmp_path: Path, name: str) -> tuple[str, dict[int, str]]:
    """A finished sweep of x = 0…5 whose even points failed: (its id, job id per x)."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    markers = tmp_path / "markers"
    markers.mkdir()
    template = {"name": name + "-{x}", "command": ["python3", str(script), str(markers)], "max_retries": 0}
    sweep = client.sweep(template, grid={"x": list(range(6))}, max_concurrency=3)
    assert sweep.wait(timeout=180) == "finished"
    assert (sweep.counts["succeeded"], sweep.counts["failed"]) == (3, 3), sweep.counts
    return sweep.id, {int(job.data["params"]["x"]): job.id for job in sweep.jobs()}


def _check_reruns(client: Client, sweep_id: str, reruns: list[dict[str, str]], originals: dict[int, str]) -> None:
    assert sorted(item["rerun_of"] for item in reruns) == sorted(originals[x] for x in (0, 2, 4))
    for item in reruns:
        job = client.job(item["id"])
        assert job.wait(timeout=120) == "succeeded"
        assert job.data["rerun_of"] == item["rerun_of"] and job.data["sweep_id"] == sweep_id
        old = client.job(item["rerun_of"]).data
        assert old["state"] == "failed" and old["superseded_by"] == item["id"]
        assert job.data["params"] == old["params"] and job.data["spec"] == old["spec"]
    sweep = client.get_sweep(sweep_id)
    assert sweep.wait(timeout=60) == "finished"
    assert (sweep.total, sweep.superseded, sweep.points, sweep.progress) == (9, 3, 6, 1.0)
    assert (sweep.counts["succeeded"], sweep.counts["failed"]) == (6, 0), sweep.counts
    board = sweep.leaderboard("loss", top=10)
    assert [entry["params"]["x"] for entry in board] == [0, 1, 2, 3, 4, 5]  # the reruns are ranked with the rest
    rerun_ids = {item["id"] for item in reruns}
    assert {entry["job_id"] for entry in board if entry["params"]["x"] % 2 == 0} == rerun_ids


def test_the_cli_reruns_only_the_failed_points_of_a_sweep_linked_to_the_originals(
    client: Client, cli_env: dict[str, str], tmp_path: Path
) -> None:
    sweep_id, originals = _failing_sweep(client, tmp_path, "rerun-cli")
    result = subprocess.run(
        [*TRAINYARD, "sweep", "rerun", sweep_id, "--failed", "--json"],
        env=cli_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reruns = json.loads(result.stdout)["reruns"]
    assert len(reruns) == 3
    _check_reruns(client, sweep_id, reruns, originals)
    again = subprocess.run(
        [*TRAINYARD, "sweep", "rerun", sweep_id, "--failed"],
        env=cli_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and f"{sweep_id}: 0 failed or cancelled points rerun" in again.stdout, again


def test_rest_reruns_failed_points_with_failed_true_and_every_ended_point_without_it(
    client: Client, cluster: Cluster, tmp_path: Path
) -> None:
    sweep_id, originals = _failing_sweep(client, tmp_path, "rerun-rest")
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    with httpx.Client(base_url=cluster.api_url, headers=headers, timeout=30) as http:
        refused = http.post(f"/v1/sweeps/{sweep_id}:rerun", json={"failed": "perhaps"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "failed"]
        assert http.post(f"/v1/sweeps/{sweep_id}:rerun", json={"only": "failed"}).status_code == 422
        assert client.get_sweep(sweep_id).total == 6  # nothing stored
        reply = http.post(f"/v1/sweeps/{sweep_id}:rerun", json={"failed": True})
        assert reply.status_code == 201, reply.text
        _check_reruns(client, sweep_id, reply.json()["reruns"], originals)
        everything = http.post(f"/v1/sweeps/{sweep_id}:rerun")  # no body: every ended point's latest run
        assert everything.status_code == 201 and len(everything.json()["reruns"]) == 6
        assert http.post("/v1/sweeps/s000000000000:rerun", json={"failed": True}).status_code == 404
    sdk = client.get_sweep(sweep_id)
    assert sdk.wait(timeout=180) == "finished" and sdk.total == 15 and sdk.counts["succeeded"] == 6


def test_the_sdk_reruns_a_sweep_and_an_unknown_one_is_not_found(client: Client) -> None:
    sweep = client.sweep({"name": "rerun-sdk-{x}", "command": "exit {x}", "max_retries": 0}, grid={"x": [0, 1]})
    assert sweep.wait(timeout=120) == "finished"
    rerun = sweep.rerun(failed=True)
    assert rerun.data["reruns"] == [{"id": f"{sweep.id}-2", "rerun_of": f"{sweep.id}-1"}]
    assert sweep.wait(timeout=120) == "finished"  # `exit 1` fails again: the rerun is the point's latest run
    again = client.rerun_sweep(sweep.id, failed=True)
    assert again.data["reruns"] == [{"id": f"{sweep.id}-3", "rerun_of": f"{sweep.id}-2"}]
    assert again.wait(timeout=120) == "finished" and again.counts["failed"] == 1 and again.superseded == 2
    with pytest.raises(NotFound):
        client.rerun_sweep("s000000000000", failed=True)
