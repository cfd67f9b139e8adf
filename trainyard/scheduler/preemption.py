"""Choosing what to preempt so a blocked job fits: the fewest, lowest-priority preemptible jobs.

A job may evict only running jobs marked `preemptible` whose requested priority is strictly
lower than its own. Requested, not aged: aging orders the queue, but if it also let a waiting job
evict one that outranks it, the evicted job (aged too by then) could evict it back, and the two
would take turns forever. Parts already stopping count as free room at no cost, so a job never
preempts twice for the same room. Nothing is evicted unless the job then fits on enough nodes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from trainyard.scheduler.capacity import NodeState, Occupant
from trainyard.scheduler.views import EPSILON, JobView

# Per node: (highest victim priority, victims, stopping parts used); no victims sorts first.
NodeCost = tuple[int, int, int]


@dataclass(slots=True)
class PreemptionChoice:
    node_ids: list[str]
    victims: list[tuple[str, int]]  # (job id, attempt) to stop now
    stopping_jobs: int  # already stopping jobs it waits for


def is_victim_for(occupant: Occupant, job: JobView) -> bool:
    return occupant.preemptible and not occupant.stopping and occupant.priority < job.priority


def choose(job: JobView, pool_nodes: Iterable[NodeState]) -> PreemptionChoice | None:
    """The cheapest nodes that fit the job once their victims exit, or None when too few would."""
    options: list[tuple[NodeCost, tuple[int, int, float], str, list[Occupant]]] = []
    for node in pool_nodes:
        if not node.is_big_enough(job):
            continue
        plan = _plan_node(node, job)
        if plan is not None:
            options.append((plan[0], node.packing_key(), node.id, plan[1]))
    if len(options) < job.nodes:
        return None
    chosen = heapq.nsmallest(job.nodes, options, key=lambda option: (option[0], option[1], option[2]))
    victims: dict[str, int] = {}
    stopping: set[str] = set()
    for _, _, _, freed in chosen:
        for occupant in freed:
            if occupant.stopping:
                stopping.add(occupant.job_id)
            else:
                victims[occupant.job_id] = occupant.attempt
    if not victims and not stopping:
        return None  # it fits without anyone leaving: not a preemption's business
    return PreemptionChoice(node_ids=[node_id for _, _, node_id, _ in chosen],
                            victims=sorted(victims.items()), stopping_jobs=len(stopping))


def _plan_node(node: NodeState, job: JobView) -> tuple[NodeCost, list[Occupant]] | None:
    """Which parts must leave this node for the job's share to fit, and at what cost."""
    if node.has_room(job.cpus, job.gpus, job.memory_bytes):
        return (-1, 0, 0), []
    releasable = [o for o in node.occupants if o.stopping or is_victim_for(o, job)]
    if not releasable:
        return None
    # Stopping parts first (free), then the lowest priority, then the biggest: fewest evictions.
    releasable.sort(key=lambda o: (not o.stopping, o.priority, -o.gpus, -o.cpus))
    freed: list[Occupant] = []
    for occupant in releasable:
        freed.append(occupant)
        if _fits_after(node, job, freed):
            freed = _drop_unneeded(node, job, freed)
            victims = [o for o in freed if not o.stopping]
            top = max((o.priority for o in victims), default=-1)
            return (top, len(victims), len(freed) - len(victims)), freed
    return None


def _fits_after(node: NodeState, job: JobView, freed: list[Occupant]) -> bool:
    free_cpus = node.free_cpus + sum(o.cpus for o in freed)
    free_gpus = len(node.free_gpus) + sum(o.gpus for o in freed)
    if free_cpus + EPSILON < job.cpus or free_gpus < job.gpus:
        return False
    if job.memory_bytes is None or node.free_memory_bytes is None:
        return True
    return node.free_memory_bytes + sum(o.memory_bytes for o in freed) >= job.memory_bytes


def _drop_unneeded(node: NodeState, job: JobView, freed: list[Occupant]) -> list[Occupant]:
    """Spare the highest-priority victims the job turns out not to need (greedy overshoots)."""
    kept = list(freed)
    for occupant in sorted(freed, key=lambda o: (o.stopping, -o.priority)):
        trial = [o for o in kept if o is not occupant]
        if _fits_after(node, job, trial):
            kept = trial
    return kept
