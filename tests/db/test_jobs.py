"""Job records on both databases: idempotent creation and compare-and-set transitions."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trainyard.db.jobs import IdempotencyConflict, NewJob, cancel_job, create_jobs, iso, load_job_dict
from trainyard.db.models import Attempt, Job, Node, Part, utcnow
from trainyard.scheduler import outcomes
from trainyard.spec import parse_job_spec


def _spec(**extra: object) -> NewJob:
    return NewJob(parse_job_spec({"name": "j", "command": "true", **extra}))


def test_idempotency_key_returns_the_same_job_and_refuses_another_spec(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        (first,) = create_jobs(session, [_spec(idempotency_key="k1")])
    with sessions.begin() as session:
        (again,) = create_jobs(session, [_spec(idempotency_key="k1")])
    assert again == first
    with sessions.begin() as session, pytest.raises(IdempotencyConflict):
        create_jobs(session, [_spec(idempotency_key="k1", priority="high")])
    with sessions() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_cancelling_a_queued_job_ends_it_at_once(sessions: sessionmaker[Session]) -> None:
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


def test_an_exit_for_a_stale_attempt_changes_nothing_and_is_counted(sessions: sessionmaker[Session]) -> None:
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


def test_node_loss_requeues_without_using_a_retry(sessions: sessionmaker[Session]) -> None:
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


class _Edge(random.Random):
    """A generator that always draws one end of the range: the bounds of the jitter, exactly."""

    def __init__(self, high: bool):
        super().__init__()
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_retry_backoff_grows_and_is_jittered() -> None:
    base, cap = outcomes.RETRY_BACKOFF_BASE_S, outcomes.RETRY_BACKOFF_MAX_S
    highs = [outcomes.retry_delay_s(n, _Edge(high=True)) for n in range(1, 13)]
    lows = [outcomes.retry_delay_s(n, _Edge(high=False)) for n in range(1, 13)]
    # The ceiling doubles per retry until the cap; the jitter spans the upper half of it.
    assert highs == [min(cap, base * 2 ** (n - 1)) for n in range(1, 13)]
    assert lows == [h / 2 for h in highs]
    assert highs[-1] == cap and highs[0] < highs[4] < highs[8]
    # Whatever is drawn, retry n+1 waits at least as long as retry n could (until the cap).
    assert all(lows[n + 1] >= highs[n] for n in range(len(highs) - 1) if highs[n + 1] < cap)
    # A real generator: jobs that failed together get spread over the whole range, not one value.
    rng = random.Random(1234)
    draws = [outcomes.retry_delay_s(6, rng) for _ in range(200)]
    ceiling = base * 2**5
    assert all(ceiling / 2 <= d <= ceiling for d in draws)
    assert len(set(draws)) == len(draws)
    assert min(draws) < ceiling * 0.6 and max(draws) > ceiling * 0.9
    # Without a generator the module's own is used, still inside the bounds.
    assert all(ceiling / 2 <= outcomes.retry_delay_s(6) <= ceiling for _ in range(20))


def test_timestamps_always_carry_microseconds_so_they_sort_as_strings() -> None:
    on_the_second = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    just_after = on_the_second.replace(microsecond=1)
    assert iso(on_the_second) == "2030-01-02T03:04:05.000000Z"
    assert iso(just_after) == "2030-01-02T03:04:05.000001Z"
    assert sorted([iso(just_after), iso(on_the_second)]) == [iso(on_the_second), iso(just_after)]
    assert datetime.fromisoformat(str(iso(on_the_second))) == on_the_second
    assert iso(None) is None


def test_a_job_read_back_from_the_database_has_fixed_width_times(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        (job_id,) = create_jobs(session, [_spec()])
        session.get(Job, job_id).submitted_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with sessions() as session:
        data = load_job_dict(session, job_id)
    assert data is not None and data["submitted_at"] == "2030-01-02T03:04:05.000000Z"
