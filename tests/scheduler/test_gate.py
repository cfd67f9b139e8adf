"""The dependency gate on both databases: edges resolve when targets end, a failed one cancels a chain at
once, and its writes commit only under the leader's lease."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard.db.dependencies import cancel_cascade
from trainyard.db.jobs import NewJob, PlannedDependency, cancel_job, create_jobs, load_job_dict
from trainyard.db.models import Job, JobDependency, SchedulerLease
from trainyard.scheduler.gate import DependencyGate
from trainyard.scheduler.lease import Deposed, LeaderLease, fenced_sessions
from trainyard.scheduler.snapshot import SnapshotReader
from trainyard.spec import parse_job_spec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _gate() -> DependencyGate:
    return DependencyGate(clock=lambda: NOW)


def _chain(sessions: sessionmaker[Session], length: int, on: str = "succeeded") -> list[str]:
    """A chain in one call: job i waits for job i-1 (batch-local references by index)."""
    new = [NewJob(parse_job_spec({"name": f"step{i}", "command": "true"}),
                  depends=(PlannedDependency("job", on, batch_index=i - 1),) if i else ())
           for i in range(length)]  # fmt: skip
    with sessions.begin() as session:
        return create_jobs(session, new)


def _end(sessions: sessionmaker[Session], job_id: str, state: str) -> None:
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=state, ended_at=NOW))


def _row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _queued_ids(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return {view.id for view in SnapshotReader()._queued_views(session)}


def test_a_waiting_job_stays_out_of_the_queue_with_a_reason_until_its_dependency_succeeds(
    sessions: sessionmaker[Session],
) -> None:
    first, second, third = _chain(sessions, 3)
    assert _queued_ids(sessions) == {first}
    waiting = _row(sessions, second)
    assert waiting.state == "queued" and waiting.waiting_on == 1
    assert waiting.pending_reason == f"waiting for job {first} (step0) to succeed"
    assert _row(sessions, first).dependants_waiting == 1

    with sessions.begin() as session:
        assert _gate().run(session).met == 0  # nothing ended: nothing to do
    _end(sessions, first, "succeeded")
    with sessions.begin() as session:
        result = _gate().run(session)
    assert result.met == 1 and result.released == 1 and result.cancelled == []
    assert _queued_ids(sessions) == {second}
    assert _row(sessions, first).dependants_waiting == 0 and _row(sessions, second).waiting_on == 0
    assert _row(sessions, third).pending_reason == f"waiting for job {second} (step1) to succeed"


def test_a_failed_stage_cancels_the_whole_chain_in_one_pass(sessions: sessionmaker[Session]) -> None:
    ids = _chain(sessions, 10)
    _end(sessions, ids[0], "failed")
    with sessions.begin() as session:
        result = _gate().run(session)
    assert sorted(result.cancelled) == sorted(ids[1:])
    for job_id in ids[1:]:
        row = _row(sessions, job_id)
        assert (row.state, row.end_reason, row.pending_reason) == ("cancelled", "dependency_failed", None)
        assert row.ended_at == NOW
    with sessions() as session:
        shown = load_job_dict(session, ids[1])
        statuses = set(session.scalars(select(JobDependency.status)))
        counts = set(session.scalars(select(Job.dependants_waiting)))
    assert shown is not None and shown["reason"] == "dependency_failed"
    assert shown["depends_on"] == [{"job": ids[0], "on": "succeeded", "name": "step0", "state": "failed",
                                    "status": "failed", "condition": "failed"}]  # fmt: skip
    assert statuses == {"failed"} and counts == {0}


def test_on_ended_runs_after_a_failure_and_on_failed_is_cancelled_by_a_success(
    sessions: sessionmaker[Session],
) -> None:
    cleanup_target, cleanup = _chain(sessions, 2, on="ended")
    alert_target, alert = _chain(sessions, 2, on="failed")
    _end(sessions, cleanup_target, "failed")
    _end(sessions, alert_target, "succeeded")
    with sessions.begin() as session:
        result = _gate().run(session)
    assert result.cancelled == [alert] and result.released == 1
    assert _row(sessions, cleanup).waiting_on == 0 and _row(sessions, cleanup).state == "queued"


def test_cancelling_a_job_counts_the_dependants_it_cancels_and_the_gate_ends_them(
    sessions: sessionmaker[Session],
) -> None:
    ids = _chain(sessions, 4)
    (tolerant,) = create_jobs_on(sessions, ids[0], "ended")
    with sessions.begin() as session:
        assert cancel_cascade(session, ids[0]) == 3  # the chain; `ended` still runs
        cancel_job(session, ids[0])
    with sessions.begin() as session:
        result = _gate().run(session)
    assert sorted(result.cancelled) == sorted(ids[1:])
    assert _row(sessions, tolerant).waiting_on == 0


def create_jobs_on(sessions: sessionmaker[Session], target: str, on: str) -> list[str]:
    spec = parse_job_spec({"name": "after", "command": "true"})
    with sessions.begin() as session:
        return create_jobs(session, [NewJob(spec, depends=(PlannedDependency("job", on, target_id=target),))])


def test_a_dependency_on_a_job_that_already_ended_is_met_at_the_next_pass(sessions: sessionmaker[Session]) -> None:
    (done,) = _chain(sessions, 1)
    _end(sessions, done, "succeeded")
    (later,) = create_jobs_on(sessions, done, "succeeded")
    assert _row(sessions, done).dependants_waiting == 1
    with sessions.begin() as session:
        assert _gate().run(session).released == 1
    assert later in _queued_ids(sessions)


def test_a_deposed_leader_commits_none_of_the_gates_writes(sessions: sessionmaker[Session]) -> None:
    first, second = _chain(sessions, 2)
    _end(sessions, first, "failed")
    lease = LeaderLease(sessions, "gate-test", lease_s=30.0)
    assert lease.try_acquire()
    fenced = fenced_sessions(sessions, lease)
    with sessions.begin() as session:  # another scheduler takes over: the epoch moves on
        session.execute(update(SchedulerLease).values(holder="other", epoch=SchedulerLease.epoch + 1))
    with pytest.raises(Deposed), fenced.begin() as session:
        assert _gate().run(session).cancelled == [second]
    assert _row(sessions, second).state == "queued"  # rolled back with the transaction


def test_with_nothing_ended_the_gate_costs_two_lookups_whatever_waits(sessions: sessionmaker[Session]) -> None:
    """10,000 waiting jobs: the gate reads no edge and no waiting job, only the index of ended targets."""
    _chain(sessions, 10_000)
    statements: list[str] = []
    engine = sessions.kw["bind"]

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with sessions.begin() as session:
            assert _gate().run(session).met == 0
    finally:
        event.remove(engine, "before_cursor_execute", count)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2 and not any("job_dependencies" in s for s in reads), reads
