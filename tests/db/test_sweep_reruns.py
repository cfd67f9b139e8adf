"""Sweep reruns on both databases: new points inside the sweep, linked to the jobs they rerun."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard import sweeps
from trainyard.db import sweep_queries
from trainyard.db.jobs import load_job_dict
from trainyard.db.models import Job, Sweep
from trainyard.db.sweeps import SweepConflict, cancel_sweep, create_sweep, rerun_points

TEMPLATE = {"name": "x{x}", "command": "echo {x}", "secrets": {"T": "s"}, "max_retries": 0}


def _sweep(sessions: sessionmaker[Session], states: list[str]) -> str:
    """A sweep of len(states) points x=0,1,…, each job put in the state given."""
    spec = sweeps.parse_sweep_spec({"template": TEMPLATE, "points": [{"x": i} for i in range(len(states))]})
    with sessions.begin() as session:
        sweep_id = create_sweep(session, spec, sweeps.expand(spec), secrets_enc="ENC")
        for index, state in enumerate(states):
            session.execute(update(Job).where(Job.id == f"{sweep_id}-{index}").values(state=state))
    return sweep_id


def _shown(sessions: sessionmaker[Session], sweep_id: str) -> dict[str, object]:
    with sessions() as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        return sweep_queries.load_sweep_dict(session, sweep)


def test_failed_only_reruns_failed_and_cancelled_points_inside_the_sweep(sessions: sessionmaker[Session]) -> None:
    sweep_id = _sweep(sessions, ["succeeded", "failed", "cancelled", "running", "failed"])
    with sessions.begin() as session:
        pairs = rerun_points(session, sweep_id, failed_only=True, actor="t")
    assert pairs == [
        (f"{sweep_id}-5", f"{sweep_id}-1"),
        (f"{sweep_id}-6", f"{sweep_id}-2"),
        (f"{sweep_id}-7", f"{sweep_id}-4"),
    ]
    with sessions() as session:
        rerun = load_job_dict(session, f"{sweep_id}-5")
        original = load_job_dict(session, f"{sweep_id}-1")
        job = session.get(Job, f"{sweep_id}-5")
        assert job is not None and job.secrets_enc is None  # the sweep's secrets, rendered on dispatch
    assert rerun is not None and original is not None
    assert (rerun["rerun_of"], rerun["state"], rerun["params"], rerun["name"]) == (
        original["id"],
        "queued",
        {"x": 1},
        "x1",
    )
    assert rerun["spec"] == original["spec"] and rerun["sweep_id"] == sweep_id
    assert original["superseded_by"] == rerun["id"] and original["state"] == "failed"
    shown = _shown(sessions, sweep_id)
    assert shown["total"] == 8 and shown["superseded"] == 3 and shown["points"] == 5
    assert shown["counts"] == {"queued": 3, "scheduled": 0, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert shown["progress"] == 0.2 and shown["state"] == "running"
    with sessions.begin() as session:  # the reruns are queued: nothing failed is left to rerun
        assert rerun_points(session, sweep_id, failed_only=True) == []


def test_a_plain_rerun_reruns_every_ended_point_and_the_leaderboard_ranks_latest_runs(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = _sweep(sessions, ["succeeded", "failed", "queued"])
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == f"{sweep_id}-0").values(metrics={"loss": 0.5}))
        session.execute(update(Job).where(Job.id == f"{sweep_id}-1").values(metrics={"loss": 0.1}))
        pairs = rerun_points(session, sweep_id, failed_only=False)
    assert [old for _, old in pairs] == [f"{sweep_id}-0", f"{sweep_id}-1"]  # the queued point is left alone
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == f"{sweep_id}-3").values(state="succeeded", metrics={"loss": 0.4}))
    with sessions() as session:
        board = sweep_queries.leaderboard(session, sweep_id, "loss", "min", 10)
    assert [entry["job_id"] for entry in board] == [f"{sweep_id}-3"]  # superseded runs are not ranked


def test_a_cancelled_sweep_reruns_once_its_jobs_have_ended_and_is_open_again(sessions: sessionmaker[Session]) -> None:
    sweep_id = _sweep(sessions, ["running", "queued"])
    with sessions.begin() as session:
        cancel_sweep(session, sweep_id)
    with sessions.begin() as session, pytest.raises(SweepConflict, match="still cancelling"):
        rerun_points(session, sweep_id, failed_only=True)
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == f"{sweep_id}-0").values(state="cancelled"))
    assert _shown(sessions, sweep_id)["state"] == "cancelled"
    with sessions.begin() as session:
        assert len(rerun_points(session, sweep_id, failed_only=True)) == 2
    shown = _shown(sessions, sweep_id)
    assert shown["state"] == "running" and shown["cancel_requested"] is False
    with sessions() as session:
        reruns = session.scalars(select(Job.rerun_of).where(Job.sweep_id == sweep_id, Job.rerun_of.is_not(None))).all()
    assert sorted(reruns) == [f"{sweep_id}-0", f"{sweep_id}-1"]


def test_rerunning_an_unknown_sweep_raises_and_stores_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session, pytest.raises(KeyError):
        rerun_points(session, "s000000000000", failed_only=True)
