"""Applying worker events to the database, compare-and-set on the attempt number (SPEC §2 invariant 2).

Every write names the attempt it is about; a write for an attempt that is no longer current
changes no row, is counted as stale and answered with a stop message for that attempt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, bindparam, select, update
from sqlalchemy.orm import Session

from trainyard.db import notifications
from trainyard.db.engine import rowcount
from trainyard.db.models import Attempt, Event, Job, Node, Part
from trainyard.scheduler import retries
from trainyard.spec import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AttemptReason,
    AttemptState,
    JobState,
    NodeState,
    PartState,
    state_values,
)  # fmt: skip

log = logging.getLogger(__name__)
_TERMINAL = frozenset(state_values(TERMINAL_STATES))

# Reasons that put the job back in the queue without using one of its retries (a `retry:` rule
# naming node_lost caps those requeues and delays them by its backoff).
REQUEUE_REASONS = frozenset({"node_lost", "node_shutdown", "preempted"})
# Re-exported: tests and benchmarks read the backoff from here.
RETRY_BACKOFF_BASE_S = retries.RETRY_BACKOFF_BASE_S
RETRY_BACKOFF_MAX_S = retries.RETRY_BACKOFF_MAX_S
retry_delay_s = retries.retry_delay_s


@dataclass
class Effects:
    """What the scheduler must do after the transaction commits (messages, never DB writes)."""

    stops: list[tuple[str, str, int, str]] = field(default_factory=list)  # node, job, attempt, reason
    ended_attempts: list[tuple[str, int]] = field(default_factory=list)
    ended_with_secrets: list[tuple[str, int]] = field(default_factory=list)  # their secrets key goes
    stale_writes: int = 0
    start_latencies_s: list[float] = field(default_factory=list)  # submit → first start, per job
    setups: list[dict[str, Any]] = field(default_factory=list)  # `setup` control messages, with their node
    ended_jobs: list[str] = field(default_factory=list)  # ended without an attempt ending (cancelled queued)
    # A job ended that other jobs (or a sweep's dependants) may wait on: the dependency gate runs next pass.
    gate_due: bool = False
    # Jobs this transaction moved to a terminal state, as notifications read them (not read again).
    ended_rows: dict[str, notifications.EndedJob] = field(default_factory=dict)


def record_notifications(session: Session, effects: Effects, now: datetime) -> None:
    """Outbox rows for the jobs this transaction ended, written in it (so under the lease's fence)."""
    ids = [job_id for job_id, _ in effects.ended_attempts] + effects.ended_jobs
    if ids:
        notifications.record_job_ends(session, ids, now, known=effects.ended_rows)


def may_have_secrets(job: RowLike) -> bool:
    """Whether an attempt of this job was sent secrets: its own, or (a sweep point) its sweep's."""
    return job.secrets_enc is not None or job.sweep_id is not None


def record_stale(session: Session, effects: Effects, event: dict[str, Any], now: datetime) -> None:
    effects.stale_writes += 1
    session.add(
        Event(
            at=now,
            kind="stale_rejected",
            job_id=event.get("job_id"),
            attempt=event.get("attempt"),
            node_id=event.get("node"),
            detail={"event": event.get("kind")},
        )
    )


class _Row:
    """One row loaded with Core, read and changed by attribute like a mapped object; the columns
    changed are remembered and written back by `_Loaded.write`, in one executemany per shape."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)
        self.__dict__["changed_"] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[name] = value
        self.changed_[name] = value

    def __getattr__(self, name: str) -> Any:  # only for columns that were not loaded: say which
        raise AttributeError(f"column {name!r} was not loaded")


# A job, attempt or part: the mapped object, or its _Row (the rules below read both alike).
RowLike = Any


# What applying part events reads of each table: never a job's spec, params or other JSON it carries.
_PART_COLUMNS = (Part.job_id, Part.attempt, Part.rank, Part.node_id, Part.active, Part.state, Part.reason,
                 Part.exit_code, Part.logs_complete)  # fmt: skip
_JOB_COLUMNS = (
    Job.id, Job.state, Job.attempt, Job.submitted_at, Job.cancel_requested, Job.end_reason, Job.max_retries,
    Job.retries_used, Job.retry_rules, Job.retries_by_rule, Job.secrets_enc, Job.sweep_id, Job.dependants_waiting,
    Job.workspace, Job.notify,
)  # fmt: skip
_ATTEMPT_COLUMNS = (Attempt.job_id, Attempt.number, Attempt.state)
_IDS: BindParameter[list[str]] = bindparam("ids", expanding=True)
# Built once: these run on every batch of part events.
_PARTS_OF = select(*_PART_COLUMNS).where(Part.job_id.in_(_IDS))
_JOBS_OF = select(*_JOB_COLUMNS).where(Job.id.in_(_IDS))
_ATTEMPTS_OF = select(*_ATTEMPT_COLUMNS).where(Attempt.job_id.in_(_IDS))
_KEYS: dict[Any, tuple[str, ...]] = {Part: ("job_id", "attempt", "rank"), Job: ("id",), Attempt: ("job_id", "number")}
_UPDATES: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _update_statement(model: Any, columns: tuple[str, ...]) -> Any:
    """UPDATE model SET columns WHERE primary key, for executemany (built once per shape)."""
    statement = _UPDATES.get((model, columns))
    if statement is None:
        table = model.__table__
        keys = _KEYS[model]
        statement = (
            update(table)
            .where(*[table.c[key] == bindparam(f"k_{key}") for key in keys])
            .values({column: bindparam(column) for column in columns})
        )
        _UPDATES[(model, columns)] = statement
    return statement


@dataclass
class _Loaded:
    """The rows a batch of part events touches, loaded once; changes are written in batches at the end."""

    parts: dict[tuple[str, int, int], _Row]
    by_attempt: dict[tuple[str, int], list[_Row]]
    jobs: dict[str, _Row]
    attempts: dict[tuple[str, int], _Row]

    def write(self, session: Session) -> None:
        """The changed columns of every row, one executemany per (table, columns changed)."""
        connection = session.connection()
        for model, rows in ((Part, self.parts.values()), (Job, self.jobs.values()), (Attempt, self.attempts.values())):
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            keys = _KEYS[model]
            for row in rows:
                if row.changed_:
                    params = {f"k_{key}": row.__dict__[key] for key in keys}
                    params.update(row.changed_)
                    shapes.setdefault(tuple(sorted(row.changed_)), []).append(params)
                    row.__dict__["changed_"] = {}
            for columns, group in shapes.items():
                connection.execute(_update_statement(model, columns), group)
                # A mapped object of these rows loaded earlier in this transaction is re-read on next use.
                for params in group:
                    key = session.identity_key(model, tuple(params[f"k_{name}"] for name in keys))
                    mapped = session.identity_map.get(key)
                    if mapped is not None:
                        session.expire(mapped)


def _load(session: Session, keys: set[tuple[str, int]]) -> _Loaded:
    session.flush()  # what the ORM changed earlier in this transaction is read back below
    connection = session.connection()
    job_ids = sorted({job_id for job_id, _ in keys})
    loaded = _Loaded({}, {}, {}, {})
    for start in range(0, len(job_ids), 500):
        ids = {"ids": job_ids[start : start + 500]}
        for mapping in connection.execute(_PARTS_OF, ids).mappings():
            if (mapping["job_id"], mapping["attempt"]) in keys:
                part = _Row(dict(mapping))
                loaded.parts[(part.job_id, part.attempt, part.rank)] = part
                loaded.by_attempt.setdefault((part.job_id, part.attempt), []).append(part)
        loaded.jobs.update({m["id"]: _Row(dict(m)) for m in connection.execute(_JOBS_OF, ids).mappings()})
        for mapping in connection.execute(_ATTEMPTS_OF, ids).mappings():
            if (mapping["job_id"], mapping["number"]) in keys:
                loaded.attempts[(mapping["job_id"], mapping["number"])] = _Row(dict(mapping))
    return loaded


def apply_part_events(session: Session, events: list[dict[str, Any]], now: datetime, effects: Effects) -> None:
    """Apply part_started / part_exited events in order, with a fixed number of queries per batch.

    Each change is still guarded by the attempt number and the part's state (compare-and-set in
    memory, under the scheduler's lease); the writes go out as a few executemany statements.
    """
    if not events:
        return
    keys = {(str(e["job_id"]), int(e["attempt"])) for e in events}
    loaded = _load(session, keys)
    for event in events:
        if event.get("kind") == "part_started":
            _started(session, loaded, event, now, effects)
        else:
            _exited(session, loaded, event, now, effects)
    loaded.write(session)


def _started(session: Session, loaded: _Loaded, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    job_id, attempt, rank = str(event["job_id"]), int(event["attempt"]), int(event["rank"])
    part = loaded.parts.get((job_id, attempt, rank))
    if part is None or not part.active or part.node_id != event["node"]:
        record_stale(session, effects, event, now)
        effects.stops.append((event["node"], job_id, attempt, "stale"))
        return
    if part.state != PartState.SCHEDULED:
        return  # a duplicate report
    part.state, part.started_at = PartState.RUNNING.value, now
    job = loaded.jobs.get(job_id)
    if job is not None and job.attempt == attempt and job.state == JobState.SCHEDULED.value:
        job.state, job.updated_at = JobState.RUNNING.value, now
        if attempt == 1 and rank == 0:
            effects.start_latencies_s.append(max(0.0, (now - job.submitted_at).total_seconds()))
    row = loaded.attempts.get((job_id, attempt))
    if row is not None and row.state == AttemptState.SCHEDULED:
        row.state, row.started_at = AttemptState.RUNNING.value, now


def _exited(session: Session, loaded: _Loaded, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    job_id, attempt, rank = str(event["job_id"]), int(event["attempt"]), int(event["rank"])
    part = loaded.parts.get((job_id, attempt, rank))
    if part is None or not part.active or part.node_id != event["node"]:
        record_stale(session, effects, event, now)
        return
    reason = str(event.get("reason") or "exit")
    exit_code = event.get("exit_code")
    part.active, part.state, part.reason = False, PartState.EXITED.value, reason
    part.exit_code, part.ended_at = exit_code, now
    part.logs_complete = bool(event.get("logs_complete", True))
    job = loaded.jobs.get(job_id)
    if job is not None and rank == 0 and event.get("metrics") and job.attempt == attempt:
        job.metrics, job.metrics_step = event["metrics"], event.get("metrics_step")  # what trainyard.report said
    parts = loaded.by_attempt.get((job_id, attempt), [part])
    still_active = [p for p in parts if p.active]
    if still_active:
        if reason != "exit" or exit_code != 0:
            # Gangs are one unit: one rank's end (failure, loss) tears down the others.
            effects.stops.extend((p.node_id, job_id, attempt, "gang_teardown") for p in still_active)
        return
    if job is not None:
        _finish_loaded(session, job, loaded.attempts.get((job_id, attempt)), parts, now, effects)


def _finish_loaded(
    session: Session, job: RowLike, row: RowLike | None, parts: list[RowLike], now: datetime, effects: Effects
) -> None:
    attempt = parts[0].attempt
    if job.attempt != attempt or job.state not in ACTIVE_STATES:
        return
    moved = _transition(job, parts, now)
    for name, value in moved.values.items():
        setattr(job, name, value)
    if row is not None:
        row.state, row.reason, row.ended_at = moved.attempt_state, moved.reason, now
        row.retried_by = moved.retried_by
        row.logs_complete = all(p.logs_complete for p in parts)
    effects.ended_attempts.append((job.id, attempt))
    effects.gate_due = effects.gate_due or bool(job.dependants_waiting) or job.sweep_id is not None
    if job.state in _TERMINAL:
        effects.ended_rows[job.id] = (job.id, job.workspace, job.state, job.notify, job.sweep_id)
    if may_have_secrets(job):
        effects.ended_with_secrets.append((job.id, attempt))
    if moved.requeued:
        session.add(Event(at=now, kind="requeued", job_id=job.id, attempt=attempt, detail=moved.event_detail()))


def part_started(session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    apply_part_events(session, [{**event, "kind": "part_started"}], now, effects)


def part_exited(session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    apply_part_events(session, [{**event, "kind": "part_exited"}], now, effects)


def logs_done(session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
    """A node finished uploading a part's logs after reporting its exit (the store had been down)."""
    job_id, attempt, rank = event["job_id"], int(event["attempt"]), int(event["rank"])
    # Only the node whose exit report was accepted may finalise the part's logs (fencing).
    changed = rowcount(
        session.execute(
            update(Part)
            .where(
                Part.job_id == job_id,
                Part.attempt == attempt,
                Part.rank == rank,
                Part.node_id == event["node"],
                Part.state == PartState.EXITED.value,
            )
            .values(logs_complete=True)
        )
    )
    if not changed:
        record_stale(session, effects, event, now)
        return
    parts = session.scalars(select(Part).where(Part.job_id == job_id, Part.attempt == attempt)).all()
    if all(p.logs_complete for p in parts):
        session.execute(
            update(Attempt)
            .where(Attempt.job_id == job_id, Attempt.number == attempt, Attempt.ended_at.is_not(None))
            .values(logs_complete=True)
        )


def _attempt_outcome(parts: list[RowLike], job: RowLike) -> tuple[str, int | None]:
    """(reason, exit code) of an attempt whose parts have all ended."""
    reasons = {p.reason or "exit" for p in parts}
    for special in (
        "cancelled",
        "wall_clock",
        "prepare_failed",
        "mount_failed",
        "node_lost",
        "node_shutdown",
        "preempted",
    ):
        if special in reasons:
            return special, _first_failure(parts)
    if job.cancel_requested:
        return "cancelled", _first_failure(parts)
    return "exit", _first_failure(parts) or 0


def _first_failure(parts: list[RowLike]) -> int | None:
    """The first non-zero exit code by rank, preferring ranks that ended on their own over ranks
    that were torn down because another failed (their 143 or 137 says nothing)."""
    ordered = sorted(parts, key=lambda p: (p.reason not in (None, "exit"), p.rank))
    for part in ordered:
        if part.exit_code not in (None, 0):
            return int(part.exit_code)
    return None


@dataclass(frozen=True)
class _Transition:
    """Where a job goes when its current attempt has ended: its column values, and the attempt's end."""

    values: dict[str, Any]
    attempt_state: str
    reason: str
    retried_by: str | None = None

    @property
    def requeued(self) -> bool:
        return bool(self.values["state"] == JobState.QUEUED.value)

    def event_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"reason": self.reason}
        if self.retried_by is not None:
            detail["retried_by"] = self.retried_by
        return detail


def _transition(job: RowLike, parts: list[RowLike], now: datetime) -> _Transition:
    attempt = parts[0].attempt
    reason, exit_code = _attempt_outcome(parts, job)
    if reason == "node_shutdown":
        reason = AttemptReason.NODE_LOST.value
    values: dict[str, Any] = {"updated_at": now, "exit_code": exit_code}
    if reason in REQUEUE_REASONS and not job.cancel_requested:
        return _requeue(job, attempt, values, reason, now)
    if reason == "exit" and exit_code == 0:
        values.update(state=JobState.SUCCEEDED.value, ended_at=now)
        return _Transition(values, AttemptState.SUCCEEDED.value, reason)
    if reason == "cancelled":
        values.update(state=JobState.CANCELLED.value, ended_at=now)
        if job.end_reason == AttemptReason.EARLY_STOPPED.value:  # its sweep's rule stopped it
            reason = AttemptReason.EARLY_STOPPED.value
        return _Transition(values, AttemptState.CANCELLED.value, reason)
    decision = retries.RetryDecision(retried_by=None)
    if not job.cancel_requested:  # a job being cancelled is never retried, whatever ended it
        rules = retries.parse_rules(job.retry_rules)
        decision = retries.decide(
            rules, job.retries_by_rule or {}, job.retries_used, job.max_retries, reason, exit_code, now
        )
    if decision.retried:
        values.update(state=JobState.QUEUED.value, attempt=attempt + 1, not_before=decision.not_before)
        values.update(decision.counters, pending_reason=decision.pending_reason(reason, exit_code))
        return _Transition(values, AttemptState.FAILED.value, reason, decision.retried_by)
    values.update(state=JobState.FAILED.value, ended_at=now)
    return _Transition(values, AttemptState.FAILED.value, reason)


def _requeue(job: RowLike, attempt: int, values: dict[str, Any], reason: str, now: datetime) -> _Transition:
    """Node loss and preemption queue the job again, uncounted, unless a rule naming the reason caps it."""
    decision = retries.rule_decision(retries.parse_rules(job.retry_rules), job.retries_by_rule or {}, reason, None, now)
    if decision is None:
        values.update(state=JobState.QUEUED.value, attempt=attempt + 1, not_before=None)
        return _Transition(values, AttemptState.REQUEUED.value, reason)
    if not decision.retried:  # the rule's max is spent: the job ends here
        values.update(state=JobState.FAILED.value, ended_at=now)
        return _Transition(values, AttemptState.FAILED.value, reason)
    values.update(state=JobState.QUEUED.value, attempt=attempt + 1, not_before=decision.not_before)
    values.update(decision.counters, pending_reason=decision.pending_reason(reason, None))
    return _Transition(values, AttemptState.REQUEUED.value, reason, decision.retried_by)


def finish_attempt(session: Session, job_id: str, attempt: int, parts: Any, now: datetime, effects: Effects) -> None:
    job = session.get(Job, job_id)
    if job is None or job.attempt != attempt or JobState(job.state).is_terminal():
        return
    moved = _transition(job, list(parts), now)
    # CAS: only the current attempt of a non-terminal job may move it.
    changed = rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.state.in_(state_values(ACTIVE_STATES)))
            .values(**moved.values)
        )
    )
    if not changed:
        return
    session.execute(
        update(Attempt)
        .where(Attempt.job_id == job_id, Attempt.number == attempt)
        .values(
            state=moved.attempt_state,
            reason=moved.reason,
            retried_by=moved.retried_by,
            ended_at=now,
            logs_complete=all(p.logs_complete for p in parts),
        )
    )
    effects.ended_attempts.append((job_id, attempt))
    effects.gate_due = True
    if may_have_secrets(job):
        effects.ended_with_secrets.append((job_id, attempt))
    if moved.requeued:
        session.add(Event(at=now, kind="requeued", job_id=job_id, attempt=attempt, detail=moved.event_detail()))


def teardown_attempt(
    session: Session,
    job_id: str,
    attempt: int,
    reason: str,
    now: datetime,
    effects: Effects,
    lost_nodes: frozenset[str] = frozenset(),
) -> None:
    """End an attempt from the scheduler's side (node lost, preempted): free its parts, requeue."""
    parts = session.scalars(select(Part).where(Part.job_id == job_id, Part.attempt == attempt)).all()
    for part in parts:
        if part.active:
            if part.node_id not in lost_nodes:
                effects.stops.append((part.node_id, job_id, attempt, reason))
            part.active, part.state, part.reason, part.ended_at = False, PartState.LOST.value, reason, now
    session.flush()
    finish_attempt(session, job_id, attempt, parts, now, effects)


def mark_node_lost(session: Session, node: Node, now: datetime, effects: Effects) -> int:
    """A node stopped heartbeating: every attempt with a part on it is torn down and requeued."""
    node.state = NodeState.LOST.value
    attempts = session.execute(
        select(Part.job_id, Part.attempt).where(Part.node_id == node.id, Part.active.is_(True))
    ).all()
    for job_id, attempt in set(attempts):
        teardown_attempt(
            session, job_id, attempt, AttemptReason.NODE_LOST.value, now, effects, lost_nodes=frozenset({node.id})
        )
    session.add(Event(at=now, kind="node_lost", node_id=node.id, detail={"attempts": len(set(attempts))}))
    return len(set(attempts))
