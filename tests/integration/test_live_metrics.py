"""Live metrics and early stopping on real components (API, scheduler, two workers), both databases.

A 16-point sweep reports a synthetic loss `a/(step+1) + b` for 30 steps, 0.2 s apart; half the
points have a b far above the others. Under the median stopping rule (grace 5 steps) the bad ones
end `cancelled` with reason `early_stopped` while the good ones run to the end; a running job's
series is readable through GET /v1/jobs/{id}/metrics before it ends.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from trainyard.client import Client, SpecRejected
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

STEPS = 30
REPORT = (
    "import os, time, trainyard\n"
    "b = float(os.environ['TRAINYARD_PARAM_B'])\n"
    f"for step in range({STEPS}):\n"
    "    trainyard.report(step=step, loss=1.0 / (step + 1) + b)\n"
    "    time.sleep(0.2)\n"
)
WATCHED = (
    "import os, time, trainyard\n"
    "b = float(os.environ['TRAINYARD_PARAM_B'])\n"
    "for step in range(10):\n"
    "    trainyard.report(step=step, loss=b + 1.0 / (step + 1))\n"
    "    time.sleep(0.5)\n"
)
GOOD = [0.10 + 0.01 * i for i in range(8)]
BAD = [5.0 + i for i in range(8)]


def _points() -> list[dict[str, Any]]:
    """Good and bad interleaved, so each wave of max_concurrency points holds both."""
    return [{"b": b} for pair in zip(GOOD, BAD, strict=True) for b in pair]


def _metrics_while_running(client: Client, job_id: str, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        points = client.job_metrics(job_id, name="loss")
        if points:
            assert client.job(job_id).data["state"] == "running"  # read before the job ended
            return points
        time.sleep(0.2)
    raise AssertionError(f"no live metrics for {job_id} within {timeout_s}s")


def test_median_rule_stops_the_bad_points_of_a_sweep_and_lets_the_best_finish(client: Client, cluster: Cluster) -> None:
    template = {"name": "loss-b{b}", "command": ["python3", "-c", REPORT], "max_retries": 0}
    sweep = client.submit_sweep(
        {
            "template": template,
            "points": _points(),
            "max_concurrency": 8,
            "early_stopping": {"metric": "loss", "mode": "min", "policy": "median", "grace_steps": 5},
        }
    )
    assert sweep.data["early_stopping"]["policy"] == "median"
    first_good = f"{sweep.id}-0"
    live = _metrics_while_running(client, first_good, timeout_s=60)
    assert live[0]["attempt"] == 1 and set(live[0]["values"]) == {"loss"}

    assert sweep.wait(timeout=240) == "finished"
    jobs = {job.id: job.data for job in sweep.jobs()}
    by_b = {float(data["params"]["b"]): data for data in jobs.values()}
    for b in BAD:
        assert by_b[b]["state"] == "cancelled", (b, by_b[b]["state"])
        assert by_b[b]["reason"] == "early_stopped"
        full = client.job(by_b[b]["id"]).data
        assert full["attempts"][-1]["reason"] == "early_stopped"
        reported = client.job_metrics(by_b[b]["id"])
        assert 0 < len(reported) < STEPS  # stopped before its end
    best = [by_b[b] for b in GOOD[:4]]
    assert all(data["state"] == "succeeded" for data in best), [d["state"] for d in best]
    series = client.job(best[0]["id"]).metrics(name="loss")
    assert [p["step"] for p in series] == list(range(STEPS))
    assert series[-1]["values"]["loss"] == pytest.approx(1.0 / STEPS + GOOD[0])
    assert all(p["attempt"] == 1 and p["time"].endswith("Z") for p in series)
    # Paging and since_step.
    tail = client.job_metrics(best[0]["id"], since_step=25)
    assert [p["step"] for p in tail] == [26, 27, 28, 29]
    page = httpx.get(
        f"{cluster.api_url}/v1/jobs/{best[0]['id']}/metrics",
        params={"limit": 10},
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
    ).json()
    assert len(page["points"]) == 10 and page["next_cursor"]


def test_job_metrics_need_a_token_and_hide_other_workspaces(client: Client, cluster: Cluster) -> None:
    job = client.submit({"name": "m", "command": ["python3", "-c", "import trainyard; trainyard.report(step=1, x=2)"]})
    assert job.wait(timeout=120) == "succeeded"
    url = f"{cluster.api_url}/v1/jobs/{job.id}/metrics"
    assert httpx.get(url).status_code == 401
    token = client._request("POST", "/v1/tokens", json={"role": "viewer", "workspace": "elsewhere"})["token"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert [p["values"] for p in job.metrics()] == [{"x": 2.0}]
    # A cursor this API never returned is refused in the shape of every refused parameter.
    admin = {"Authorization": f"Bearer {cluster.admin_token}"}
    refused = httpx.get(url, params={"cursor": "0" * 20}, headers=admin)
    assert refused.status_code == 422
    assert refused.json() == {
        "detail": [{"loc": ["query", "cursor"], "msg": "not a cursor this API returned", "type": "value_error"}]
    }


def test_bad_early_stopping_is_refused_naming_the_field_and_nothing_is_stored(client: Client) -> None:
    before = len(client.sweeps())
    with pytest.raises(SpecRejected) as caught:
        client.submit_sweep(
            {
                "template": {"name": "t", "command": "true {x}"},
                "grid": {"x": [1]},
                "early_stopping": {"metric": "loss", "mode": "lowest", "grace_steps": -1},
            }
        )
    assert caught.value.status == 422
    fields = {p["field"] for p in caught.value.problems}
    assert {"early_stopping.mode", "early_stopping.grace_steps"} <= fields
    assert len(client.sweeps()) == before


def test_sweep_show_watch_follows_the_live_best_of_the_rules_metric_and_ends_with_the_sweep(
    client: Client, cli_env: dict[str, str]
) -> None:
    template = {"name": "w-b{b}", "command": ["python3", "-c", WATCHED], "max_retries": 0}
    rule = {"metric": "loss", "mode": "min", "min_points": 10}  # three points: the rule never stops one
    sweep = client.submit_sweep({"template": template, "grid": {"b": [0.5, 0.25, 1.0]}, "early_stopping": rule})
    watch = subprocess.Popen(
        [sys.executable, "-m", "trainyard", "sweep", "show", sweep.id, "--watch"],  # the metric: the rule's
        env={**cli_env, "COLUMNS": "300"},  # the progress line, unwrapped
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while sweep.refresh().state not in ("finished", "cancelled"):
            assert watch.poll() is None, watch.communicate()  # watching while the sweep runs
            time.sleep(0.2)
        out, err = watch.communicate(timeout=30)  # and done within a few polls of its end
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    assert sweep.state == "finished" and sweep.counts["succeeded"] == 3, sweep.counts
    # The last step (9) of b=0.25 reports 0.25 + 1/10: the live best, named with its point and step.
    assert f"best loss=0.35 ({sweep.id}-1 @ step 9)" in out, out
