"""Job records on both databases: idempotent creation and compare-and-set transitions."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.db.jobs import IdempotencyConflict, NewJob, cancel_job, create_jobs, load_job_dict
from trainyard.db.models import Attempt, Job, Node, Part, utcnow
from trainyard.scheduler import outcomes
from trainyard.spec import parse_job_spec


def _spec(**extra: object) -> NewJob:
    return NewJob(parse_job_spec({"name": "j", "command": "true", **extra}))


def test_idempotency_key_returns_the_same_job_and_refuses_another_spec(database_url: str) -> None:
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions.begin() as session:
        (first,) = create_jobs(session, [_spec(idempotency_key="k1")])
    with sessions.begin() as session:
        (again,) = create_jobs(session, [_spec(idempotency_key="k1")])
    assert again == first
    with sessions.begin() as session, pytest.raises(IdempotencyConflict):
        create_jobs(session, [_spec(idempotency_key="k1", priority="high")])
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_cancelling_a_queued_job_ends_it_at_once(database_url: str) -> None:
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions.begin() as session:
        (job_id,) = create_jobs(session, [_spec()])
    with sessions.begin() as session:
        assert cancel_job(session, job_id) == "cancelled"
    with sessions() as session:
        data = load_job_dict(session, job_id)
    assert data is not None and data["state"] == "cancelled" and data["attempts"] == []


def _running_job(sessions, node_id: str = "n1") -> str:  # type: ignore[no-untyped-def]
    now = utcnow()
    with sessions.begin() as session:
        (job_id,) = create_jobs(session, [_spec(max_retries=0)])
        session.add(Node(id=node_id, pool="default", address="127.0.0.2", slots=2, gpus=[], session="s"))
        session.flush()
        session.get(Job, job_id).state = "running"
        session.add(Attempt(job_id=job_id, number=1, state="running", started_at=now))
        session.add(Part(job_id=job_id, attempt=1, rank=0, node_id=node_id, gpus=[], cpus=1.0, state="running"))
    return job_id


def test_an_exit_for_a_stale_attempt_changes_nothing_and_is_counted(database_url: str) -> None:
    sessions = make_sessionmaker(make_engine(database_url))
    job_id = _running_job(sessions)
    effects = outcomes.Effects()
    stale = {"kind": "part_exited", "job_id": job_id, "attempt": 7, "rank": 0, "node": "n1", "exit_code": 1}
    with sessions.begin() as session:
        outcomes.part_exited(session, stale, utcnow(), effects)
    assert effects.stale_writes == 1
    current = {**stale, "attempt": 1, "exit_code": 0}
    with sessions.begin() as session:
        outcomes.part_exited(session, current, utcnow(), effects)
    with sessions.begin() as session:  # a duplicate of the same event is stale too
        outcomes.part_exited(session, current, utcnow(), effects)
    assert effects.stale_writes == 2
    with sessions() as session:
        data = load_job_dict(session, job_id)
    assert data is not None and data["state"] == "succeeded" and data["exit_code"] == 0


def test_node_loss_requeues_without_using_a_retry(database_url: str) -> None:
    sessions = make_sessionmaker(make_engine(database_url))
    job_id = _running_job(sessions)
    effects = outcomes.Effects()
    with sessions.begin() as session:
        node = session.get(Node, "n1")
        assert outcomes.mark_node_lost(session, node, utcnow(), effects) == 1
    with sessions() as session:
        data = load_job_dict(session, job_id)
    assert data is not None
    assert (data["state"], data["attempt"], data["retries_used"]) == ("queued", 2, 0)
    assert data["attempts"][0]["reason"] == "node_lost"


def test_retry_backoff_grows_and_is_jittered() -> None:
    delays = [outcomes.retry_delay_s(n) for n in (1, 2, 3, 4)]
    assert all(d > 0 for d in delays)
    assert outcomes.retry_delay_s(20) <= outcomes.RETRY_BACKOFF_MAX_S
    assert 4 <= outcomes.retry_delay_s(4) <= 8
