"""SQLAlchemy models: the system of record for jobs, attempts, their parts, nodes, pools and events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, always hands back aware UTC (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    workspace: Mapped[str] = mapped_column(String(64), default="default")
    experiment: Mapped[str] = mapped_column(String(64), default="default")
    pool: Mapped[str] = mapped_column(String(64), default="default")
    state: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=500)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    cpus: Mapped[float] = mapped_column(Float, default=1.0)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Host directories the job's volumes need on each of its nodes (JobSpec.host_paths); None: none.
    host_paths: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    max_wall_clock_s: Mapped[float] = mapped_column(Float, default=7 * 86400.0)
    preemptible: Mapped[bool] = mapped_column(Boolean, default=False)
    max_retries: Mapped[int] = mapped_column(Integer, default=3)
    retries_used: Mapped[int] = mapped_column(Integer, default=0)
    # The spec's `retry:` rules (None: none), kept on the row because sweep points store no spec,
    # and how many retries each rule has made so far ({"retry[0]": 2}).
    retry_rules: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    retries_by_rule: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    # The spec's `notify:` targets (None: none), on the row for the same reason as retry_rules.
    notify: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pending_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    secrets_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    spec_digest: Mapped[str] = mapped_column(String(64))
    sweep_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # A sweep's point (its parameter values), and the last metrics rank 0 reported (trainyard.report).
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rerun_of: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # `rerun`: the job rerun
    # A sweep point rerun inside its sweep (`sweep rerun`): the point's new job. The sweep's counts
    # and leaderboard describe each point's latest run, so they leave this one out.
    superseded_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Dependencies (`depends_on`) of this job not yet met: the queue skips the job while above zero.
    waiting_on: Mapped[int] = mapped_column(Integer, default=0)
    # Edges of other jobs that wait on this one and are not yet resolved: the dependency gate looks
    # only at ended jobs where this is above zero (scheduler/gate.py), never at every waiting job.
    dependants_waiting: Mapped[int] = mapped_column(Integer, default=0)
    # Why a job ended without an attempt saying so (`dependency_failed`); None otherwise.
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Monotonic insertion order: the tie-breaker after priority and a stable pagination cursor.
    seq: Mapped[int] = mapped_column(BigInteger, index=True)

    __table_args__ = (
        Index("ix_jobs_queue", "state", "pool", "priority", "seq"),
        Index("ix_jobs_experiment", "workspace", "experiment", "seq"),
        Index("ix_jobs_idempotency", "workspace", "idempotency_key", unique=True),
    )


class Attempt(Base):
    __tablename__ = "attempts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # What queued the job again after this attempt: a rule ("retry[0]"), "max_retries", or None.
    retried_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    logs_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    # Live metrics of this attempt (scheduler/live_metrics.py): points stored so far, and how far
    # into the part's metrics file they reach (a batch that lands twice starts before it: ignored).
    metrics_points: Mapped[int] = mapped_column(Integer, default=0)
    metrics_offset: Mapped[int] = mapped_column(BigInteger, default=0)


class MetricPoint(Base):
    """One `trainyard.report` call of a job's rank 0, as it ran (GET /v1/jobs/{id}/metrics)."""

    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32))
    # Copied from the job: early stopping reads a whole sweep's series with one index walk.
    sweep_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_metric_points_job", "job_id", "attempt", "id"),
        Index("ix_metric_points_sweep", "sweep_id", "job_id", "attempt"),
    )


class Part(Base):
    """One node's share of an attempt (rank = node rank); its placement holds the node's resources."""

    __tablename__ = "parts"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    gpus: Mapped[list[int]] = mapped_column(JSON, default=list)
    cpus: Mapped[float] = mapped_column(Float, default=1.0)
    # Holds resources while true; cleared in the same transaction that ends the part.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    logs_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_parts_active_node", "active", "node_id"),)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), default="default")
    address: Mapped[str] = mapped_column(String(64))
    slots: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[list[int]] = mapped_column(JSON, default=list)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # Host directories the node declares (`trainyard worker --host-volume`): jobs needing a host
    # volume are placed only where one of these is it or holds it.
    host_volumes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # up, draining, lost, removed; preparing while its pool's setup task runs, unusable when it failed;
    # stopping once its worker said it shuts down (SIGTERM).
    state: Mapped[str] = mapped_column(String(16), default="up")
    session: Mapped[str] = mapped_column(String(64), default="")
    # Why the node is unusable (its setup task's error), and where the setup task's log is stored.
    state_detail: Mapped[str | None] = mapped_column(String(500), nullable=True)
    setup_log: Mapped[str | None] = mapped_column(String(500), nullable=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SchedulerLease(Base):
    """The leading scheduler's lease: one row. `epoch` grows by one at every change of leader; every
    scheduler write transaction re-checks it (and the expiry) before commit, so a deposed or paused
    leader commits nothing (see scheduler/lease.py)."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64), default="")
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Pool(Base):
    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    min_nodes: Mapped[int] = mapped_column(Integer, default=0)
    max_nodes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Event(Base):
    """Audit and history: submissions, cancels, requeues, rejected stale writes."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApiToken(Base):
    """An API token: only its SHA-256 is kept; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    # None: every workspace (only admin tokens may be global).
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Deleted tokens stay as rows so that audit entries keep naming who acted.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DashboardSession(Base):
    """A dashboard login: the browser holds a random session id in an HttpOnly cookie; only its SHA-256 is kept.

    The session names its token by hash, so deleting or expiring the token ends its sessions too.
    """

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Sweep(Base):
    """A parameter sweep: its template job spec is stored once here; each point is a job row."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    workspace: Mapped[str] = mapped_column(String(64), default="default")
    experiment: Mapped[str] = mapped_column(String(64), default="default")
    kind: Mapped[str] = mapped_column(String(16))  # grid, random or points
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parameters: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The public template (secrets as names only) with its {placeholders}; secrets encrypted once.
    template: Mapped[dict[str, Any]] = mapped_column(JSON)
    secrets_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Points so far: job ids are `<sweep id>-<index>` for index < total; grows when points are added.
    total: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # As on Job: dependency edges on this sweep not yet resolved (scheduler/gate.py).
    dependants_waiting: Mapped[int] = mapped_column(Integer, default=0)
    # Points rerun inside the sweep, by the state they had ended in ({"failed": 3}): their jobs stay,
    # and the counts leave them out (terminal states never change, so these counts stay true).
    superseded: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    # The sweep's `early_stopping:` rule (trainyard/early_stopping.py), None: every point runs to its end.
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The sweep's own `notify:` targets: sent once, when its last point has ended.
    notify: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    digest: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seq: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_sweeps_workspace", "workspace", "seq"),
        Index("ix_sweeps_idempotency", "workspace", "idempotency_key", unique=True),
        Index("ix_sweeps_dependants", "dependants_waiting"),
    )


# A sweep's jobs: counts by state, cancel of the queued ones, pages of one state.
Index("ix_jobs_sweep", Job.sweep_id, Job.state, Job.seq)
# Job lists page newest first (ORDER BY seq DESC, cursor seq < c): one index per equality filter
# with seq after it keeps a page a short index walk with a million jobs (see bench/sweeps.py).
Index("ix_jobs_sweep_seq", Job.sweep_id, Job.seq)
Index("ix_jobs_state_seq", Job.state, Job.seq)
Index("ix_jobs_experiment_seq", Job.experiment, Job.seq)
Index("ix_jobs_workspace_seq", Job.workspace, Job.seq)
Index("ix_jobs_workspace_state_seq", Job.workspace, Job.state, Job.seq)
# The queue without the jobs that wait on dependencies; and the gate's look-up of ended targets.
Index("ix_jobs_ready", Job.state, Job.waiting_on, Job.priority, Job.seq)
Index("ix_jobs_dependants", Job.state, Job.dependants_waiting)


class JobDependency(Base):
    """One `depends_on` edge: job `job_id` waits for job or sweep `target_id` to reach condition `on`.

    `status` is `waiting` until the scheduler's gate resolves it: `met`, `failed` (the condition can
    never hold: the job was cancelled with reason dependency_failed) or `void` (the job ended first).
    """

    __tablename__ = "job_dependencies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    target_kind: Mapped[str] = mapped_column(String(8))  # job or sweep
    target_id: Mapped[str] = mapped_column(String(32))
    on: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8), default="waiting")
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_job_dependencies_target", "target_id", "status"),)


class Volume(Base):
    """A named volume (`trainyard volume create`): job specs name it instead of repeating kind, path and uri."""

    __tablename__ = "volumes"

    workspace: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # path or uri, read_only, sync_interval_s, mount_path: the fields a job's volume entry takes from it.
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Notification(Base):
    """The webhook outbox: one row per (ended job or sweep, target URL), written in the transaction
    that ended it, delivered later by the notifier (trainyard/api/notifier.py), at least once.

    `id` is the delivery id receivers dedupe on. `status` is pending until delivered or failed
    (given up after its tries); `claimed_until` is the sending notifier's lease on the row.
    """

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(8))  # job or sweep
    subject_id: Mapped[str] = mapped_column(String(32), index=True)
    workspace: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2000))
    event: Mapped[str] = mapped_column(String(32))  # job.succeeded, sweep.failed, …
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_at"),)


class WorkspaceSettings(Base):
    """Per-workspace settings: its `notify:` targets (`PUT /v1/workspaces/{workspace}/notify`) and, when an
    admin set one, its webhook signing key (encrypted under TRAINYARD_SECRET_KEY)."""

    __tablename__ = "workspace_settings"

    workspace: Mapped[str] = mapped_column(String(64), primary_key=True)
    notify: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    signing_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArmWorkspace(Base):
    """A Batch AI workspace (PUT /arm/…/workspaces/{name}): its name is the `workspace` of trainyard's
    jobs, tokens and volumes, so it is unique on its own; the subscription and resource group of the PUT
    that created it are kept to build its resource id."""

    __tablename__ = "arm_workspaces"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64))
    resource_group: Mapped[str] = mapped_column(String(90))
    location: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_arm_workspaces_group", "subscription_id", "resource_group", "name"),)


class ArmExperiment(Base):
    """A Batch AI experiment of a workspace: the `experiment` of the trainyard jobs created in it."""

    __tablename__ = "arm_experiments"

    workspace: Mapped[str] = mapped_column(ForeignKey("arm_workspaces.name", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArmJob(Base):
    """A Batch AI job name of an experiment and the trainyard job it created. The primary key makes a job
    name unique within its experiment; `body_digest` (SHA-256 of the canonical JobCreateParameters) tells
    a repeated PUT (the same job) from a different one (409)."""

    __tablename__ = "arm_jobs"

    workspace: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    body_digest: Mapped[str] = mapped_column(String(64))
    # The JobCreateParameters' properties as given (GET echoes what the client set: cluster, tool settings…).
    properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        ForeignKeyConstraint(
            ["workspace", "experiment"], ["arm_experiments.workspace", "arm_experiments.name"], ondelete="CASCADE"
        ),
    )


class ArmJobPurge(Base):
    """A trainyard job deleted through /arm: cancelled at once, its row, logs and outputs removed by the
    housekeeping step once `purge_after` (TRAINYARD_ARM_DELETE_RETENTION_S after the DELETE) has passed."""

    __tablename__ = "arm_job_purges"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    purge_after: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
