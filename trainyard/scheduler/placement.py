"""Placement: one scheduling pass over a snapshot of nodes and jobs; no I/O, no clock of its own.

The scheduler loop builds a `Snapshot` from the database, calls `plan()`, and writes each
placement in one transaction (a gang's N parts together or not at all), records the pending
reasons, and stops the preempted attempts.

A pass walks the queue once, in the order of `priority.queue_order` (priority with aging, fair
share, submit order), and for each job:

1. skips it, saying why, if a limit holds it: its sweep's `max_concurrency`, its workspace's GPU
   quota, or a pool with no node taking new work (all draining, or none);
2. places it on the nodes `capacity.PoolIndex` prefers (packing: partially used nodes first), all
   `nodes` of a gang or none;
3. otherwise it is blocked for room. It may preempt lower-priority preemptible work
   (`preemption`); failing that, the first such job of each pool reserves the nodes that free up
   first for it (`gangs`). Reserved nodes take later jobs only as backfill: when
   `now + max_wall_clock_s` is no later than the reservation's expected start.

Speed: room only shrinks during a pass, so a job whose shape (pool, nodes, CPUs, GPUs, memory)
already failed fails again without a lookup (unless its shorter wall clock might backfill), and
preemption is tried only above the priority that already failed for that shape. 100k queued
jobs thus cost a sort and one cheap step each; those behind get an aggregate reason ("behind
4,200+ jobs in the queue for pool gpu") that changes rarely, so the loop rewrites few of them.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from trainyard.scheduler import gangs, pending
from trainyard.scheduler.capacity import Capacity, NodeState, Shape, shape_of
from trainyard.scheduler.limits import QueueLimits
from trainyard.scheduler.pending import never_fits
from trainyard.scheduler.preemption import Preemptor
from trainyard.scheduler.priority import queue_order
from trainyard.scheduler.views import (
    EPSILON,
    JobView,
    NodeView,
    PartPlacement,
    PassPlan,
    Placement,
    Reservation,
    RunningPart,
    RunningView,
    Snapshot,
)

__all__ = [
    "EPSILON", "JobView", "NodeView", "PartPlacement", "PassPlan", "Placement", "Reservation", "RunningPart",
    "RunningView", "Snapshot", "never_fits", "plan",
]  # fmt: skip

# Each attempt scans part of a pool's nodes; more blocked jobs can preempt in the next pass.
MAX_PREEMPTION_ATTEMPTS_PER_PASS = 8
_NEVER_S = float("inf")
_wall_of: Callable[[JobView], float] = attrgetter("max_wall_clock_s")
_priority_of: Callable[[JobView], int] = attrgetter("priority")


def plan(snapshot: Snapshot, *, shortcut_tail: bool = True) -> PassPlan:
    """Place what fits in queue order; say why the rest waits; reserve and preempt for the blocked.

    `shortcut_tail=False` walks every job through the full loop even once nothing left could
    start: the same plan, slower; tests compare the two.
    """
    return _Pass(snapshot, shortcut_tail).run(queue_order(snapshot))


class _Saturation:
    """Tells when no job left in the queue could start or preempt, so the rest need only reasons."""

    def __init__(self, queued: list[JobView]) -> None:
        # Read in the snapshot's order, not queue order: sequential in memory, so cheap.
        self.shapes = set(map(shape_of, queued))
        self.unavailable: set[Shape] = set()  # pool has no node taking new work
        self._shortest_wall_s = min(map(_wall_of, queued), default=0.0)
        self._top_priority = max(map(_priority_of, queued), default=0)
        self._live: list[Shape] | None = None  # shapes not yet known dead

    def reached(self, failed_wall_s: dict[Shape, float], floor: dict[Shape, int]) -> bool:
        """Every shape failed for the shortest wall clock queued and may not preempt at the top priority."""
        if len(failed_wall_s) + len(self.unavailable) < len(self.shapes):
            return False  # cheap: some shape has not even been tried
        if self._live is None:
            self._live = list(self.shapes)
        # A shape once dead stays dead (failed wall clocks only shrink, preemption floors only
        # grow), so each is dropped at most once and a check costs O(1) amortized.
        live = self._live
        while live and self._dead(live[-1], failed_wall_s, floor):
            live.pop()
        return not live

    def _dead(self, shape: Shape, failed_wall_s: dict[Shape, float], floor: dict[Shape, int]) -> bool:
        if shape in self.unavailable:
            return True
        return failed_wall_s.get(shape, _NEVER_S) <= self._shortest_wall_s and floor[shape] >= self._top_priority


class _Found:
    """Nodes a job may use now, and how many more would fit but are reserved for a job ahead."""

    __slots__ = ("blocking", "reserved_fit", "usable")

    def __init__(self) -> None:
        self.usable: list[NodeState] = []
        self.reserved_fit = 0
        self.blocking: Reservation | None = None


class _Pass:
    def __init__(self, snapshot: Snapshot, shortcut_tail: bool) -> None:
        self.now_s = snapshot.now_s
        self.unready_nodes = snapshot.unready_nodes
        self.result = PassPlan()
        self.capacity = Capacity(snapshot.nodes, snapshot.running, snapshot.now_s)
        self.limits = QueueLimits(snapshot)
        self._busy: dict[str, str] = {}
        self.position = pending.QueuePosition(self._pool_busy)
        self.preemptor = Preemptor(self.capacity, MAX_PREEMPTION_ATTEMPTS_PER_PASS)
        # Smallest max_wall_clock_s that failed per shape: longer jobs of that shape fail too
        # (they may backfill on fewer reserved nodes), shorter ones are tried.
        self.failed_wall_s: dict[Shape, float] = {}
        self.held: dict[str, Reservation] = {}  # node id → the reservation holding it
        self.pools_with_waiting_reservation: set[str] = set()
        self.saturation = _Saturation(snapshot.queued) if shortcut_tail else None

    def run(self, order: list[JobView]) -> PassPlan:
        done = self._run_head(order)
        if done < len(order):
            self._run_tail(order[done:])
        return self.result

    def _run_head(self, order: list[JobView]) -> int:
        """Consider jobs in order until nothing left could start; returns how many it considered."""
        # Every queued job may pass here, most only to learn they wait behind others, so that
        # path is inline and touches a few dicts.
        reasons = self.result.pending
        limits, failed_wall_s, floor = self.limits, self.failed_wall_s, self.preemptor.floor
        behind = self.position.behind
        for done, (job, shape) in enumerate(zip(order, map(shape_of, order), strict=True), start=1):
            if limits.may_apply(job) and (reason := limits.blocked(job)) is not None:
                reasons[job.id] = reason
                continue
            failed_at_s = failed_wall_s.get(shape)
            if failed_at_s is not None and job.max_wall_clock_s >= failed_at_s and job.priority <= floor[shape]:
                reasons[job.id] = behind(job.pool)
                continue
            reason = self._consider(job, shape, failed_at_s)
            if reason is not None:
                reasons[job.id] = reason
            if self.saturation is not None and self.saturation.reached(failed_wall_s, floor):
                return done
        return len(order)

    def _run_tail(self, tail: list[JobView]) -> None:
        """Reasons for the jobs after the last one that could start: limits first, else their place in line."""
        # One sweep over the tail: in queue order the jobs lie scattered in memory, so each
        # extra pass over 100k of them costs about as much as the work itself.
        reasons = self.result.pending
        limits = self.limits
        sweep_texts = limits.blocked_sweeps()
        quota = limits.quota
        waiting: dict[str, list[str]] = {}
        for job in tail:
            text = sweep_texts.get(job.sweep_id)
            if text is None and job.gpus and job.workspace in quota:
                text = limits.blocked(job)
            if text is None:
                waiting.setdefault(job.pool, []).append(job.id)
            else:
                reasons[job.id] = text
        for pool, job_ids in waiting.items():
            if pool in self.capacity.pools:
                reasons.update(zip(job_ids, self.position.behind_many(pool, len(job_ids)), strict=True))
            else:
                reasons.update(dict.fromkeys(job_ids, self._pool_unavailable(pool)))

    def _pool_busy(self, pool: str) -> str | None:
        """How full the pool is, read once per pass when its first job waits (so reasons agree)."""
        text = self._busy.get(pool)
        if text is None and pool in self.capacity.pools:
            text = self._busy[pool] = pending.pool_busy(self.capacity.pool_nodes(pool))
        return text

    def _pool_unavailable(self, pool: str) -> str:
        return pending.pool_unavailable(
            pool, draining=self.capacity.pool_node_counts.get(pool, [0, 0])[1], unready=self.unready_nodes.get(pool)
        )

    def _consider(self, job: JobView, shape: Shape, failed_at_s: float | None) -> str | None:
        if job.pool not in self.capacity.pools:
            if self.saturation is not None:
                self.saturation.unavailable.add(shape)
            return self._pool_unavailable(job.pool)
        if failed_at_s is not None and job.max_wall_clock_s >= failed_at_s:
            return self._blocked_again(job, shape)  # here only because it may preempt
        found = self._find_nodes(job)
        if len(found.usable) >= job.nodes:
            self._place(job, found.usable)
            return None
        return self._blocked_first(job, shape, found)

    def _find_nodes(self, job: JobView) -> _Found:
        found = _Found()
        latest_end_s = self.now_s + job.max_wall_clock_s
        held = self.held
        for node in self.capacity.pools[job.pool].candidates(job.gpus, job.cpus):
            if job.memory_bytes is not None and not node.has_room(job.cpus, job.gpus, job.memory_bytes):
                continue
            if job.host_paths and not node.has_host_paths(job):
                continue
            reservation = held.get(node.id)
            if reservation is None or latest_end_s <= reservation.expected_start_s:
                found.usable.append(node)
                if len(found.usable) == job.nodes:
                    break
            else:
                found.reserved_fit += 1
                found.blocking = found.blocking or reservation
        return found

    def _place(self, job: JobView, nodes: list[NodeState]) -> None:
        parts = [self.capacity.take(node, job, rank) for rank, node in enumerate(nodes)]
        self.result.placements.append(Placement(job_id=job.id, parts=parts))
        self.limits.charge(job)

    def _blocked_first(self, job: JobView, shape: Shape, found: _Found) -> str:
        """The first job of its shape (and wall clock) that finds no room: preempt, reserve, explain."""
        # Shorter jobs of this shape might still backfill onto the reserved nodes it could not use.
        self.failed_wall_s[shape] = job.max_wall_clock_s if found.reserved_fit else 0.0
        self.preemptor.note_blocked(shape)
        self.position.count(job.pool)
        preempting = self._preempt(job, shape) if self.preemptor.may_try(job, shape) else None
        if preempting is not None:
            return preempting
        if found.blocking is not None and len(found.usable) + found.reserved_fit >= job.nodes:
            return pending.waiting_for_reservation(found.blocking, self.now_s)
        if job.pool in self.pools_with_waiting_reservation:
            return pending.waiting_for_room(job, len(found.usable), self._pool_busy(job.pool))
        reservation = self._reserve(job)
        # A text without a reservation made says no node is big enough (see _reserve).
        too_big = reservation is not None and job.pool not in self.pools_with_waiting_reservation
        # How busy the pool is helps only a job that would fit once something ends.
        reason = pending.waiting_for_room(job, len(found.usable), None if too_big else self._pool_busy(job.pool))
        return reason if reservation is None else f"{reason}; {reservation}"

    def _blocked_again(self, job: JobView, shape: Shape) -> str:
        preempting = self._preempt(job, shape)
        if preempting is None:
            return self.position.behind(job.pool)
        self.position.count(job.pool)
        return preempting

    def _hold(self, reservation: Reservation) -> None:
        self.result.reservations.append(reservation)
        for node_id in reservation.node_ids:
            self.held[node_id] = reservation

    def _reserve(self, job: JobView) -> str | None:
        """Hold the nodes that free up first for this job (the pool's one waiting reservation); say so."""
        pool_nodes = [
            node for node in self.capacity.pool_nodes(job.pool) if node.id not in self.held and node.has_host_paths(job)
        ]
        reservation = gangs.reserve(job, pool_nodes, self.now_s)
        if reservation is not None:
            self.pools_with_waiting_reservation.add(job.pool)
            self._hold(reservation)
            return pending.reserved_for_it(reservation, self.now_s)
        big_enough = sum(1 for node in self.capacity.pool_nodes(job.pool) if node.is_big_enough(job))
        if big_enough >= job.nodes:
            return None  # held for jobs ahead, or what runs there did not say when it ends
        if job.host_paths:
            having = sum(1 for node in self.capacity.pool_nodes(job.pool) if node.has_host_paths(job))
            if having < job.nodes:
                return pending.missing_host_volumes(job, having)
        draining = sum(
            1
            for node in self.capacity.nodes.values()
            if node.pool == job.pool and not node.schedulable and node.is_big_enough(job)
        )
        return pending.too_big(big_enough, draining, job.pool)

    def _preempt(self, job: JobView, shape: Shape) -> str | None:
        choice = self.preemptor.try_for(job, shape, self.held)
        if choice is None:
            return None
        # The room is the job's from now on: nothing else may start there while the victims exit.
        self._hold(Reservation(job.id, job.pool, choice.node_ids, expected_start_s=self.now_s, by_preemption=True))
        self.result.preemptions.extend(choice.victims)
        return pending.preempting(len(choice.victims), choice.stopping_jobs)
