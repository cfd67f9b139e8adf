"""The wire contract: every message between the scheduler and the nodes, as pydantic models.

Worker → scheduler events travel on the Redis stream (`transport.publish_event`), discriminated
by `kind`; the scheduler validates each one where it reads it (`parse_event`) and drops, counted,
what does not validate. Scheduler → node: the part message (Celery task kwargs of
`trainyard.run`) and control messages (`stop`) on the node's control list, validated by the
agent. Everything stays JSON on the wire (SPEC §2 invariant 10).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Message(BaseModel):
    # Unknown keys are kept (a newer worker may say more), never required.
    model_config = ConfigDict(extra="allow", frozen=True)


class _FromNode(_Message):
    node: str
    session: str = ""


class _PartKey(_Message):
    job_id: str
    attempt: int = Field(ge=1)
    rank: int = Field(ge=0)


class PartStarted(_FromNode, _PartKey):
    kind: Literal["part_started"] = "part_started"
    pid: int | None = None


class PartExited(_FromNode, _PartKey):
    kind: Literal["part_exited"] = "part_exited"
    exit_code: int | None = None
    reason: str = "exit"
    logs_complete: bool = True
    metrics: dict[str, Any] | None = None
    metrics_step: int | None = None
    error: str | None = None


class MetricPointIn(_Message):
    """One `trainyard.report` call: its step (or none), time (seconds since the epoch) and values."""

    step: int | None = None
    time: float
    values: dict[str, float | None] = Field(default_factory=dict)


class MetricsReported(_FromNode, _PartKey):
    """New lines of a running part's metrics file (rank 0), read by the node every second or so.

    `offset` and `end` are the byte range of the file they came from: the scheduler applies a
    batch only if it starts at or after what it stored already, so one that lands twice is ignored.
    """

    kind: Literal["metrics"] = "metrics"
    offset: int = Field(ge=0)
    end: int = Field(ge=0)
    points: list[MetricPointIn] = Field(default_factory=list, max_length=1000)


class LogsDone(_FromNode, _PartKey):
    kind: Literal["logs_done"] = "logs_done"


class NodeRegister(_FromNode):
    kind: Literal["node_register"] = "node_register"
    pool: str
    address: str
    slots: int = Field(ge=0)
    gpus: list[int] = Field(default_factory=list)
    memory_bytes: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    host_volumes: list[str] = Field(default_factory=list)


def setup_log_key(node_id: str, session: str) -> str:
    """Where a node stores its setup task's output for one worker session (read by the API)."""
    return f"nodes/{node_id}/setup/{session}.log"


class NodeSetupDone(_FromNode):
    """The pool's setup task ended on this node (run once per worker session, before any work)."""

    kind: Literal["node_setup_done"] = "node_setup_done"
    ok: bool
    exit_code: int | None = None
    error: str | None = None
    log_key: str | None = None  # where the setup task's output is in the store


class NodeLeaving(_FromNode):
    """The worker is shutting down (SIGTERM): no new work for this session; it is lost once it is silent."""

    kind: Literal["node_leaving"] = "node_leaving"


class Heartbeat(_FromNode):
    kind: Literal["heartbeat"] = "heartbeat"
    # Parts the node runs now, as [job_id, attempt, rank].
    running: list[tuple[str, int, int]] = Field(default_factory=list)
    registration: NodeRegister | None = None


class Wake(_Message):
    """API → scheduler: the queue changed (a submit, a cancel)."""

    kind: Literal["wake"] = "wake"


Event = Annotated[
    PartStarted
    | PartExited
    | MetricsReported
    | LogsDone
    | NodeRegister
    | NodeSetupDone
    | NodeLeaving
    | Heartbeat
    | Wake,
    Field(discriminator="kind"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


class Stop(_Message):
    """Scheduler → node control message: stop every part of this attempt (and older ones)."""

    kind: Literal["stop"] = "stop"
    job_id: str
    attempt: int = Field(ge=1)
    reason: str = "cancelled"
    grace_s: float = Field(default=10.0, ge=0)


class Setup(_Message):
    """Scheduler → node control message: run the pool's setup task now (Batch AI's nodeSetup.setupTask).

    Sent when a worker session registers in a pool that has one, and again while the node stays
    `preparing` (a lost message only delays it); the node runs it once per session.
    """

    kind: Literal["setup"] = "setup"
    session: str  # the worker session it is for: another session's setup is not this one's
    command: str
    env: dict[str, str] = Field(default_factory=dict)
    secrets_enc: str | None = None  # encrypted with the cluster's secret key, like a job's
    timeout_s: float = Field(default=1800.0, gt=0)
    # The pool's volumes (as PUT /v1/pools/{name}/volumes stored them): a Batch AI setup task sees
    # the host ones under $AZ_BATCHAI_MOUNT_ROOT, as Batch AI mounted nodeSetup.mountVolumes first.
    volumes: list[dict[str, Any]] = Field(default_factory=list)


Control = Annotated[Stop | Setup, Field(discriminator="kind")]
_CONTROL: TypeAdapter[Control] = TypeAdapter(Control)


class PartMessage(_Message):
    """Scheduler → node: one part of an attempt to run (the `trainyard.run` task's kwargs)."""

    job_id: str
    name: str
    attempt: int = Field(ge=1)
    rank: int = Field(ge=0)
    num_nodes: int = Field(ge=1)
    node_hosts: list[str]
    gpus: list[int] = Field(default_factory=list)
    cpus: float = Field(default=1.0, ge=0)
    master_port: int = 29500
    has_secrets: bool = False
    spec: dict[str, Any]
    params: dict[str, Any] = Field(default_factory=dict)


class InvalidMessage(ValueError):
    """A message that does not follow the contract; says which field and why."""


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors())


def parse_event(payload: Any) -> Event:
    try:
        return _EVENT.validate_python(payload)
    except ValidationError as exc:
        raise InvalidMessage(_explain(exc)) from None


def parse_stop(payload: Any) -> Stop:
    try:
        return Stop.model_validate(payload)
    except ValidationError as exc:
        raise InvalidMessage(_explain(exc)) from None


def parse_control(payload: Any) -> Control:
    """A control message: `stop` (the default kind, for messages of older schedulers) or `setup`."""
    if isinstance(payload, dict) and "kind" not in payload:
        payload = {**payload, "kind": "stop"}
    try:
        return _CONTROL.validate_python(payload)
    except ValidationError as exc:
        raise InvalidMessage(_explain(exc)) from None


def parse_part(payload: Any) -> PartMessage:
    try:
        return PartMessage.model_validate(payload)
    except ValidationError as exc:
        raise InvalidMessage(_explain(exc)) from None
