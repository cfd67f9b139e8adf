"""Free room per node during one pass, indexed in packing order so a lookup never scans full nodes.

Packing policy: a part goes to the partially used node with the least free room that still
fits it (fewest free GPUs, then fewest free CPUs); only when no partially used node fits does it
open an empty node, the smallest that fits. Whole nodes thus stay free for gangs and
full-node jobs, and CPU-only work lands on nodes with no free GPUs before it touches a GPU node.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from trainyard.scheduler.views import EPSILON, JobView, NodeView, PartPlacement, RunningView, has_host_paths

# (empty node?, free GPUs, free CPUs): ascending order is the packing preference.
PackingKey = tuple[int, int, float]
# (pool, nodes, cpus, gpus, memory_bytes): jobs of one shape fit or fail alike, up to backfill.
Shape = tuple[str, int, float, int, int | None, tuple[str, ...]]
shape_of: Callable[[JobView], Shape] = attrgetter("pool", "nodes", "cpus", "gpus", "memory_bytes", "host_paths")


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
    host_volumes: tuple[str, ...] = ()

    def has_host_paths(self, job: JobView) -> bool:
        return not job.host_paths or has_host_paths(self.host_volumes, job.host_paths)

    def is_empty(self) -> bool:
        return len(self.free_gpus) == self.gpu_count and self.free_cpus + EPSILON >= self.cpus

    def packing_key(self) -> PackingKey:
        return (1 if self.is_empty() else 0, len(self.free_gpus), round(self.free_cpus, 6))

    def has_room(self, cpus: float, gpus: int, memory_bytes: int | None) -> bool:
        if self.free_cpus + EPSILON < cpus or len(self.free_gpus) < gpus:
            return False
        return memory_bytes is None or self.free_memory_bytes is None or self.free_memory_bytes >= memory_bytes

    def is_big_enough(self, job: JobView) -> bool:
        """Could the job's per-node share ever fit here, with the node empty (and its host volumes here)?"""
        if self.cpus + EPSILON < job.cpus or self.gpu_count < job.gpus or not self.has_host_paths(job):
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

    def __init__(self, nodes: list[NodeView], running: list[RunningView], now_s: float) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.pools: dict[str, PoolIndex] = {}
        self.pool_node_counts: dict[str, list[int]] = {}  # pool → [schedulable, not schedulable]
        self._running = running
        self._now_s = now_s
        self._occupants_loaded = False
        self._pool_nodes: dict[str, list[NodeState]] = {}
        for view in nodes:
            self._add_view(view)

    def _add_view(self, view: NodeView) -> None:
        node = NodeState(
            view.id, view.pool, view.cpus, len(view.gpus), view.memory_bytes,
            view.free_cpus, sorted(view.free_gpus), view.free_memory_bytes, view.schedulable,
            host_volumes=view.host_volumes,
        )  # fmt: skip
        self.nodes[node.id] = node
        counts = self.pool_node_counts.setdefault(node.pool, [0, 0])
        counts[0 if node.schedulable else 1] += 1
        if node.schedulable:
            self.pools.setdefault(node.pool, PoolIndex()).add(node)
            self._pool_nodes.setdefault(node.pool, []).append(node)

    def pool_nodes(self, pool: str) -> list[NodeState]:
        """The pool's schedulable nodes, their running parts loaded."""
        self._load_occupants()
        return self._pool_nodes.get(pool, [])

    def take(self, node: NodeState, job: JobView, rank: int) -> PartPlacement:
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
        end_s = self._now_s + job.max_wall_clock_s
        node.occupants.append(
            Occupant(job.id, 0, job.priority, False, False, end_s, job.cpus, job.gpus, job.memory_bytes or 0)
        )
        return PartPlacement(rank=rank, node_id=node.id, cpus=job.cpus, gpus=gpus)

    def _load_occupants(self) -> None:
        """Attach running parts to their nodes; only reservations and preemption need them, so lazily."""
        if self._occupants_loaded:
            return
        self._occupants_loaded = True
        nodes = self.nodes
        for job in self._running:
            end_s = max(self._now_s, job.expected_end_s)
            for part in job.parts:
                node = nodes.get(part.node_id)
                if node is not None:
                    node.occupants.append(Occupant(
                        job.job_id, job.attempt, job.priority, job.preemptible, job.stopping, end_s,
                        part.cpus, len(part.gpus), part.memory_bytes or 0,
                    ))  # fmt: skip

    def mark_stopping(self, job_id: str) -> None:
        """A victim's parts on every node count as leaving from now on."""
        for node in self.nodes.values():
            for occupant in node.occupants:
                if occupant.job_id == job_id:
                    occupant.stopping = True
