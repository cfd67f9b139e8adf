"""Free room per node during one pass, indexed in packing order so a lookup never scans full nodes.

Packing policy: a part goes to the partially used node with the least free room that still
fits it (fewest free GPUs, then fewest free CPUs); only when no partially used node fits does it
open an empty node, the smallest that fits. Whole nodes thus stay free for gangs and
full-node jobs, and CPU-only work lands on nodes with no free GPUs before it touches a GPU node.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from dataclasses import dataclass, field

from trainyard.scheduler.views import EPSILON, JobView, NodeView, PartPlacement, RunningView

# (empty node?, free GPUs, free CPUs): ascending order is the packing preference.
PackingKey = tuple[int, int, float]


@dataclass(slots=True)
class Occupant:
    """What one running (or just placed) part holds on a node, and when it lets go."""

    job_id: str
    attempt: int
    priority: int
    preemptible: bool
    stopping: bool
    end_s: float
    cpus: float
    gpus: int
    memory_bytes: int


@dataclass(slots=True, eq=False)
class NodeState:
    id: str
    pool: str
    cpus: float
    gpu_count: int
    memory_bytes: int | None
    free_cpus: float
    free_gpus: list[int]
    free_memory_bytes: int | None
    schedulable: bool
    occupants: list[Occupant] = field(default_factory=list)

    def is_empty(self) -> bool:
        return len(self.free_gpus) == self.gpu_count and self.free_cpus + EPSILON >= self.cpus

    def packing_key(self) -> PackingKey:
        return (1 if self.is_empty() else 0, len(self.free_gpus), round(self.free_cpus, 6))

    def has_room(self, cpus: float, gpus: int, memory_bytes: int | None) -> bool:
        if self.free_cpus + EPSILON < cpus or len(self.free_gpus) < gpus:
            return False
        return memory_bytes is None or self.free_memory_bytes is None or self.free_memory_bytes >= memory_bytes

    def is_big_enough(self, job: JobView) -> bool:
        """Could the job's per-node share ever fit here, with the node empty?"""
        if self.cpus + EPSILON < job.cpus or self.gpu_count < job.gpus:
            return False
        return job.memory_bytes is None or self.memory_bytes is None or self.memory_bytes >= job.memory_bytes


class PoolIndex:
    """The schedulable nodes of one pool, bucketed by packing key."""

    def __init__(self) -> None:
        self._keys: list[PackingKey] = []
        self._buckets: dict[PackingKey, dict[str, NodeState]] = {}
        self._key_of: dict[str, PackingKey] = {}

    def add(self, node: NodeState) -> None:
        key = node.packing_key()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            insort(self._keys, key)
        bucket[node.id] = node
        self._key_of[node.id] = key

    def remove(self, node: NodeState) -> None:
        key = self._key_of.pop(node.id)
        bucket = self._buckets[key]
        del bucket[node.id]
        if not bucket:
            del self._buckets[key]
            del self._keys[bisect_left(self._keys, key)]

    def candidates(self, gpus: int, cpus: float) -> Iterator[NodeState]:
        """Nodes with at least this many free GPUs and CPUs, in packing order; memory is the caller's.

        Keys sort by (empty, free GPUs, free CPUs); bisecting past the buckets with too few free
        CPUs or GPUs keeps a lookup to a few steps per distinct free-GPU count, however many
        nodes are full. Stop iterating before changing any node: the index moves it.
        """
        keys = self._keys
        need_cpus = cpus - EPSILON
        i = bisect_left(keys, (0, gpus, need_cpus))
        while i < len(keys):
            empty, free_gpus, free_cpus = keys[i]
            if free_gpus < gpus:
                i = bisect_left(keys, (empty, gpus, need_cpus), i)
            elif free_cpus < need_cpus:
                i = bisect_left(keys, (empty, free_gpus, need_cpus), i)
            else:
                yield from self._buckets[keys[i]].values()
                i += 1


class Capacity:
    """Every node's state for one pass, and the per-pool indexes of those taking new work."""

    def __init__(self, nodes: list[NodeView]) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.pools: dict[str, PoolIndex] = {}
        self.pool_node_counts: dict[str, list[int]] = {}  # pool → [schedulable, not schedulable]
        self.occupants_by_job: dict[str, list[Occupant]] = {}
        self._occupants_loaded = False
        for view in nodes:
            self._add_view(view)

    def _add_view(self, view: NodeView) -> None:
        node = NodeState(
            id=view.id, pool=view.pool, cpus=view.cpus, gpu_count=len(view.gpus), memory_bytes=view.memory_bytes,
            free_cpus=view.free_cpus, free_gpus=sorted(view.free_gpus), free_memory_bytes=view.free_memory_bytes,
            schedulable=view.schedulable,
        )
        self.nodes[node.id] = node
        counts = self.pool_node_counts.setdefault(node.pool, [0, 0])
        counts[0 if node.schedulable else 1] += 1
        if node.schedulable:
            self.pools.setdefault(node.pool, PoolIndex()).add(node)

    def take(self, node: NodeState, job: JobView, rank: int, now_s: float) -> PartPlacement:
        """Give the job's per-node share on this node to it (lowest free GPU indices first)."""
        index = self.pools[node.pool]
        index.remove(node)
        gpus = node.free_gpus[: job.gpus]
        del node.free_gpus[: job.gpus]
        node.free_cpus -= job.cpus
        if job.memory_bytes is not None and node.free_memory_bytes is not None:
            node.free_memory_bytes -= job.memory_bytes
        index.add(node)
        # Placed this pass: holds its room until its wall clock at the latest; not preemptible yet.
        node.occupants.append(Occupant(
            job_id=job.id, attempt=0, priority=job.priority, preemptible=False, stopping=False,
            end_s=now_s + job.max_wall_clock_s, cpus=job.cpus, gpus=job.gpus, memory_bytes=job.memory_bytes or 0,
        ))
        return PartPlacement(rank=rank, node_id=node.id, cpus=job.cpus, gpus=gpus)

    def load_occupants(self, running: list[RunningView], now_s: float) -> None:
        """Attach running parts to their nodes; only reservations and preemption need them, so lazily."""
        if self._occupants_loaded:
            return
        self._occupants_loaded = True
        for job in running:
            end_s = max(now_s, job.expected_end_s)
            for part in job.parts:
                node = self.nodes.get(part.node_id)
                if node is None:
                    continue
                occupant = Occupant(
                    job_id=job.job_id, attempt=job.attempt, priority=job.priority, preemptible=job.preemptible,
                    stopping=job.stopping, end_s=end_s, cpus=part.cpus, gpus=len(part.gpus),
                    memory_bytes=part.memory_bytes or 0,
                )
                node.occupants.append(occupant)
                self.occupants_by_job.setdefault(job.job_id, []).append(occupant)

    def pool_nodes(self, pool: str) -> list[NodeState]:
        return [node for node in self.nodes.values() if node.pool == pool and node.schedulable]

    def mark_stopping(self, job_id: str) -> None:
        """A victim's parts on every node count as leaving from now on."""
        for occupant in self.occupants_by_job.get(job_id, ()):
            occupant.stopping = True
