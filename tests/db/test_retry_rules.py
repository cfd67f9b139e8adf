"""Retry rules applied by the scheduler's outcome writes, on both databases: counters, attempts, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from trainyard import sweeps
from trainyard.db.jobs import NewJob, create_jobs, load_job_dict
from trainyard.db.models import Attempt, Event, Job, Node, Part, Sweep
from trainyard.db.sweeps import create_sweep
from trainyard.scheduler import outcomes
from trainyard.spec import parse_job_spec

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)  # the clock passed to every outcome write


def _submit(sessions: sessionmaker[Session], **extra: Any) -> str:
    with sessions.begin() as session:
        (job_id,) = create_jobs(session, [NewJob(parse_job_spec({"name": "r", "command": "true", **extra}))])
        if session.get(Node, "n1") is None:
            session.add(Node(id="n1", pool="default", address="127.0.0.2", slots=2, gpus=[], session="s"))
    return job_id


def _start(sessions: sessionmaker[Session], job_id: str) -> int:
    """Place the job's current attempt on n1 and mark it running, as dispatch and part_started would."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "queued"
        job.state = "running"
        session.add(Attempt(job_id=job_id, number=job.attempt, state="running", started_at=T0))
        session.add(Part(job_id=job_id, attempt=job.attempt, rank=0, node_id="n1", gpus=[], cpus=1.0, state="running"))
        return job.attempt


def _exit(sessions: sessionmaker[Session], job_id: str, attempt: int, code: int, reason: str = "exit") -> None:
    event = {"job_id": job_id, "attempt": attempt, "rank": 0, "node": "n1", "exit_code": code, "reason": reason}
    with sessions.begin() as session:
        outcomes.part_exited(session, event, T0, outcomes.Effects())


def _shown(sessions: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    with sessions() as session:
        data = load_job_dict(session, job_id)
    assert data is not None
    return data


def test_a_rule_retries_exit_137_up_to_its_max_and_each_attempt_names_it(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions, max_retries=0, retry=[{"exit_codes": [137, 143], "max": 2, "backoff": "30s"}])
    for _ in range(3):
        _exit(sessions, job_id, _start(sessions, job_id), 137)
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            if job.state == "queued":  # its backoff runs from the clock the outcome was applied with
                assert job.not_before == T0 + timedelta(seconds=30)
                assert job.pending_reason is not None and "by retry[0] after exit code 137" in job.pending_reason
    data = _shown(sessions, job_id)
    assert data["state"] == "failed" and data["exit_code"] == 137 and data["attempt"] == 3
    assert [a["retried_by"] for a in data["attempts"]] == ["retry[0]", "retry[0]", None]
    assert [a["state"] for a in data["attempts"]] == ["failed"] * 3
    assert data["retries_by_rule"] == {"retry[0]": 2} and data["retries_used"] == 0
    with sessions() as session:
        details = session.scalars(select(Event.detail).where(Event.job_id == job_id, Event.kind == "requeued")).all()
    assert details == [{"reason": "exit", "retried_by": "retry[0]"}] * 2


def test_an_exit_code_no_rule_names_falls_back_to_max_retries(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions, max_retries=0, retry=[{"exit_codes": [137], "max": 5}])
    _exit(sessions, job_id, _start(sessions, job_id), 1)
    data = _shown(sessions, job_id)
    assert data["state"] == "failed" and data["attempt"] == 1
    assert data["attempts"][0]["retried_by"] is None and data["retries_by_rule"] == {}

    counted = _submit(sessions, max_retries=1, retry=[{"exit_codes": [137], "max": 5}])
    _exit(sessions, counted, _start(sessions, counted), 1)
    _exit(sessions, counted, _start(sessions, counted), 1)
    data = _shown(sessions, counted)
    assert data["state"] == "failed" and [a["retried_by"] for a in data["attempts"]] == ["max_retries", None]
    assert data["retries_used"] == 1


def test_a_wall_clock_kill_is_retried_only_by_a_rule_that_names_it(sessions: sessionmaker[Session]) -> None:
    plain = _submit(sessions, max_retries=3)
    _exit(sessions, plain, _start(sessions, plain), 137, reason="wall_clock")
    assert _shown(sessions, plain)["state"] == "failed"

    ruled = _submit(sessions, max_retries=0, retry=[{"exit_codes": [137]}, {"reasons": ["wall_clock"], "max": 1}])
    _exit(sessions, ruled, _start(sessions, ruled), 137, reason="wall_clock")  # its reason matches rule 1, not rule 0
    data = _shown(sessions, ruled)
    assert data["state"] == "queued" and data["attempts"][0]["retried_by"] == "retry[1]"


def test_a_node_lost_rule_caps_requeues_that_are_otherwise_free(sessions: sessionmaker[Session]) -> None:
    uncapped = _submit(sessions, max_retries=0)
    _start(sessions, uncapped)
    with sessions.begin() as session:
        node = session.get(Node, "n1")
        assert node is not None
        outcomes.mark_node_lost(session, node, T0, outcomes.Effects())
        node.state = "up"
    data = _shown(sessions, uncapped)
    assert (data["state"], data["attempts"][0]["state"], data["attempts"][0]["retried_by"]) == (
        "queued",
        "requeued",
        None,
    )

    capped = _submit(sessions, retry=[{"reasons": ["node_lost"], "max": 1, "backoff": 60}])
    for _ in range(2):
        _start(sessions, capped)
        with sessions.begin() as session:
            node = session.get(Node, "n1")
            assert node is not None
            outcomes.mark_node_lost(session, node, T0, outcomes.Effects())
            node.state = "up"
        with sessions.begin() as session:  # the uncapped job's part holds n1 no more
            for part in session.scalars(select(Part).where(Part.active.is_(True))):
                part.active = False
    data = _shown(sessions, capped)
    assert data["state"] == "failed" and [a["state"] for a in data["attempts"]] == ["requeued", "failed"]
    assert [a["retried_by"] for a in data["attempts"]] == ["retry[0]", None]
    assert [a["reason"] for a in data["attempts"]] == ["node_lost", "node_lost"]


def test_sweep_points_carry_their_templates_rules(sessions: sessionmaker[Session]) -> None:
    template = {"name": "p{x}", "command": "exit 137", "max_retries": 0, "retry": [{"exit_codes": [137], "max": 1}]}
    spec = sweeps.parse_sweep_spec({"template": template, "grid": {"x": [1, 2]}})
    with sessions.begin() as session:
        sweep_id = create_sweep(session, spec, sweeps.expand(spec), secrets_enc=None)
        session.add(Node(id="n1", pool="default", address="127.0.0.2", slots=2, gpus=[], session="s"))
    point = f"{sweep_id}-0"
    _exit(sessions, point, _start(sessions, point), 137)
    data = _shown(sessions, point)
    assert data["state"] == "queued" and data["attempts"][0]["retried_by"] == "retry[0]"
    assert data["spec"]["retry"] == [{"exit_codes": [137], "reasons": [], "max": 1, "backoff": None}]


def test_the_migration_adds_the_rule_and_rerun_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, model in (("jobs", Job), ("attempts", Attempt), ("sweeps", Sweep)):
        assert {c["name"] for c in inspector.get_columns(table)} == {c.name for c in model.__table__.columns}
