"""Choosing what to preempt so a blocked job fits: the fewest, lowest-priority preemptible jobs.

A job may evict only running jobs marked `preemptible` whose requested priority is strictly
lower than its own. Requested, not aged: aging orders the queue, but if it also let a waiting job
evict one that outranks it, the evicted job (aged too by then) could evict it back, and the two
would take turns forever. Parts already stopping count as free room at no cost, so a job never
preempts twice for the same room. Nothing is evicted unless the job then fits on enough nodes,
and the job is not placed in the same pass: the room is held for it until the victims exit.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Container, Iterable
from dataclasses import dataclass
from operator import itemgetter

from trainyard.scheduler.capacity import Capacity, NodeState, Occupant, Shape
from trainyard.scheduler.views import EPSILON, JobView

# Per node: (highest victim priority, victims, stopping parts waited for); lower is cheaper.
NodeCost = tuple[int, int, int]
NO_VICTIMS = 1 << 30  # a priority no job has: "nothing here can be preempted"
_ROOM_NOW: NodeCost = (-2, 0, 0)
_Option = tuple[NodeCost, tuple[int, int, float], str, list[Occupant]]


@dataclass(slots=True)
class PreemptionChoice:
    node_ids: list[str]
    victims: list[tuple[str, int]]  # (job id, attempt) to stop now
    stopping_jobs: int  # already stopping jobs it waits for


class Preemptor:
    """One pass's preemption: who may still try, and each pool's nodes, cheapest victims first."""

    def __init__(self, capacity: Capacity, attempts: int) -> None:
        self._capacity = capacity
        self.attempts_left = attempts
        # A blocked job of this shape tries only above this priority (what failed, or the pool's
        # cheapest victim): the check that lets 100k blocked jobs skip preemption in one compare.
        self.floor: dict[Shape, int] = {}
        self._victim_nodes: dict[str, list[tuple[int, NodeState]]] = {}

    def note_blocked(self, shape: Shape) -> None:
        if shape not in self.floor:
            self.floor[shape] = self._cheapest(shape[0]) if self.attempts_left > 0 else NO_VICTIMS

    def may_try(self, job: JobView, shape: Shape) -> bool:
        return job.priority > self.floor.get(shape, NO_VICTIMS)

    def try_for(self, job: JobView, shape: Shape, held: Container[str]) -> PreemptionChoice | None:
        self.attempts_left -= 1
        if self.attempts_left <= 0:
            for other in self.floor:  # in place: the pass's hot loop holds this dict
                self.floor[other] = NO_VICTIMS
        room_nodes = [
            node
            for node in self._capacity.pools[job.pool].candidates(job.gpus, job.cpus)
            if node.id not in held and node.has_room(job.cpus, job.gpus, job.memory_bytes) and node.has_host_paths(job)
        ]
        victims = self._victims_by_cheapest(job.pool)
        if job.host_paths:
            victims = [(cheapest, node) for cheapest, node in victims if node.has_host_paths(job)]
        choice = choose(job, room_nodes, victims, held)
        if choice is None:
            self.floor[shape] = max(self.floor.get(shape, -1), job.priority)
            return None
        for job_id, _ in choice.victims:
            self._capacity.mark_stopping(job_id)
        self._victim_nodes.clear()  # cheapest victims changed
        return choice

    def _cheapest(self, pool: str) -> int:
        nodes = self._victims_by_cheapest(pool)
        return nodes[0][0] if nodes else NO_VICTIMS

    def _victims_by_cheapest(self, pool: str) -> list[tuple[int, NodeState]]:
        nodes = self._victim_nodes.get(pool)
        if nodes is None:
            nodes = []
            for node in self._capacity.pool_nodes(pool):
                releasable = [-1 if o.stopping else o.priority for o in node.occupants if o.stopping or o.preemptible]
                cheapest = min(releasable, default=NO_VICTIMS)
                if cheapest != NO_VICTIMS:
                    nodes.append((cheapest, node))
            nodes.sort(key=itemgetter(0))
            self._victim_nodes[pool] = nodes
        return nodes


def is_victim_for(occupant: Occupant, job: JobView) -> bool:
    return occupant.preemptible and not occupant.stopping and occupant.priority < job.priority


def choose(
    job: JobView, room_nodes: Iterable[NodeState], victim_nodes: list[tuple[int, NodeState]], held: Container[str]
) -> PreemptionChoice | None:
    """The cheapest `job.nodes` nodes once their victims exit, or None when too few would fit it.

    `victim_nodes` is sorted by each node's cheapest victim, so the scan stops as soon as no
    node left could beat the ones chosen.
    """
    nothing: list[Occupant] = []
    options: list[_Option] = [(_ROOM_NOW, node.packing_key(), node.id, nothing) for node in room_nodes]
    options.sort(key=_option_order)
    del options[job.nodes :]
    seen = {option[2] for option in options}
    for cheapest, node in victim_nodes:
        if cheapest >= job.priority:
            break  # sorted: nobody further along may be evicted by this job
        best_possible: NodeCost = (-1, 0, 1) if cheapest < 0 else (cheapest, 1, 0)
        if len(options) == job.nodes and options[-1][0] <= best_possible:
            break
        if node.id in held or node.id in seen:
            continue
        plan = _plan_node(node, job)
        if plan is not None:
            insort(options, (plan[0], node.packing_key(), node.id, plan[1]), key=_option_order)
            del options[job.nodes :]
    if len(options) < job.nodes:
        return None
    return _choice(options)


def _option_order(option: _Option) -> tuple[NodeCost, tuple[int, int, float], str]:
    return option[0], option[1], option[2]


def _choice(options: list[_Option]) -> PreemptionChoice | None:
    victims: dict[str, int] = {}
    stopping: set[str] = set()
    for _, _, _, freed in options:
        for occupant in freed:
            if occupant.stopping:
                stopping.add(occupant.job_id)
            else:
                victims[occupant.job_id] = occupant.attempt
    if not victims and not stopping:
        return None  # it fits without anyone leaving: not a preemption's business
    return PreemptionChoice(
        node_ids=[node_id for _, _, node_id, _ in options],
        victims=sorted(victims.items()),
        stopping_jobs=len(stopping),
    )


def _plan_node(node: NodeState, job: JobView) -> tuple[NodeCost, list[Occupant]] | None:
    """Which parts must leave this node for the job's share to fit, and at what cost."""
    if not node.is_big_enough(job):
        return None
    releasable = [o for o in node.occupants if o.stopping or is_victim_for(o, job)]
    if not _fits_after(node, job, releasable):
        return None
    # Stopping parts first (free), then the lowest priority, then the biggest: fewest evictions.
    releasable.sort(key=lambda o: (not o.stopping, o.priority, -o.gpus, -o.cpus))
    for count in range(1, len(releasable) + 1):
        if _fits_after(node, job, releasable[:count]):
            freed = _drop_unneeded(node, job, releasable[:count])
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
