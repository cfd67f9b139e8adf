"""Sweeps end to end on real workers and both databases: storage at scale, max_concurrency, metrics, cancel.

The 10,000-point sweep is stored and listed in full, then runs for a few seconds (trivial `true`
jobs, max_concurrency 3) while the test samples how many of its jobs the database holds as
scheduled or running, and checks afterwards that no two-plus-limit attempts ever overlapped; it
is then cancelled midway. Running all 10,000 would take minutes per backend on two cores, so the
leaderboard is checked on a smaller sweep that runs to the end.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from trainyard.client import Client, SpecRejected, Sweep
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.db.models import Attempt, Job
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]
LIMIT = 3
RUN_FOR_S = 6.0
SAMPLE_EVERY_S = 0.02
ACTIVE = ("scheduled", "running")
REPORT = (
    "import os, trainyard; x = float(os.environ['TRAINYARD_PARAM_X']); "
    "trainyard.report(step=1, loss=99.0); trainyard.report(step=5, loss=(x - 2.2) ** 2 + {y})"
)


@contextlib.contextmanager
def _sessions(cluster: Cluster):  # type: ignore[no-untyped-def]
    """Sessions on the cluster's database, from an engine disposed when the block ends."""
    engine = make_engine(cluster.env["TRAINYARD_DATABASE_URL"])
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


class ActiveSampler(threading.Thread):
    """Counts a sweep's scheduled-or-running jobs in the database, every few milliseconds."""

    def __init__(self, cluster: Cluster, sweep_id: str):
        super().__init__(daemon=True)
        self.cluster, self.sweep_id = cluster, sweep_id
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        query = select(func.count()).select_from(Job).where(Job.sweep_id == self.sweep_id, Job.state.in_(ACTIVE))
        with _sessions(self.cluster) as sessions:
            while not self.stop.is_set():
                with sessions() as session:
                    self.samples.append(int(session.scalar(query) or 0))
                time.sleep(SAMPLE_EVERY_S)


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """Most intervals open at one instant (an end and a start at the same instant do not overlap)."""
    edges = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda edge: (edge[0], edge[1]),
    )
    most = open_now = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def _wait_state(sweep: Sweep, states: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sweep.refresh().data["state"] in states:
            return sweep.data
        time.sleep(0.25)
    raise AssertionError(f"sweep {sweep.id} still {sweep.data['state']} {sweep.data['counts']} after {timeout_s} s")


def test_ten_thousand_point_sweep_is_stored_whole_runs_within_its_limit_and_cancels_cleanly(
    client: Client, cluster: Cluster
) -> None:
    started = time.monotonic()
    sweep = client.sweep(
        {"name": "g-{a}-{b}", "command": "true", "max_retries": 0},
        grid={"a": list(range(100)), "b": list(range(100))},
        max_concurrency=LIMIT,
    )
    accepted_s = time.monotonic() - started
    sampler = ActiveSampler(cluster, sweep.id)
    sampler.start()
    assert sweep.total == 10_000 and sum(sweep.counts.values()) == 10_000 and accepted_s < 20
    assert sweep.experiment == sweep.id and sweep.max_concurrency == LIMIT

    listed = client.jobs(sweep=sweep.id)  # ten cursor pages of 1,000
    by_experiment = client.jobs(experiment=sweep.experiment, limit=2500)
    assert sorted(j.id for j in listed) == sorted(f"{sweep.id}-{i}" for i in range(10_000))
    assert len(by_experiment) == 2500 and {j.id for j in by_experiment} <= {j.id for j in listed}
    shown = client.job(f"{sweep.id}-1234").data
    assert shown["name"] == "g-12-34" and shown["params"] == {"a": 12, "b": 34}
    assert shown["spec"]["command"] == "true" and shown["sweep_id"] == sweep.id

    time.sleep(max(0.0, RUN_FOR_S - (time.monotonic() - started)))
    assert sweep.cancel().data["cancel_requested"]
    final = _wait_state(sweep, ("cancelled",), timeout_s=60)
    sampler.stop.set()
    sampler.join()

    counts = final["counts"]
    assert counts["queued"] == counts["scheduled"] == counts["running"] == 0, counts
    assert counts["succeeded"] >= LIMIT and counts["cancelled"] > 9_000 and sum(counts.values()) == 10_000
    assert max(sampler.samples) == LIMIT, f"never more than {LIMIT}, and the limit was used: {max(sampler.samples)}"
    with _sessions(cluster) as sessions, sessions() as session:
        rows = session.execute(
            select(Attempt.created_at, Attempt.ended_at).join(Job, Job.id == Attempt.job_id)
            .where(Job.sweep_id == sweep.id)
        ).tuples().all()  # fmt: skip
    # From placement to the applied exit report: a span that holds the job's whole process.
    assert rows and all(end is not None for _, end in rows)
    assert _max_overlap([(start, end) for start, end in rows if end is not None]) <= LIMIT


def test_a_sweep_ranks_its_points_by_a_reported_metric_and_takes_more_points(
    client: Client, cluster: Cluster, cli_env: dict[str, str], tmp_path: Path
) -> None:
    template = {"name": "x{x}-y{y}", "command": ["python3", "-c", REPORT], "max_retries": 0}
    sweep = client.sweep(template, grid={"x": [0, 1, 2, 3, 4], "y": [0.5, 0.25]}, max_concurrency=4)
    sweep.add_points([{"x": 2.2, "y": 0.0}, {"x": 9, "y": 1.0}])
    assert sweep.total == 12
    assert sweep.wait(timeout=180) == "finished"
    assert sweep.counts["succeeded"] == 12, sweep.counts

    points = [{"x": x, "y": y} for x in [0, 1, 2, 3, 4] for y in [0.5, 0.25]] + [
        {"x": 2.2, "y": 0.0},
        {"x": 9, "y": 1.0},
    ]
    expected = sorted(points, key=lambda p: (float(p["x"]) - 2.2) ** 2 + float(p["y"]))
    best = sweep.leaderboard("loss", top=12)
    assert [e["params"] for e in best] == expected
    assert best[0]["value"] == 0.0 and best[0]["step"] == 5 and best[0]["name"] == "x2.2-y0.0"
    worst = sweep.leaderboard("loss", order="max", top=3)
    assert [e["params"] for e in worst] == expected[::-1][:3]
    job = client.job(best[1]["job_id"]).data
    assert job["metrics"] == {"loss": best[1]["value"]} and job["metrics_step"] == 5

    plot = tmp_path / "loss.png"
    shown = subprocess.run(
        [*TRAINYARD, "sweep", "show", sweep.id, "--metric", "loss", "--json", "--plot", str(plot)],
        env=cli_env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["leaderboard"][0]["job_id"] == best[0]["job_id"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each point's live series (it reported at step 5) is drawn over steps for the best of them.
    assert b"and over steps for the best 12" in shown.stderr, shown.stderr


def test_bad_sweeps_are_refused_naming_the_problem_and_nothing_is_stored(
    client: Client, cluster: Cluster, cli_env: dict[str, str], tmp_path: Path
) -> None:
    before = len(client.sweeps())
    with pytest.raises(SpecRejected) as refused:
        client.sweep({"name": "n{lr}", "command": "train --opt {optimizer}"}, grid={"lr": [0.1]})
    assert any(p["field"] == "template.command" and "{optimizer}" in p["reason"] for p in refused.value.problems)
    with pytest.raises(SpecRejected) as refused:
        client.sweep({"name": "n", "command": "true"}, random={"lr": {"gaussian": [0, 1]}}, samples=3)
    assert refused.value.problems == [{"field": "random.lr", "reason": refused.value.problems[0]["reason"]}]
    assert "unknown distribution 'gaussian'" in refused.value.problems[0]["reason"]

    bad = tmp_path / "sweep.yaml"
    bad.write_text("name: n\ncommand: echo {lr}\ngrid: {}\n")
    result = subprocess.run(
        [*TRAINYARD, "sweep", "submit", str(bad)], env=cli_env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2 and b"grid: must name at least one parameter" in result.stderr, result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("name: r{seed}\ncommand: 'true'\nrandom: {seed: {choice: [1, 2, 3]}}\nsamples: 4\nseed: 11\n")
    result = subprocess.run(
        [*TRAINYARD, "sweep", "submit", str(good), "--json"], env=cli_env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    submitted = json.loads(result.stdout)
    assert submitted["total"] == 4 and submitted["definition"]["seed"] == 11
    assert len(client.sweeps()) == before + 1
    client.cancel_sweep(submitted["id"])


def test_a_sweep_file_ships_its_code_directory_and_a_repeat_with_its_key_is_the_same_sweep(
    client: Client, cluster: Cluster, tmp_path: Path
) -> None:
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text("import sys, trainyard\ntrainyard.report(step=1, score=float(sys.argv[1]) * 2)\n")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        "name: code-{x}\ncommand: [python3, train.py, '{x}']\ncode: project\nmax_retries: 0\n"
        "random: {x: {uniform: [0, 1]}}\nsamples: 3\nidempotency_key: code-sweep-once\n"
    )
    sweep = client.submit_sweep(sweep_file)
    again = client.submit_sweep(sweep_file)  # no seed in the file: the one drawn first is kept
    assert again.id == sweep.id and again.definition["seed"] == sweep.definition["seed"]
    assert sweep.wait(timeout=120) == "finished" and sweep.counts["succeeded"] == 3, sweep.counts
    board = sweep.leaderboard("score", order="max")
    assert [round(e["value"], 9) for e in board] == sorted(
        (round(e["params"]["x"] * 2, 9) for e in board), reverse=True
    )
