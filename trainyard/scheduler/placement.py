"""Placement: pure scheduling logic over a snapshot of nodes and jobs; no I/O, no clock of its own.

The scheduler loop builds a `Snapshot` from the database, calls `plan()`, and writes the
resulting placements in one transaction (a gang's N parts together or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EPSILON = 1e-9


@dataclass
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


@dataclass
class JobView:
    id: str
    pool: str
    priority: int
    seq: int  # submit order: the tie-breaker after priority
    workspace: str = "default"
    nodes: int = 1
    cpus: float = 1.0
    gpus: int = 0
    memory_bytes: int | None = None
    max_wall_clock_s: float = 7 * 86400
    preemptible: bool = False
    sweep_id: str | None = None


@dataclass
class RunningView:
    job_id: str
    attempt: int
    priority: int
    preemptible: bool
    node_ids: list[str]
    expected_end_s: float  # scheduler clock seconds when max_wall_clock runs out


@dataclass
class PartPlacement:
    rank: int
    node_id: str
    cpus: float
    gpus: list[int]


@dataclass
class Placement:
    job_id: str
    parts: list[PartPlacement]


@dataclass
class Snapshot:
    nodes: list[NodeView]
    queued: list[JobView]
    running: list[RunningView] = field(default_factory=list)
    now_s: float = 0.0


@dataclass
class PassPlan:
    placements: list[Placement] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    preemptions: list[tuple[str, int]] = field(default_factory=list)


def _fits(node: NodeView, job: JobView) -> bool:
    if not node.schedulable or node.pool != job.pool:
        return False
    if node.free_cpus + EPSILON < job.cpus or len(node.free_gpus) < job.gpus:
        return False
    return job.memory_bytes is None or node.free_memory_bytes is None or node.free_memory_bytes >= job.memory_bytes


def _take(node: NodeView, job: JobView, rank: int) -> PartPlacement:
    gpus = node.free_gpus[: job.gpus]
    node.free_gpus = node.free_gpus[job.gpus :]
    node.free_cpus -= job.cpus
    if job.memory_bytes is not None and node.free_memory_bytes is not None:
        node.free_memory_bytes -= job.memory_bytes
    return PartPlacement(rank=rank, node_id=node.id, cpus=job.cpus, gpus=gpus)


def plan(snapshot: Snapshot) -> PassPlan:
    """Place queued jobs, highest priority then oldest first, onto nodes with room (greedy)."""
    result = PassPlan()
    order = sorted(snapshot.queued, key=lambda j: (-j.priority, j.seq))
    for job in order:
        candidates = [n for n in snapshot.nodes if _fits(n, job)]
        if len(candidates) < job.nodes:
            result.pending[job.id] = _pending_reason(snapshot, job, len(candidates))
            continue
        # Pack: prefer the nodes with the least free room, so whole nodes stay free for gangs.
        candidates.sort(key=lambda n: (len(n.free_gpus), n.free_cpus, n.id))
        parts = [_take(node, job, rank) for rank, node in enumerate(candidates[: job.nodes])]
        result.placements.append(Placement(job_id=job.id, parts=parts))
    return result


def _pending_reason(snapshot: Snapshot, job: JobView, have: int) -> str:
    pool_nodes = [n for n in snapshot.nodes if n.pool == job.pool]
    if not pool_nodes:
        return f"no nodes in pool {job.pool}"
    want = f"{job.nodes} node{'s' if job.nodes > 1 else ''} with {job.cpus:g} free slot{'s' if job.cpus != 1 else ''}"
    if job.gpus:
        want += f" and {job.gpus} free GPU{'s' if job.gpus > 1 else ''}"
    return f"needs {want} in pool {job.pool}; {have} {'has' if have == 1 else 'have'} them"
