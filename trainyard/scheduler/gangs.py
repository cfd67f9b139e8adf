"""Reservations for a blocked job (a gang or not): which nodes it gets as they free up, and when.

The first job in a pool's queue order that is blocked for room holds the pool's one waiting
reservation. Because only one job per pool holds it per pass, and the same job keeps it until it
starts (nothing ahead of it in the order is blocked for room), two gangs never each hold part of
what the other needs: the one behind simply waits its turn.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from operator import attrgetter

from trainyard.scheduler.capacity import NodeState
from trainyard.scheduler.views import EPSILON, JobView, Reservation

_by_end = attrgetter("end_s")


def start_time_s(node: NodeState, job: JobView, now_s: float) -> float | None:
    """When the job's per-node share fits on this node, counting what running work releases, or None."""
    if node.has_room(job.cpus, job.gpus, job.memory_bytes):
        return now_s
    free_cpus = node.free_cpus
    free_gpus = len(node.free_gpus)
    free_memory_bytes = node.free_memory_bytes
    for occupant in sorted(node.occupants, key=_by_end):
        free_cpus += occupant.cpus
        free_gpus += occupant.gpus
        if free_memory_bytes is not None:
            free_memory_bytes += occupant.memory_bytes
        if (
            free_cpus + EPSILON >= job.cpus
            and free_gpus >= job.gpus
            and (job.memory_bytes is None or free_memory_bytes is None or free_memory_bytes >= job.memory_bytes)
        ):
            return max(now_s, occupant.end_s)
    return None


def reserve(job: JobView, pool_nodes: Iterable[NodeState], now_s: float) -> Reservation | None:
    """The job's nodes that free up first (packing order among equals), or None if too few ever fit."""
    starts: list[tuple[float, tuple[int, int, float], str]] = []
    for node in pool_nodes:
        if not node.is_big_enough(job):
            continue
        start_s = start_time_s(node, job, now_s)
        if start_s is not None:
            starts.append((start_s, node.packing_key(), node.id))
    if len(starts) < job.nodes:
        return None
    chosen = heapq.nsmallest(job.nodes, starts)
    return Reservation(
        job_id=job.id,
        pool=job.pool,
        node_ids=[node_id for _, _, node_id in chosen],
        expected_start_s=chosen[-1][0],
    )
