"""Live metrics applied by the scheduler on both databases: batches stored compare-and-set on the part
and the file offset, the per-attempt cap, a sweep's series, and early stopping on a fake clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from trainyard import sweeps
from trainyard.db.jobs import NewJob, create_jobs
from trainyard.db.models import Attempt, Event, Job, MetricPoint, Node, Part, SchedulerLease
from trainyard.db.sweeps import create_sweep
from trainyard.early_stopping import EARLY_STOPPED
from trainyard.scheduler import live_metrics
from trainyard.scheduler.lease import Deposed, LeaderLease, fenced_sessions
from trainyard.scheduler.outcomes import Effects
from trainyard.spec import parse_job_spec

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)  # the clock passed to every write
REPORTED_AT = 1_900_000_000.0  # a point's own time (seconds since the epoch), as trainyard.report wrote it
MEDIAN = {"metric": "loss", "mode": "min", "policy": "median", "grace_steps": 1, "min_points": 2}


class FakeClock:
    def __init__(self) -> None:
        self.at = 500.0

    def __call__(self) -> float:
        return self.at


def _nodes(session: Session) -> None:
    for node_id in ("n1", "n2"):
        if session.get(Node, node_id) is None:
            session.add(Node(id=node_id, pool="default", address="127.0.0.2", slots=8, gpus=[], session="s"))


def _submit(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        (job_id,) = create_jobs(session, [NewJob(parse_job_spec({"name": "m", "command": "true"}))])
        _nodes(session)
    return job_id


def _sweep(sessions: sessionmaker[Session], points: int, early_stopping: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {"template": {"name": "p{x}", "command": "true"}, "grid": {"x": list(range(points))}}
    if early_stopping is not None:
        body["early_stopping"] = early_stopping
    spec = sweeps.parse_sweep_spec(body)
    with sessions.begin() as session:
        sweep_id = create_sweep(session, spec, sweeps.expand(spec), secrets_enc=None)
        _nodes(session)
    return sweep_id


def _start(sessions: sessionmaker[Session], job_id: str, node: str = "n1") -> int:
    """Place the job's current attempt on `node` and mark it running, as dispatch and part_started would."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "queued"
        job.state = "running"
        session.add(Attempt(job_id=job_id, number=job.attempt, state="running", started_at=T0))
        session.add(Part(job_id=job_id, attempt=job.attempt, rank=0, node_id=node, gpus=[], cpus=1.0, state="running"))
        return job.attempt


def _requeue(sessions: sessionmaker[Session], job_id: str) -> None:
    """End the current attempt (its part no longer active) and queue the job's next one."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for part in session.scalars(select(Part).where(Part.job_id == job_id, Part.active.is_(True))):
            part.active, part.state = False, "exited"
        job.state, job.attempt = "queued", job.attempt + 1


def _batch(
    job_id: str, attempt: int, offset: int, end: int, points: list[dict[str, Any]], node: str = "n1"
) -> dict[str, Any]:
    """A `metrics` event as the events reader hands it on (wire.MetricsReported, dumped)."""
    return {"kind": "metrics", "job_id": job_id, "attempt": attempt, "rank": 0, "node": node,
            "offset": offset, "end": end, "points": points}  # fmt: skip


def _point(step: int | None, **values: Any) -> dict[str, Any]:
    return {"step": step, "time": REPORTED_AT + (step or 0), "values": values}


def _apply(sessions: sessionmaker[Session], *events: dict[str, Any]) -> tuple[set[str], Effects]:
    effects = Effects()
    with sessions.begin() as session:
        reported = live_metrics.apply_metrics(session, list(events), T0, effects)
    return reported, effects


def _job(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _attempt(sessions: sessionmaker[Session], job_id: str, number: int) -> tuple[int, int]:
    with sessions() as session:
        row = session.get(Attempt, (job_id, number))
        assert row is not None
        return row.metrics_offset, row.metrics_points


def _points(sessions: sessionmaker[Session], job_id: str) -> list[tuple[int, int | None, dict[str, Any]]]:
    with sessions() as session:
        rows = session.execute(
            select(MetricPoint.attempt, MetricPoint.step, MetricPoint.values)
            .where(MetricPoint.job_id == job_id)
            .order_by(MetricPoint.id)
        ).tuples()
        return [(attempt, step, values) for attempt, step, values in rows]


def _events(sessions: sessionmaker[Session], kind: str) -> list[Event]:
    with sessions() as session:
        rows = list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))
        session.expunge_all()
        return rows


# -- apply_metrics --------------------------------------------------------------------------


def test_a_current_batch_stores_its_points_the_jobs_latest_values_and_the_attempts_offset(
    sessions: sessionmaker[Session],
) -> None:
    job_id = _submit(sessions)
    attempt = _start(sessions, job_id)
    reported, effects = _apply(sessions, _batch(job_id, attempt, 0, 120, [_point(1, loss=2.0, acc=0.1),
                                                                        _point(2, loss=1.5)]))  # fmt: skip
    assert reported == set() and effects.stale_writes == 0  # not a sweep point: no sweep to judge
    assert _points(sessions, job_id) == [(1, 1, {"loss": 2.0, "acc": 0.1}), (1, 2, {"loss": 1.5})]
    with sessions() as session:
        ats = session.scalars(select(MetricPoint.at).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id))
        assert list(ats) == [datetime.fromtimestamp(REPORTED_AT + s, UTC) for s in (1, 2)]  # the point's own time
    job = _job(sessions, job_id)
    assert job.metrics == {"loss": 1.5, "acc": 0.1} and job.metrics_step == 2
    assert _attempt(sessions, job_id, attempt) == (120, 2)

    # The next batch starts where the last one ended: stored, and merged into the latest values.
    _apply(sessions, _batch(job_id, attempt, 120, 200, [_point(3, acc=0.4)]))
    job = _job(sessions, job_id)
    assert job.metrics == {"loss": 1.5, "acc": 0.4} and job.metrics_step == 3
    assert _attempt(sessions, job_id, attempt) == (200, 3)
    assert [step for _, step, _ in _points(sessions, job_id)] == [1, 2, 3]


def test_a_batch_that_lands_again_is_ignored(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions)
    attempt = _start(sessions, job_id)
    _apply(sessions, _batch(job_id, attempt, 0, 100, [_point(1, loss=2.0)]))
    _apply(sessions, _batch(job_id, attempt, 100, 180, [_point(2, loss=1.0)]))
    # The outbox re-sends the first batch (its offset is below what is stored): nothing changes.
    _, effects = _apply(sessions, _batch(job_id, attempt, 0, 100, [_point(1, loss=9.0)]))
    assert effects.stale_writes == 0 and _events(sessions, "stale_rejected") == []
    assert _points(sessions, job_id) == [(1, 1, {"loss": 2.0}), (1, 2, {"loss": 1.0})]
    job = _job(sessions, job_id)
    assert job.metrics == {"loss": 1.0} and job.metrics_step == 2
    assert _attempt(sessions, job_id, attempt) == (180, 2)


def test_a_batch_from_a_stale_attempt_an_inactive_part_or_another_node_is_recorded_stale_and_stores_nothing(
    sessions: sessionmaker[Session],
) -> None:
    old = _submit(sessions)  # its attempt 1 ended; attempt 2 runs
    _start(sessions, old)
    _requeue(sessions, old)
    _start(sessions, old)
    ended = _submit(sessions)  # its only part is no longer active
    _start(sessions, ended)
    with sessions.begin() as session:
        session.execute(update(Part).where(Part.job_id == ended).values(active=False, state="exited"))
    elsewhere = _submit(sessions)  # runs on n1; a batch claims n2
    _start(sessions, elsewhere)

    batches = [
        _batch(old, 1, 0, 50, [_point(5, loss=1.0)]),
        _batch(ended, 1, 0, 50, [_point(5, loss=1.0)]),
        _batch(elsewhere, 1, 0, 50, [_point(5, loss=1.0)], node="n2"),
    ]
    _, effects = _apply(sessions, *batches)
    assert effects.stale_writes == 3
    stale = _events(sessions, "stale_rejected")
    assert sorted((e.job_id, e.attempt, e.node_id) for e in stale) == sorted(
        [(old, 1, "n1"), (ended, 1, "n1"), (elsewhere, 1, "n2")]
    )
    assert all(e.detail == {"event": "metrics"} for e in stale)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(MetricPoint)) == 0
    for job_id in (old, ended, elsewhere):
        job = _job(sessions, job_id)
        assert job.metrics is None and job.metrics_step is None
        assert _attempt(sessions, job_id, 1) == (0, 0)


def test_the_cap_drops_points_past_it_and_says_so_once(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_metrics, "MAX_POINTS_PER_ATTEMPT", 3)
    job_id = _submit(sessions)
    attempt = _start(sessions, job_id)
    _apply(sessions, _batch(job_id, attempt, 0, 10, [_point(1, loss=5.0), _point(2, loss=4.0)]))
    assert _events(sessions, "metrics_capped") == []
    _apply(sessions, _batch(job_id, attempt, 10, 20, [_point(3, loss=3.0), _point(4, loss=2.0)]))  # one fits
    _apply(sessions, _batch(job_id, attempt, 20, 30, [_point(5, loss=1.0), _point(6, loss=0.5)]))  # none fit
    _apply(sessions, _batch(job_id, attempt, 30, 40, [_point(7, loss=0.25)]))
    assert [step for _, step, _ in _points(sessions, job_id)] == [1, 2, 3]
    (capped,) = _events(sessions, "metrics_capped")
    assert (capped.job_id, capped.attempt, capped.detail) == (job_id, attempt, {"limit": 3})
    job = _job(sessions, job_id)  # the latest values still follow every batch
    assert job.metrics == {"loss": 0.25} and job.metrics_step == 7
    assert _attempt(sessions, job_id, attempt)[0] == 40

    # Filling the cap exactly says nothing; the first point past it is the one said.
    exact = _submit(sessions)
    attempt = _start(sessions, exact)
    _apply(sessions, _batch(exact, attempt, 0, 10, [_point(s, loss=1.0) for s in (1, 2, 3)]))
    assert [e.job_id for e in _events(sessions, "metrics_capped")] == [job_id]
    _apply(sessions, _batch(exact, attempt, 10, 20, [_point(4, loss=1.0)]))
    _apply(sessions, _batch(exact, attempt, 20, 30, [_point(5, loss=1.0)]))
    assert [e.job_id for e in _events(sessions, "metrics_capped")] == [job_id, exact]
    assert len(_points(sessions, exact)) == 3


def test_non_finite_values_are_not_latest_values_and_are_stored_as_null(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions)
    attempt = _start(sessions, job_id)
    points = [_point(1, loss=2.0, acc=0.5), _point(2, loss=math.nan, acc=None), _point(3, loss=math.inf)]
    _, effects = _apply(sessions, _batch(job_id, attempt, 0, 90, points))
    assert effects.stale_writes == 0
    job = _job(sessions, job_id)
    assert job.metrics == {"loss": 2.0, "acc": 0.5} and job.metrics_step == 3
    # NaN and infinity are not JSON (PostgreSQL refuses them): stored as null, as the node writes them.
    assert _points(sessions, job_id) == [(1, 1, {"loss": 2.0, "acc": 0.5}), (1, 2, {"loss": None, "acc": None}),
                                         (1, 3, {"loss": None})]  # fmt: skip


def test_a_point_whose_time_or_step_no_column_holds_is_stored_without_them(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions)
    attempt = _start(sessions, job_id)
    points = [
        {"step": 1, "time": math.inf, "values": {"loss": 1.0}},
        {"step": 2, "time": 1e300, "values": {"loss": 0.9}},
        {"step": 2**70, "time": REPORTED_AT, "values": {"loss": 0.8}},
    ]
    _apply(sessions, _batch(job_id, attempt, 0, 90, points))
    with sessions() as session:
        rows = session.execute(select(MetricPoint.step, MetricPoint.at).order_by(MetricPoint.id)).tuples().all()
    assert [tuple(row) for row in rows] == [(1, T0), (2, T0), (None, datetime.fromtimestamp(REPORTED_AT, UTC))]
    job = _job(sessions, job_id)
    assert job.metrics == {"loss": 0.8} and job.metrics_step == 2
    assert _attempt(sessions, job_id, attempt) == (90, 3)


# -- a sweep's series and stopping its points -------------------------------------------------


def test_a_sweeps_series_keeps_each_points_current_attempt_in_step_order(sessions: sessionmaker[Session]) -> None:
    sweep_id = _sweep(sessions, 3, MEDIAN)
    p0, p1, p2 = (f"{sweep_id}-{i}" for i in range(3))
    _start(sessions, p0)
    reported, _ = _apply(sessions, _batch(p0, 1, 0, 10, [_point(1, loss=9.0), _point(2, loss=8.0)]))
    assert reported == {sweep_id}
    _requeue(sessions, p0)  # attempt 1's series is not the point's any more
    _start(sessions, p0)
    _apply(sessions, _batch(p0, 2, 0, 10, [_point(3, loss=1.0), _point(1, loss=3.0), _point(2, loss=2.0, acc=0.3)]))
    _start(sessions, p1)
    _apply(sessions, _batch(p1, 1, 0, 10, [_point(1, acc=0.5), _point(None, loss=4.0), _point(2, loss=math.inf)]))
    _start(sessions, p2)
    _apply(sessions, _batch(p2, 1, 0, 10, [_point(1, loss=5.0)]))
    with sessions.begin() as session:  # p2 was asked to stop: it reported, but it no longer runs
        session.execute(update(Job).where(Job.id == p2).values(cancel_requested=True))

    with sessions() as session:
        series, running = live_metrics.sweep_series(session, sweep_id, "loss")
    # p1 reported no usable loss (another metric, no step, not finite): it has no series.
    assert series == {p0: [(1, 3.0), (2, 2.0), (3, 1.0)], p2: [(1, 5.0)]}
    assert running == {p0, p1}


def test_stop_points_flags_only_points_still_on_the_attempt_it_read_and_not_asked_to_stop(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = _sweep(sessions, 4, MEDIAN)
    fine, cancelling, moved, ended = (f"{sweep_id}-{i}" for i in range(4))
    for point in (fine, cancelling, moved, ended):
        _start(sessions, point)
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == cancelling).values(cancel_requested=True, end_reason="user"))
        session.execute(update(Job).where(Job.id == ended).values(state="succeeded"))

    with sessions.begin() as session:
        # `moved` is requeued (its node was lost) and placed again between the read of its attempt
        # and the write: its new attempt is judged on its own series later, not stopped now.
        done: list[bool] = []

        @event.listens_for(session, "do_orm_execute")
        def _requeue_moved(state: ORMExecuteState) -> None:
            if state.is_update and not done:
                done.append(True)
                session.execute(update(Job).where(Job.id == moved).values(attempt=Job.attempt + 1, state="scheduled"))

        stopped = live_metrics.stop_points(session, [fine, cancelling, moved, ended], sweep_id, T0)
        assert done
    assert stopped == [fine]
    flagged = {job_id: (_job(sessions, job_id).cancel_requested, _job(sessions, job_id).end_reason)
               for job_id in (fine, cancelling, moved, ended)}  # fmt: skip
    assert flagged == {fine: (True, EARLY_STOPPED), cancelling: (True, "user"),
                       moved: (False, None), ended: (False, None)}  # fmt: skip
    (said,) = _events(sessions, EARLY_STOPPED)
    assert (said.job_id, said.attempt, said.detail) == (fine, 1, {"sweep": sweep_id})


def _report_losses(sessions: sessionmaker[Session], point: str, losses: list[float]) -> set[str]:
    reported, _ = _apply(sessions, _batch(point, 1, 0, 10, [_point(s, loss=v) for s, v in enumerate(losses, 1)]))
    return reported


def test_the_early_stopper_judges_a_dirty_sweep_at_most_once_a_period_and_stops_its_bad_points(
    sessions: sessionmaker[Session],
) -> None:
    sweep_id = _sweep(sessions, 5, MEDIAN)
    p0, p1, p2, bad, worse = (f"{sweep_id}-{i}" for i in range(5))
    for point in (p0, p1, p2, bad, worse):
        _start(sessions, point)
    clock = FakeClock()
    stopper = live_metrics.EarlyStopper(clock, period_s=1.0)
    for point, losses in ((p0, [1.0, 0.9, 0.8]), (p1, [1.1, 1.0, 0.9]), (p2, [1.2, 1.1, 1.0]), (bad, [5.0] * 3)):
        stopper.dirty.update(_report_losses(sessions, point, losses))
    assert stopper.dirty == {sweep_id}

    with sessions.begin() as session:
        # Others' running means 0.9, 1.0, 1.1 (median 1.0): only `bad`'s best (5.0) is worse.
        assert stopper.run(session, T0) == [bad]
    assert stopper.dirty == set()
    assert (_job(sessions, bad).cancel_requested, _job(sessions, bad).end_reason) == (True, EARLY_STOPPED)
    assert not any(_job(sessions, p).cancel_requested for p in (p0, p1, p2, worse))

    # `worse` reports within the period: its sweep waits, dirty, until the period has passed.
    stopper.dirty.update(_report_losses(sessions, worse, [6.0] * 3))
    clock.at += 0.5
    with sessions.begin() as session:
        assert stopper.run(session, T0) == []
    assert stopper.dirty == {sweep_id} and not _job(sessions, worse).cancel_requested
    clock.at += 0.5
    with sessions.begin() as session:
        assert stopper.run(session, T0) == [worse]
        assert stopper.run(session, T0) == []  # judged: clean until a point reports again
    assert _job(sessions, worse).end_reason == EARLY_STOPPED
    assert not any(_job(sessions, p).cancel_requested for p in (p0, p1, p2))
    assert [e.job_id for e in _events(sessions, EARLY_STOPPED)] == [bad, worse]


def test_a_sweep_without_early_stopping_is_never_judged_to_stop_anything(sessions: sessionmaker[Session]) -> None:
    sweep_id = _sweep(sessions, 4, None)
    points = [f"{sweep_id}-{i}" for i in range(4)]
    clock = FakeClock()
    stopper = live_metrics.EarlyStopper(clock, period_s=1.0)
    for point, losses in zip(points, ([1.0, 0.9], [1.1, 1.0], [1.2, 1.1], [50.0, 60.0]), strict=True):
        _start(sessions, point)
        stopper.dirty.update(_report_losses(sessions, point, losses))
    assert stopper.dirty == {sweep_id}
    for _ in range(3):
        with sessions.begin() as session:
            assert stopper.run(session, T0) == []
        clock.at += 1.0
        stopper.dirty.add(sweep_id)
    assert not any(_job(sessions, p).cancel_requested for p in points)
    assert _events(sessions, EARLY_STOPPED) == []


# -- the fence ----------------------------------------------------------------------------------


def test_a_deposed_leader_commits_none_of_a_metrics_batch(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions)
    attempt = _start(sessions, job_id)
    lease = LeaderLease(sessions, "metrics-test", lease_s=30.0)
    assert lease.try_acquire()
    fenced = fenced_sessions(sessions, lease)
    with fenced.begin() as session:  # committed while leading
        live_metrics.apply_metrics(session, [_batch(job_id, attempt, 0, 10, [_point(1, loss=2.0)])], T0, Effects())
    with sessions.begin() as session:  # another scheduler takes over: the epoch moves on
        session.execute(update(SchedulerLease).values(holder="other", epoch=SchedulerLease.epoch + 1))
    with pytest.raises(Deposed), fenced.begin() as session:
        batch = _batch(job_id, attempt, 10, 20, [_point(2, loss=1.0)])
        live_metrics.apply_metrics(session, [batch], T0, Effects())
    assert _points(sessions, job_id) == [(1, 1, {"loss": 2.0})]
    job = _job(sessions, job_id)
    assert job.metrics == {"loss": 2.0} and job.metrics_step == 1
    assert _attempt(sessions, job_id, attempt) == (10, 1)
    assert not lease.leading
