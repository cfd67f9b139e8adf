"""Job dependencies on a real cluster: a pipeline from one batch submit runs in order, a failed stage
cancels its dependants at once, pending reasons name what a job waits for, bad DAGs are refused whole."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from trainyard.client import Client, Job, SpecRejected, Sweep
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

POINTS = 8


def _until(check, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def _started(job: Job) -> str:
    return str(job.refresh().data["attempts"][0]["started_at"])


def _ended(job: Job) -> str:
    return str(job.refresh().data["attempts"][-1]["ended_at"])


def test_a_three_stage_pipeline_runs_in_order_from_one_batch_submit(client: Client, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    prepare = {"name": "prepare", "command": f"sleep 1; touch {marks}/prepared", "max_retries": 0}
    train = {
        "name": "train",
        "template": {
            "name": "train-{x}",
            # A point that started before prepare ended fails the pipeline.
            "command": f"test -f {marks}/prepared && touch {marks}/point-{{x}}",
            "depends_on": [{"job": "prepare"}],
            "max_retries": 0,
        },
        "grid": {"x": list(range(POINTS))},
    }
    evaluate = {
        "name": "evaluate",
        "command": f'test "$(ls {marks} | grep -c point-)" = {POINTS}',
        "depends_on": [{"sweep": "train", "on": "succeeded"}],
        "max_retries": 0,
    }
    first, sweep, last = client.submit_pipeline([prepare, {"sweep": train}, evaluate])
    assert isinstance(first, Job) and isinstance(sweep, Sweep) and isinstance(last, Job)
    assert last.data["pending_reason"] == f"waiting for sweep {sweep.id} (train) to succeed"
    points = client.jobs(sweep=sweep.id)
    assert len(points) == POINTS
    assert {p.data["pending_reason"] for p in points} == {f"waiting for job {first.id} (prepare) to succeed"}

    assert last.wait(timeout=180) == "succeeded"
    assert first.refresh().data["state"] == "succeeded"
    assert all(p.refresh().data["state"] == "succeeded" for p in points)
    prepared_at = _ended(first)
    assert all(_started(p) >= prepared_at for p in points)
    assert _started(last) >= max(_ended(p) for p in points)
    shown = last.refresh().data["depends_on"]
    assert shown == [{"sweep": sweep.id, "on": "succeeded", "name": "train", "state": "succeeded", "status": "met",
                      "condition": "met"}]  # fmt: skip


def test_a_failed_stage_cancels_its_dependants_at_once_with_reason_dependency_failed(client: Client) -> None:
    specs = [
        {"name": "fails", "command": "sleep 0.5; exit 3", "max_retries": 0},
        {"name": "next", "command": "true", "depends_on": [{"job": "fails"}]},
        {"name": "after-next", "command": "true", "depends_on": [{"job": "next"}]},
        {"name": "on-failure", "command": "true", "depends_on": [{"job": "fails", "on": "failed"}]},
        {"name": "cleanup", "command": "true", "depends_on": [{"job": "fails", "on": "ended"}]},
    ]
    fails, nxt, after_next, on_failure, cleanup = client.submit_many(specs)
    assert fails.wait(timeout=60) == "failed"
    ended_at = time.monotonic()
    _until(lambda: after_next.refresh().data["state"] == "cancelled", timeout_s=10)
    assert time.monotonic() - ended_at < 5.0  # at once: the scheduler's next pass, not a hang
    for job in (nxt, after_next):
        data = job.refresh().data
        assert (data["state"], data["reason"], data["attempts"]) == ("cancelled", "dependency_failed", [])
    assert on_failure.wait(timeout=60) == "succeeded"
    assert cleanup.wait(timeout=60) == "succeeded"


def test_a_pending_reason_names_the_dependency_and_the_cli_shows_and_cancels(
    client: Client, cluster: Cluster, cli_env: dict[str, str], tmp_path: Path
) -> None:
    upstream = client.submit({"name": "upstream", "command": "sleep 30"})
    spec = tmp_path / "downstream.yaml"
    spec.write_text("name: downstream\ncommand: 'true'\n")

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "trainyard", *args], env=cli_env, capture_output=True,
                              text=True, timeout=60, check=True).stdout  # fmt: skip

    submitted = json.loads(cli("job", "submit", str(spec), "--after", f"{upstream.id}:succeeded", "--json"))
    downstream = client.job(submitted["id"])
    assert downstream.data["state"] == "queued"
    assert downstream.data["pending_reason"] == f"waiting for job {upstream.id} (upstream) to succeed"
    shown = cli("job", "show", downstream.id)
    assert f"job {upstream.id}" in shown and "succeeded" in shown and "waiting" in shown
    time.sleep(1.5)  # full passes ran: the planner leaves a waiting job's reason alone
    assert downstream.refresh().data["pending_reason"] == f"waiting for job {upstream.id} (upstream) to succeed"

    with httpx.Client(base_url=cluster.api_url, timeout=30) as http:  # the dashboard's job page lists them too
        form = http.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        http.post("/ui/login", data={"csrf": csrf.group(1), "token": cluster.admin_token, "next": "/ui/jobs"})
        page = http.get(f"/ui/jobs/{downstream.id}").text
    assert "Dependencies" in page and f'href="/ui/jobs/{upstream.id}"' in page

    out = cli("job", "cancel", upstream.id)
    assert "1 dependant cancelled (dependency_failed)" in out
    _until(lambda: downstream.refresh().data["state"] == "cancelled")
    assert downstream.data["reason"] == "dependency_failed"


def test_a_bad_dag_is_refused_whole_with_the_field_named(client: Client) -> None:
    other = client.submit({"name": "elsewhere", "command": "true", "workspace": "dag-other"})
    before = len(client.jobs(name_prefix="dag-"))
    cases = {
        "jobs[1].depends_on[0].job": [{"name": "dag-a", "command": "true", "depends_on": [{"job": "dag-b"}]},
                                      {"name": "dag-b", "command": "true", "depends_on": [{"job": "dag-a"}]}],
        "jobs[0].depends_on[0].job": [{"name": "dag-c", "command": "true", "depends_on": [{"job": "nope"}]}],
        "jobs[0].depends_on[1].job": [{"name": "dag-d", "command": "true",
                                       "depends_on": [{"job": "dag-e"}, {"job": other.id}]},
                                      {"name": "dag-e", "command": "true"}],
    }  # fmt: skip
    for field, specs in cases.items():
        with pytest.raises(SpecRejected) as refused:
            client.submit_many(specs)
        assert [p["field"] for p in refused.value.problems] == [field], refused.value.problems
    assert "cycle" in _reason(client, cases["jobs[1].depends_on[0].job"])
    assert f"no job {other.id!r}" in _reason(client, cases["jobs[0].depends_on[1].job"])
    sweep = {
        "sweep": {
            "name": "dag-sweep",
            "grid": {"x": [1, 2]},
            "template": {"name": "dag-p{x}", "command": "true", "depends_on": [{"job": "dag-f"}]},
        }
    }
    cycle = [{"name": "dag-f", "command": "true", "depends_on": [{"sweep": "dag-sweep"}]}, sweep]
    unknown = [{"name": "dag-g", "command": "true"}, sweep]
    for entries, field, words in (
        (cycle, "jobs[1].sweep.template.depends_on[0].job", "cycle"),
        (unknown, "jobs[1].sweep.template.depends_on[0].job", "no job 'dag-f'"),
    ):
        with pytest.raises(SpecRejected) as refused:
            client.submit_pipeline(entries)
        assert [p["field"] for p in refused.value.problems] == [field] and words in refused.value.problems[0]["reason"]
    assert len(client.jobs(name_prefix="dag-")) == before  # nothing stored
    assert not [s for s in client.sweeps() if s.data["name"] == "dag-sweep"]


def _reason(client: Client, specs: list[dict[str, object]]) -> str:
    with pytest.raises(SpecRejected) as refused:
        client.submit_many(specs)
    return refused.value.problems[0]["reason"]
