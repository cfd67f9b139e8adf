"""Sweep records on both databases: compact job rows, rendered specs, points added, cancel, limits, ranking."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard import sweeps
from trainyard.db import sweep_queries
from trainyard.db.jobs import NewJob, create_jobs, load_job_dict
from trainyard.db.models import Job, Sweep
from trainyard.db.sweeps import SweepConflict, add_points, cancel_sweep, create_sweep, fill_specs, sweep_limits
from trainyard.spec import parse_job_spec

TEMPLATE = {
    "name": "lr{lr}-bs{bs}",
    "command": ["python", "train.py", "--lr", "{lr}"],
    "env": {"BS": "{bs}"},
    "secrets": {"TOKEN": "s3cret"},
    "priority": "high",
    "resources": {"cpus": 0.5},
    "max_retries": 1,
}


def _create(sessions: sessionmaker[Session], **extra: Any) -> str:
    spec = sweeps.parse_sweep_spec({"template": TEMPLATE, "grid": {"lr": [0.1, 0.01], "bs": [8, 16, 32]}, **extra})
    with sessions.begin() as session:
        return create_sweep(session, spec, sweeps.expand(spec), secrets_enc="ENC", actor="t")


def test_a_sweep_stores_one_compact_job_per_point_and_renders_its_spec_on_read(sessions: sessionmaker[Session]) -> None:
    sweep_id = _create(sessions, max_concurrency=2)
    with sessions() as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None and sweep.total == 6 and sweep.max_concurrency == 2 and sweep.secrets_enc == "ENC"
        assert sweep.template["secrets"] == {"TOKEN": "***"} and sweep.experiment == sweep_id
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.seq)).all()
        assert [j.id for j in jobs] == [f"{sweep_id}-{i}" for i in range(6)]
        assert [j.name for j in jobs][:2] == ["lr0.1-bs8", "lr0.1-bs16"]
        first = jobs[0]
        assert first.spec == {} and first.params == {"lr": 0.1, "bs": 8} and first.secrets_enc is None
        assert (first.priority, first.cpus, first.max_retries, first.state) == (750, 0.5, 1, "queued")
        data = load_job_dict(session, first.id)
        assert data is not None
        assert data["spec"]["command"] == ["python", "train.py", "--lr", "0.1"] and data["spec"]["env"] == {"BS": "8"}
        assert data["params"] == {"lr": 0.1, "bs": 8} and data["experiment"] == sweep_id
        assert "s3cret" not in str(data)
    with sessions.begin() as session:
        job = session.get(Job, f"{sweep_id}-5")
        assert job is not None
        fill_specs(session, [job])
        assert job.secrets_enc == "ENC" and job.spec["name"] == "lr0.01-bs32"
    with sessions() as session:  # rendering wrote nothing back
        assert session.scalars(select(Job.spec).where(Job.id == f"{sweep_id}-5")).one() == {}


def test_points_added_later_continue_the_numbering_and_a_cancelled_sweep_takes_none(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = _create(sessions)
    with sessions.begin() as session:
        assert add_points(session, sweep_id, [{"lr": 1.0, "bs": 1}, {"lr": 2.0, "bs": 2}]) == 6
    with sessions() as session:
        assert session.get(Job, f"{sweep_id}-7") is not None
        assert sweep_queries.load_sweep_dict(session, session.get(Sweep, sweep_id))["total"] == 8  # type: ignore[arg-type]
    with sessions.begin() as session:
        cancel_sweep(session, sweep_id)
    with sessions.begin() as session, pytest.raises(SweepConflict):
        add_points(session, sweep_id, [{"lr": 3.0, "bs": 3}])


def test_cancel_ends_queued_jobs_at_once_and_flags_running_ones(sessions: sessionmaker[Session]) -> None:
    sweep_id = _create(sessions)
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id.in_([f"{sweep_id}-0", f"{sweep_id}-1"])).values(state="running"))
        session.execute(update(Job).where(Job.id == f"{sweep_id}-2").values(state="succeeded"))
    with sessions.begin() as session:
        assert cancel_sweep(session, sweep_id) == {"cancelled": 3, "stopping": 2}
    with sessions() as session:
        states = dict(session.execute(select(Job.id, Job.state).where(Job.sweep_id == sweep_id)).tuples().all())
        flagged = session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.cancel_requested)).all()
        data = sweep_queries.load_sweep_dict(session, session.get(Sweep, sweep_id))  # type: ignore[arg-type]
    assert sorted(states.values()) == ["cancelled"] * 3 + ["running"] * 2 + ["succeeded"]
    assert set(flagged) == {f"{sweep_id}-{i}" for i in (0, 1, 3, 4, 5)}
    assert data["state"] == "cancelling" and data["counts"]["running"] == 2


def test_sweep_limits_give_the_scheduler_each_limit_and_what_runs(sessions: sessionmaker[Session]) -> None:
    limited, unlimited = _create(sessions, max_concurrency=3), _create(sessions)
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id.in_([f"{limited}-0", f"{limited}-1"])).values(state="running"))
        session.execute(update(Job).where(Job.id == f"{limited}-2").values(state="scheduled"))
        session.execute(update(Job).where(Job.id == f"{limited}-3").values(state="succeeded"))
    with sessions() as session:
        assert sweep_limits(session, [limited, unlimited, "nosuch"]) == ({limited: 3}, {limited: 3})
        assert sweep_limits(session, []) == ({}, {})


def test_the_leaderboard_ranks_reported_points_by_a_metric_either_way(sessions: sessionmaker[Session]) -> None:
    sweep_id = _create(sessions)
    losses = {0: 0.5, 1: 0.25, 2: 0.75, 3: 0.25}  # 4 and 5 never reported
    with sessions.begin() as session:
        for index, loss in losses.items():
            session.execute(
                update(Job)
                .where(Job.id == f"{sweep_id}-{index}")
                .values(metrics={"loss": loss, "acc": 1 - loss}, metrics_step=index)
            )
    with sessions() as session:
        best = sweep_queries.leaderboard(session, sweep_id, "loss", "min", 10)
        worst = sweep_queries.leaderboard(session, sweep_id, "acc", "min", 2)
        assert sweep_queries.leaderboard(session, sweep_id, "missing", "max", 10) == []
    assert [e["job_id"] for e in best] == [f"{sweep_id}-{i}" for i in (1, 3, 0, 2)]
    assert [e["rank"] for e in best] == [1, 2, 3, 4] and best[0]["value"] == 0.25 and best[0]["step"] == 1
    assert best[0]["params"] == {"lr": 0.1, "bs": 16}
    assert [e["job_id"] for e in worst] == [f"{sweep_id}-2", f"{sweep_id}-0"]


def test_the_same_idempotency_key_returns_the_same_sweep_and_refuses_another(sessions: sessionmaker[Session]) -> None:
    first = _create(sessions, idempotency_key="k1")
    assert _create(sessions, idempotency_key="k1") == first
    with pytest.raises(SweepConflict):
        _create(sessions, idempotency_key="k1", max_concurrency=5)
    with sessions() as session:
        assert len(session.scalars(select(Sweep)).all()) == 1


def test_bulk_job_batches_keep_order_and_unique_cursor_values(sessions: sessionmaker[Session]) -> None:
    specs = [NewJob(parse_job_spec({"name": f"b{i}", "command": "true", "env": {"I": str(i)}})) for i in range(300)]
    with sessions.begin() as session:
        ids = create_jobs(session, specs) + create_jobs(session, specs[:5])
    with sessions() as session:
        rows = session.execute(select(Job.id, Job.seq, Job.name, Job.spec)).tuples().all()
    assert len(rows) == 305 and len({seq for _, seq, _, _ in rows}) == 305
    by_id = {job_id: (seq, name, spec) for job_id, seq, name, spec in rows}
    assert [by_id[i][1] for i in ids[:300]] == [f"b{i}" for i in range(300)]
    assert [by_id[i][0] for i in ids] == sorted(by_id[i][0] for i in ids)
    assert by_id[ids[7]][2]["env"] == {"I": "7"}


def test_the_migrations_make_the_sweep_tables_columns_and_every_job_index_of_the_models(engine: Engine) -> None:
    inspector = inspect(engine)
    assert {c["name"] for c in inspector.get_columns("sweeps")} == {c.name for c in Sweep.__table__.columns}
    assert {"params", "metrics", "metrics_step"} <= {c["name"] for c in inspector.get_columns("jobs")}
    in_database = {index["name"] for index in inspector.get_indexes("jobs")}
    assert {str(index.name) for index in Job.__table__.indexes} <= in_database
