"""Sweep records: store a sweep and one compact job row per point, add points, cancel, and limits.

A sweep's template is stored once, on its row; each job row carries only what the scheduler
and the lists need (name, resources, priority, state) plus its point's `params`, and an empty
`spec`. `fill_specs` renders the full spec from the template when a job is shown or dispatched.
Job ids are `<sweep id>-<index>`, so a point's index is in its id.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from trainyard import sweeps
from trainyard.db import notifications
from trainyard.db.bulk import insert_shared, reserve_seq
from trainyard.db.dependencies import Edge, edge_rows, store_edges, stored_targets
from trainyard.db.engine import rowcount
from trainyard.db.models import Event, Job, Sweep, utcnow
from trainyard.dependencies import waiting_reason
from trainyard.spec import ACTIVE_STATES, JobSpec, JobState, SpecError, state_values, stored_notify

ACTIVE = state_values(ACTIVE_STATES)
NOT_TERMINAL = tuple(state.value for state in JobState if not state.is_terminal())


class SweepConflict(Exception):
    """The sweep cannot take this change (HTTP 409): cancelled, or an idempotency key reused."""


def new_sweep_id() -> str:
    return "s" + secrets.token_hex(6)


def sweep_digest(spec: sweeps.SweepSpec) -> str:
    """Digest of the whole sweep (secrets included): same key + same sweep → the same sweep."""
    body = spec.model_dump(mode="json", exclude={"idempotency_key"})
    if body.get("early_stopping") is None:  # digests of sweeps without a rule stay what they were
        body.pop("early_stopping", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _shared_values(template: JobSpec, sweep_id: str, experiment: str, now: datetime) -> dict[str, Any]:
    return {
        "workspace": template.workspace,
        "experiment": experiment,
        "pool": template.pool,
        "state": JobState.QUEUED.value,
        "priority": template.priority,
        "attempt": 1,
        "nodes": template.nodes,
        "gpus": template.resources.gpus,
        "cpus": template.resources.cpus,
        "memory_bytes": template.resources.memory_bytes,
        "host_paths": template.host_paths or None,
        "max_wall_clock_s": template.max_wall_clock,
        "preemptible": template.preemptible,
        "max_retries": template.max_retries,
        "retries_used": 0,
        "retry_rules": template.stored_retry_rules(),
        "notify": stored_notify(template.notify),
        "retries_by_rule": None,
        "spec": {},
        "secrets_enc": None,
        "idempotency_key": None,
        "spec_digest": "",
        "sweep_id": sweep_id,
        "cancel_requested": False,
        "submitted_at": now,
        "updated_at": now,
    }


def _insert_points(
    session: Session,
    sweep: Sweep,
    points: Sequence[sweeps.Point],
    first_index: int,
    rerun_of: Sequence[str] | None = None,
) -> list[str]:
    """One compact job row per point, in bulk: only id, name, seq and params differ between them
    (and `rerun_of`, for points rerun). Returns the new jobs' ids."""
    # The stored template holds secrets as names only: they are withheld here, kept encrypted on the sweep.
    template = JobSpec.model_validate({**sweep.template, "secrets": {}}, context={"secrets_withheld": True})
    shared = _shared_values(template, sweep.id, sweep.experiment, utcnow())
    encoder = sweeps.PointEncoder(str(sweep.template["name"]))
    base_seq = reserve_seq(len(points))
    rows: list[tuple[Any, ...]] = []
    for offset, point in enumerate(points):
        job_name, params = encoder.encode(point)
        if len(job_name) > 200:
            raise SpecError([{"field": "template.name", "reason": f"point {offset} makes a name over 200 characters"}])
        rows.append((f"{sweep.id}-{first_index + offset}", job_name, base_seq + offset, params))
    edges = _template_edges(session, template)
    if edges:  # every point waits on the template's dependencies: the same count and words for all
        shared.update(waiting_on=len(edges), pending_reason=waiting_reason([e.waiting for e in edges]))
    columns: tuple[str, ...] = ("id", "name", "seq", "params")
    if rerun_of is not None:
        columns += ("rerun_of",)
        rows = [(*row, old) for row, old in zip(rows, rerun_of, strict=True)]
    insert_shared(session, Job.__table__, columns, rows, shared)  # type: ignore[arg-type]
    if edges:
        counts: dict[tuple[str, str], int] = {}
        for edge in edges:
            counts[(edge.kind, edge.target_id)] = counts.get((edge.kind, edge.target_id), 0) + len(rows)
        store_edges(session, edge_rows([row[0] for row in rows], edges), counts)
    return [str(row[0]) for row in rows]


def _template_edges(session: Session, template: JobSpec) -> list[Edge]:
    """The template's `depends_on` (stored ids, checked at submit) as edges, with their targets' names."""
    if not template.depends_on:
        return []
    names = stored_targets(session, {(d.kind, d.target) for d in template.depends_on})
    return [Edge(d.kind, d.target, d.on.value, names.get((d.kind, d.target), ("", ""))[1]) for d in template.depends_on]


def _existing(session: Session, workspace: str, key: str, digest: str) -> str | None:
    found = session.scalars(select(Sweep).where(Sweep.workspace == workspace, Sweep.idempotency_key == key)).first()
    if found is None:
        return None
    if found.digest != digest:
        raise SweepConflict(f"idempotency_key {key!r} belongs to sweep {found.id} with another definition")
    return found.id


def create_sweep(
    session: Session,
    spec: sweeps.SweepSpec,
    points: Sequence[sweeps.Point],
    secrets_enc: str | None,
    actor: str = "",
    digest: str | None = None,
) -> str:
    """Store the sweep and a queued job per point; the caller commits (all or nothing).

    `digest` is the sweep as submitted (`sweep_digest`, taken before a seed was drawn for it):
    the same idempotency key with the same submission returns the same sweep.
    """
    template = spec.template
    digest = digest or sweep_digest(spec)
    if spec.idempotency_key and (found := _existing(session, template.workspace, spec.idempotency_key, digest)):
        return found
    sweep_id = new_sweep_id()
    experiment = template.experiment if "experiment" in template.model_fields_set else sweep_id
    now = utcnow()
    stored_template = {**template.public_dict(), "experiment": experiment}
    sweep = Sweep(
        id=sweep_id, name=spec.name or template.name, workspace=template.workspace, experiment=experiment,
        kind=spec.kind, definition=spec.definition(), parameters=spec.parameters, template=stored_template,
        secrets_enc=secrets_enc, max_concurrency=spec.max_concurrency, total=len(points), cancel_requested=False,
        early_stopping=spec.early_stopping.model_dump() if spec.early_stopping is not None else None,
        idempotency_key=spec.idempotency_key, digest=digest, created_at=now, updated_at=now, seq=reserve_seq(1),
        notify=stored_notify(spec.notify),
    )  # fmt: skip
    session.add(sweep)
    session.flush()
    _insert_points(session, sweep, points, 0)
    session.add(Event(at=now, kind="sweep_submitted", actor=actor, detail={"sweep": sweep_id, "points": len(points)}))
    return sweep_id


def _claim_ids(session: Session, sweep_id: str, count: int, open_only: bool = True) -> tuple[Sweep, int]:
    """Reserve `count` job ids after the sweep's last: (the sweep, the first new index).

    `open_only`: refuse a cancelled sweep (SweepConflict).
    """
    for _ in range(5):
        sweep = session.get(Sweep, sweep_id, populate_existing=True)
        if sweep is None:
            raise KeyError(sweep_id)
        if open_only and sweep.cancel_requested:
            raise SweepConflict(f"sweep {sweep_id} is cancelled")
        first = sweep.total
        # CAS on total: two concurrent additions must not hand out the same job ids.
        claimed = rowcount(session.execute(
            update(Sweep).where(Sweep.id == sweep_id, Sweep.total == first)
            .values(total=first + count, updated_at=utcnow())
        ))  # fmt: skip
        if claimed:
            return sweep, first
    raise SweepConflict(f"sweep {sweep_id} is being changed by someone else; try again")


def add_points(session: Session, sweep_id: str, points: Sequence[sweeps.Point], actor: str = "") -> int:
    """Append points to a sweep that is not cancelled; returns the index of the first new one."""
    sweep, first = _claim_ids(session, sweep_id, len(points))
    _insert_points(session, sweep, points, first)
    detail = {"sweep": sweep_id, "points": len(points), "first": first}
    session.add(Event(kind="sweep_points_added", actor=actor, detail=detail))
    return first


# The points `sweep rerun --failed` reruns: those that ended without succeeding.
RERUN_FAILED_STATES = (JobState.FAILED.value, JobState.CANCELLED.value)
ENDED = tuple(state.value for state in JobState if state.is_terminal())


def rerun_points(session: Session, sweep_id: str, failed_only: bool, actor: str = "") -> list[tuple[str, str]]:
    """Rerun the sweep's ended points (only failed and cancelled ones with `failed_only`) inside it.

    Each rerun is a new point of the same sweep with the same values (so the same spec, secrets
    and max_concurrency), `rerun_of` naming the job it reruns; that job is marked superseded, so
    the sweep's counts and leaderboard follow each point's latest run. Points still queued or
    running are left alone. A cancelled sweep whose jobs have all ended is opened again.
    Returns (new job id, job it reruns) pairs; the caller commits.
    """
    now = utcnow()
    # Lock the sweep row first: concurrent reruns (and point additions) of this sweep queue up
    # here, so the second one sees the first one's reruns and no point is rerun twice.
    if not rowcount(session.execute(update(Sweep).where(Sweep.id == sweep_id).values(updated_at=now))):
        raise KeyError(sweep_id)
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    assert sweep is not None
    if sweep.cancel_requested:
        still_active = session.scalar(select(func.count()).where(Job.sweep_id == sweep_id, Job.state.in_(NOT_TERMINAL)))
        if still_active:
            raise SweepConflict(f"sweep {sweep_id} is still cancelling ({still_active} jobs); rerun it once they end")
    states = RERUN_FAILED_STATES if failed_only else ENDED
    rows = session.execute(
        select(Job.id, Job.state, Job.params)
        .where(Job.sweep_id == sweep_id, Job.state.in_(states), Job.superseded_by.is_(None))
        .order_by(Job.seq)
    ).all()  # fmt: skip
    if not rows:
        return []
    sweep, first = _claim_ids(session, sweep_id, len(rows), open_only=False)
    old_ids = [job_id for job_id, _, _ in rows]
    new_ids = _insert_points(session, sweep, [dict(params or {}) for _, _, params in rows], first, rerun_of=old_ids)
    pairs = list(zip(new_ids, old_ids, strict=True))
    session.execute(update(Job), [{"id": old, "superseded_by": new} for new, old in pairs])
    superseded = dict(sweep.superseded or {})
    for _, state, _ in rows:
        superseded[state] = superseded.get(state, 0) + 1
    session.execute(
        update(Sweep).where(Sweep.id == sweep_id).values(superseded=superseded, cancel_requested=False, updated_at=now)
    )
    detail = {"sweep": sweep_id, "points": len(pairs), "first": first, "failed_only": failed_only}
    session.add(Event(at=now, kind="sweep_rerun", actor=actor, detail=detail))
    return pairs


def cancel_sweep(session: Session, sweep_id: str, actor: str = "") -> dict[str, int]:
    """Queued jobs end at once; scheduled and running ones are flagged, and the scheduler stops them."""
    now = utcnow()
    session.execute(update(Sweep).where(Sweep.id == sweep_id).values(cancel_requested=True, updated_at=now))
    # CAS on state: a job the scheduler claims meanwhile is no longer queued and is flagged below.
    queued = list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.state == JobState.QUEUED.value)))
    ended = 0
    for start in range(0, len(queued), 500):
        ended += rowcount(session.execute(
            update(Job).where(Job.id.in_(queued[start : start + 500]), Job.state == JobState.QUEUED.value)
            .values(state=JobState.CANCELLED.value, cancel_requested=True, ended_at=now, updated_at=now)
        ))  # fmt: skip
    notifications.record_job_ends(session, queued, now)  # the points' webhooks, and the sweep's if it ended
    stopping = rowcount(session.execute(
        update(Job).where(Job.sweep_id == sweep_id, Job.state.in_(ACTIVE), Job.cancel_requested.is_(False))
        .values(cancel_requested=True, updated_at=now)
    ))  # fmt: skip
    detail = {"sweep": sweep_id, "cancelled": ended, "stopping": stopping}
    session.add(Event(at=now, kind="sweep_cancelled", actor=actor, detail=detail))
    return {"cancelled": ended, "stopping": stopping}


def sweep_limits(session: Session, sweep_ids: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
    """For the scheduler: (max_concurrency per sweep, its jobs scheduled or running now).

    Only sweeps with a limit appear; `sweep_ids` are those with queued jobs in this pass.
    """
    wanted = list(set(sweep_ids))
    if not wanted:
        return {}, {}
    limits: dict[str, int] = {}
    for chunk in _chunks(wanted, 500):
        rows = session.execute(
            select(Sweep.id, Sweep.max_concurrency).where(Sweep.id.in_(chunk), Sweep.max_concurrency.is_not(None))
        )
        limits.update({sweep_id: int(limit) for sweep_id, limit in rows if limit is not None})
    running: dict[str, int] = {}
    for chunk in _chunks(list(limits), 500):
        counted = session.execute(
            select(Job.sweep_id, func.count()).where(Job.sweep_id.in_(chunk), Job.state.in_(ACTIVE))
            .group_by(Job.sweep_id)
        )  # fmt: skip
        running.update({str(sweep_id): int(count) for sweep_id, count in counted})
    return limits, running


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fill_specs(session: Session, jobs: Iterable[Job]) -> None:
    """Give sweep jobs (stored compact) their full spec and secrets, rendered from the sweep's template.

    Sets the loaded values without marking the rows changed: nothing is written back.
    """
    compact = [job for job in jobs if job.sweep_id is not None and not job.spec]
    if not compact:
        return
    ids = list({job.sweep_id for job in compact if job.sweep_id is not None})
    rows = session.execute(select(Sweep.id, Sweep.template, Sweep.secrets_enc).where(Sweep.id.in_(ids)))
    templates = {sweep_id: (template, secrets_enc) for sweep_id, template, secrets_enc in rows}
    for job in compact:
        found = templates.get(str(job.sweep_id))
        if found is None:
            continue
        template, secrets_enc = found
        set_committed_value(job, "spec", sweeps.render_spec(template, job.params or {}))
        if job.secrets_enc is None:
            set_committed_value(job, "secrets_enc", secrets_enc)
