"""The webhook outbox on both databases: rows written with the end of a job, sent by the notifier
to a real HTTP server on 127.0.0.1, retried on a fake clock, given up after its tries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.webhook_receiver import WebhookReceiver
from trainyard import notify, sweeps
from trainyard.api.notifier import Notifier, NotifierSettings
from trainyard.db.jobs import NewJob, cancel_job, create_jobs, load_job_dict
from trainyard.db.models import Attempt, Job, Node, Notification, Part, Sweep, WorkspaceSettings
from trainyard.db.notifications import record_job_ends
from trainyard.db.sweeps import create_sweep
from trainyard.retrying import Backoff
from trainyard.scheduler import outcomes
from trainyard.spec import parse_job_spec

SECRET_KEY = "test-secret-key"


class FakeClock:
    def __init__(self) -> None:
        self.at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def _notifier(sessions: sessionmaker[Session], clock: FakeClock, tries: int = 4) -> Notifier:
    settings = NotifierSettings(max_tries=tries, backoff=Backoff(first_s=2.0, max_s=60.0), timeout_s=5.0)
    return Notifier(sessions, SECRET_KEY, settings, now=clock)


def _submit(sessions: sessionmaker[Session], **extra: Any) -> str:
    spec = parse_job_spec({"name": "hook", "command": "true", **extra})
    with sessions.begin() as session:
        (job_id,) = create_jobs(session, [NewJob(spec, secrets_enc="x" if spec.secrets else None)])
    return job_id


def _cancel(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        assert cancel_job(session, job_id) == "cancelled"


def _rows(sessions: sessionmaker[Session]) -> list[Notification]:
    with sessions() as session:
        return list(session.scalars(select(Notification)))


def test_cancelling_a_queued_job_records_and_sends_a_signed_webhook(
    sessions: sessionmaker[Session], receiver: WebhookReceiver
) -> None:
    job_id = _submit(sessions, notify=[{"url": receiver.url, "events": ["cancelled"]}],
                     env={"PLAIN": "v"}, secrets={"API_TOKEN": "s3cr3t-value"})  # fmt: skip
    _cancel(sessions, job_id)
    (row,) = _rows(sessions)
    assert row.subject_id == job_id and row.event == "job.cancelled" and row.status == "pending"
    clock = FakeClock()
    assert _notifier(sessions, clock).run_once() == 1
    (got,) = receiver.received
    key = notify.workspace_key("default", SECRET_KEY)
    assert notify.verify(key, got.body, got.headers, now_s=time.time())  # signed with the wall clock
    assert got.headers[notify.DELIVERY_HEADER] == row.id and b"s3cr3t-value" not in got.body
    with sessions() as session:
        shown = load_job_dict(session, job_id)
    assert shown is not None
    assert shown["notifications"][0] | {"id": None} == {
        "id": None, "url": receiver.url, "event": "job.cancelled", "status": "delivered", "attempts": 1,
        "last_status_code": 200, "last_error": None, "delivered_at": shown["notifications"][0]["delivered_at"],
    }  # fmt: skip


def test_a_target_for_other_events_records_nothing(sessions: sessionmaker[Session]) -> None:
    _cancel(sessions, _submit(sessions, notify=[{"url": "http://127.0.0.1:9/h", "events": ["succeeded"]}]))
    assert _rows(sessions) == []


def test_server_errors_are_retried_with_backoff_until_delivered(
    sessions: sessionmaker[Session], receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 503, 200]
    _cancel(sessions, _submit(sessions, notify=[{"url": receiver.url}]))
    clock = FakeClock()
    notifier = _notifier(sessions, clock)
    assert notifier.run_once() == 1  # 500
    assert notifier.run_once() == 0  # not due before its backoff
    clock.advance(2.0)
    assert notifier.run_once() == 1  # 503
    clock.advance(3.9)
    assert notifier.run_once() == 0  # the second wait is 4 s
    clock.advance(0.1)
    assert notifier.run_once() == 1
    (row,) = _rows(sessions)
    assert row.status == "delivered" and row.attempts == 3 and len(receiver.received) == 3
    assert len({r.headers[notify.DELIVERY_HEADER] for r in receiver.received}) == 1  # one id: receivers dedupe


def test_a_receiver_that_is_down_is_given_up_after_its_tries(sessions: sessionmaker[Session]) -> None:
    down = WebhookReceiver().start()
    url = down.url
    down.stop()  # nothing listens there now: connection refused
    _cancel(sessions, _submit(sessions, notify=[{"url": url}]))
    clock = FakeClock()
    notifier = _notifier(sessions, clock, tries=3)
    for _ in range(3):
        assert notifier.run_once() == 1
        clock.advance(60)
    assert notifier.run_once() == 0
    (row,) = _rows(sessions)
    assert row.status == "failed" and row.attempts == 3 and row.last_status_code is None
    assert row.last_error and "ConnectError" in row.last_error


def test_a_client_error_is_not_retried(sessions: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    receiver.answers = [404]
    _cancel(sessions, _submit(sessions, notify=[{"url": receiver.url}]))
    assert _notifier(sessions, FakeClock()).run_once() == 1
    (row,) = _rows(sessions)
    assert row.status == "failed" and row.last_status_code == 404


def test_workspace_targets_fire_for_its_jobs_and_one_url_gets_one_row(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(
            WorkspaceSettings(workspace="default", notify=[{"url": "http://127.0.0.1:9/a", "events": ["ended"]}])
        )
    job_id = _submit(sessions, notify=[{"url": "http://127.0.0.1:9/a", "events": ["cancelled"]}])
    _cancel(sessions, job_id)
    assert [r.url for r in _rows(sessions)] == ["http://127.0.0.1:9/a"]


def test_recording_a_job_that_has_not_ended_writes_nothing(sessions: sessionmaker[Session]) -> None:
    job_id = _submit(sessions, notify=[{"url": "http://127.0.0.1:9/a"}])
    with sessions.begin() as session:
        assert record_job_ends(session, [job_id], datetime.now(UTC)) == 0
    assert _rows(sessions) == []


def test_the_migration_makes_the_outbox_tables_and_notify_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, model in (("jobs", Job), ("sweeps", Sweep), ("notifications", Notification),
                         ("workspace_settings", WorkspaceSettings)):  # fmt: skip
        assert {c["name"] for c in inspector.get_columns(table)} == {c.name for c in model.__table__.columns}


def _run_and_exit(sessions: sessionmaker[Session], job_id: str, code: int) -> None:
    """Place the job on n1, then apply its exit as the scheduler's loop does: outcome and outbox in one transaction."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        if session.get(Node, "n1") is None:
            session.add(Node(id="n1", pool="default", address="127.0.0.2", slots=2, gpus=[], session="s"))
        job = session.get(Job, job_id)
        assert job is not None
        job.state = "running"
        session.add(Attempt(job_id=job_id, number=job.attempt, state="running", started_at=now))
        session.add(Part(job_id=job_id, attempt=job.attempt, rank=0, node_id="n1", gpus=[], cpus=1.0, state="running"))
    event = {"kind": "part_exited", "job_id": job_id, "attempt": 1, "rank": 0, "node": "n1", "exit_code": code}
    with sessions.begin() as session:
        effects = outcomes.Effects()
        outcomes.apply_part_events(session, [event], now, effects)
        outcomes.record_notifications(session, effects, now)


def test_a_job_ended_by_the_scheduler_gets_its_row_and_a_retried_one_none(sessions: sessionmaker[Session]) -> None:
    failed = _submit(sessions, max_retries=0, notify=[{"url": "http://127.0.0.1:9/f", "events": ["failed"]}])
    retried = _submit(sessions, max_retries=1, notify=[{"url": "http://127.0.0.1:9/f", "events": ["ended"]}])
    _run_and_exit(sessions, failed, 3)
    _run_and_exit(sessions, retried, 3)  # queued again: not an end
    assert [(r.subject_id, r.event) for r in _rows(sessions)] == [(failed, "job.failed")]


def test_a_sweep_notifies_once_when_its_last_point_ends(sessions: sessionmaker[Session]) -> None:
    spec = sweeps.parse_sweep_spec({"template": {"name": "p-{x}", "command": "true"}, "grid": {"x": [1, 2]},
                                    "notify": [{"url": "http://127.0.0.1:9/s"}]})  # fmt: skip
    with sessions.begin() as session:
        sweep_id = create_sweep(session, spec, sweeps.expand(spec), None)
    first, second = f"{sweep_id}-0", f"{sweep_id}-1"
    _run_and_exit(sessions, first, 0)
    assert _rows(sessions) == []  # one point still runs; the template asked for nothing per point
    _run_and_exit(sessions, second, 0)
    assert [(r.subject_kind, r.subject_id, r.event) for r in _rows(sessions)] == [
        ("sweep", sweep_id, "sweep.succeeded")
    ]
