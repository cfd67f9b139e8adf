"""Batch AI resources in the database: workspaces, experiments, job names, and deleted jobs' removal.

Races are settled here by the tables' keys: two PUTs of one name both insert, one wins on the primary
key, and the loser (IntegrityError, retried once by the caller) then finds the winner's row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from trainyard.db.jobs import cancel_job
from trainyard.db.models import (
    ArmExperiment,
    ArmJob,
    ArmJobPurge,
    ArmWorkspace,
    Attempt,
    Job,
    JobDependency,
    MetricPoint,
    Part,
    utcnow,
)
from trainyard.spec import JobState


def body_digest(properties: dict[str, Any]) -> str:
    """SHA-256 of a JSON body in canonical form: equal bodies (key order aside) have equal digests."""
    canonical = json.dumps(properties, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")


def page_after(query: SelectT, column: Any, after: str | None, limit: int) -> SelectT:
    """`query` narrowed to rows whose `column` sorts after `after`, in `column` order, at most `limit`."""
    if after is not None:
        query = query.where(column > after)
    return query.order_by(column).limit(limit)


def workspaces(
    session: Session, subscription_id: str, resource_group: str | None, only: str | None, after: str | None, limit: int
) -> Sequence[ArmWorkspace]:
    """Up to `limit` workspaces of the subscription (and resource group) by name after `after`; `only`
    narrows to one name (a workspace-scoped token's)."""
    query = select(ArmWorkspace).where(ArmWorkspace.subscription_id == subscription_id)
    if resource_group is not None:
        query = query.where(ArmWorkspace.resource_group == resource_group)
    if only is not None:
        query = query.where(ArmWorkspace.name == only)
    return session.scalars(page_after(query, ArmWorkspace.name, after, limit)).all()


def experiments(session: Session, workspace: str, after: str | None, limit: int) -> Sequence[ArmExperiment]:
    query = select(ArmExperiment).where(ArmExperiment.workspace == workspace)
    return session.scalars(page_after(query, ArmExperiment.name, after, limit)).all()


def arm_jobs(
    session: Session, workspace: str, experiment: str, after: str | None, limit: int
) -> Sequence[tuple[ArmJob, Job]]:
    query = (
        select(ArmJob, Job)
        .join(Job, Job.id == ArmJob.job_id)
        .where(ArmJob.workspace == workspace, ArmJob.experiment == experiment)
    )
    return [(a, j) for a, j in session.execute(page_after(query, ArmJob.name, after, limit)).tuples()]


def arm_job(session: Session, workspace: str, experiment: str, name: str) -> ArmJob | None:
    return session.get(ArmJob, (workspace, experiment, name))


def retire_jobs(session: Session, job_ids: Sequence[str], retention_s: float, actor: str, now: datetime) -> None:
    """Delete through /arm: cancel each job now, forget its Batch AI name, and queue the job (row, logs,
    outputs) for removal once `retention_s` has passed. The caller commits."""
    if not job_ids:
        return
    for job_id in job_ids:
        cancel_job(session, job_id, actor=actor)
    session.execute(delete(ArmJob).where(ArmJob.job_id.in_(job_ids)))
    queued = set(session.scalars(select(ArmJobPurge.job_id).where(ArmJobPurge.job_id.in_(job_ids))))
    purge_after = now + timedelta(seconds=retention_s)
    session.add_all(ArmJobPurge(job_id=j, purge_after=purge_after) for j in dict.fromkeys(job_ids) if j not in queued)


def jobs_of(session: Session, workspace: str, experiment: str | None = None) -> list[str]:
    """Ids of the trainyard jobs of a workspace (or one experiment of it) not yet queued for removal."""
    query = select(Job.id).where(Job.workspace == workspace)
    if experiment is not None:
        query = query.where(Job.experiment == experiment)
    queued = select(ArmJobPurge.job_id)
    return list(session.scalars(query.where(Job.id.not_in(queued))))


def delete_experiment(session: Session, workspace: str, name: str, retention_s: float, actor: str) -> bool:
    """Retire the experiment's jobs and delete it; False if there was none. The caller commits."""
    row = session.get(ArmExperiment, (workspace, name))
    if row is None:
        return False
    retire_jobs(session, jobs_of(session, workspace, name), retention_s, actor, utcnow())
    session.delete(row)
    return True


def delete_workspace(session: Session, name: str, retention_s: float, actor: str) -> None:
    """Retire every job of the workspace, delete its experiments and the workspace. The caller commits."""
    retire_jobs(session, jobs_of(session, name), retention_s, actor, utcnow())
    session.execute(delete(ArmExperiment).where(ArmExperiment.workspace == name))
    session.execute(delete(ArmWorkspace).where(ArmWorkspace.name == name))


def due_purges(session: Session, now: datetime, limit: int) -> list[str]:
    """Jobs whose retention after an /arm DELETE has passed and that have ended (cancel takes a moment)."""
    query = (
        select(ArmJobPurge.job_id)
        .join(Job, Job.id == ArmJobPurge.job_id, isouter=True)
        .where(ArmJobPurge.purge_after <= now)
        .where((Job.id.is_(None)) | Job.state.in_([s.value for s in JobState if s.is_terminal()]))
        .order_by(ArmJobPurge.purge_after)
        .limit(limit)
    )
    return list(session.scalars(query))


def forget_purged(session: Session, job_ids: Sequence[str]) -> None:
    """Remove the jobs' rows, their attempts, parts, metric points and dependency edges, and their purge
    entries; the audit trail (events) and webhook deliveries stay."""
    session.execute(delete(Part).where(Part.job_id.in_(job_ids)))
    session.execute(delete(MetricPoint).where(MetricPoint.job_id.in_(job_ids)))
    session.execute(delete(JobDependency).where(JobDependency.job_id.in_(job_ids)))
    session.execute(delete(Attempt).where(Attempt.job_id.in_(job_ids)))
    session.execute(delete(Job).where(Job.id.in_(job_ids)))
    session.execute(delete(ArmJobPurge).where(ArmJobPurge.job_id.in_(job_ids)))
