"""Snapshot views the scheduler loop fills from the database, and the plan one pass hands back.

Times are seconds on the scheduler's own clock (`Snapshot.now_s`), whatever epoch the loop uses,
as long as every `*_s` field here uses the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Float slack when comparing CPU amounts: 0.1 + 0.2 free CPUs must still fit a 0.3 CPU job.
EPSILON = 1e-9


@dataclass(slots=True)
class NodeView:
    id: str
    pool: str
    address: str
    cpus: float  # the node's slots
    gpus: list[int]
    free_cpus: float
    free_gpus: list[int]
    schedulable: bool = True  # false while draining or lost
    memory_bytes: int | None = None
    free_memory_bytes: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    host_volumes: tuple[str, ...] = ()  # host directories it declared (normalised, absolute)


def has_host_paths(declared: tuple[str, ...], needed: tuple[str, ...]) -> bool:
    """Whether every needed host path is a declared host volume or lies under one."""
    return all(any(path == root or root == "/" or path.startswith(root + "/") for root in declared)
               for path in needed)  # fmt: skip


@dataclass(slots=True)
class JobView:
    id: str
    pool: str
    priority: int
    seq: int  # submit order: the last tie-breaker
    workspace: str = "default"
    nodes: int = 1
    cpus: float = 1.0
    gpus: int = 0
    memory_bytes: int | None = None
    max_wall_clock_s: float = 7 * 86400
    preemptible: bool = False
    sweep_id: str | None = None
    # When the job was first submitted; aging counts from here (requeues keep it). None: no aging.
    submitted_s: float | None = None
    host_paths: tuple[str, ...] = ()  # host directories its volumes need on each node
    attempt: int = 1  # the attempt number its placement claims (compare-and-set)


@dataclass(slots=True)
class RunningPart:
    """One node's share of a running attempt: what it holds there, so the planner knows what frees up."""

    node_id: str
    cpus: float
    gpus: list[int]
    memory_bytes: int | None = None


@dataclass(slots=True)
class RunningView:
    job_id: str
    attempt: int
    priority: int
    preemptible: bool
    node_ids: list[str]
    expected_end_s: float  # when max_wall_clock runs out (or the kill deadline, once stopping)
    # What it holds on each node; reservations and preemption only count resources listed here.
    parts: list[RunningPart] = field(default_factory=list)
    # Already told to stop (preempted, cancelled, node lost): frees soon, never preempted twice.
    stopping: bool = False


@dataclass(slots=True)
class PartPlacement:
    rank: int
    node_id: str
    cpus: float
    gpus: list[int]


@dataclass(slots=True)
class Placement:
    job_id: str
    parts: list[PartPlacement]


@dataclass(slots=True)
class Reservation:
    """Nodes held for a blocked job: only work that ends by `expected_start_s` may use them meanwhile."""

    job_id: str
    pool: str
    node_ids: list[str]
    expected_start_s: float
    by_preemption: bool = False  # the nodes free when preempted (or stopping) jobs exit


@dataclass(slots=True)
class Snapshot:
    nodes: list[NodeView]
    queued: list[JobView]
    running: list[RunningView] = field(default_factory=list)
    now_s: float = 0.0
    # Recent use per workspace (e.g. decayed GPU-seconds + CPU-seconds); less use goes first.
    workspace_usage: dict[str, float] = field(default_factory=dict)
    # Per sweep id: its max_concurrency, and how many of its jobs are scheduled or running now.
    sweep_max_concurrency: dict[str, int] = field(default_factory=dict)
    sweep_running: dict[str, int] = field(default_factory=dict)
    # Per workspace: GPU quota (absent: unlimited) and GPUs held by its scheduled/running jobs.
    workspace_gpu_quota: dict[str, int] = field(default_factory=dict)
    workspace_gpus_in_use: dict[str, int] = field(default_factory=dict)
    # Per pool: nodes that take no work yet, by state (`preparing`, `unusable`): for pending reasons.
    unready_nodes: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class PassPlan:
    placements: list[Placement] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    preemptions: list[tuple[str, int]] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
