"""Property tests: a small in-memory cluster driven by random submits, cancels, node churn and passes.

After every pass an independent checker replays the plan in queue order and checks the
invariants of SPEC §2 (3 to 5) and issue 3: no GPU index or CPU slot given twice, at most one
running attempt per job, gangs whole or not at all, limits kept, no placeable job skipped for a
lower one except by backfill that ends before the reservation, terminal states stay terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trainyard.scheduler import placement
from trainyard.scheduler.placement import (
    EPSILON,
    JobView,
    NodeView,
    PassPlan,
    Reservation,
    RunningPart,
    RunningView,
    Snapshot,
    plan,
)
from trainyard.scheduler.priority import queue_order

PREEMPTION_GRACE_S = 30.0
SWEEP_LIMITS = {"s1": 2, "s2": 1}
GPU_QUOTAS = {"team-a": 6}
TERMINAL = {"succeeded", "failed", "cancelled"}


# The checker: replays a plan in queue order against the snapshot.


@dataclass
class _Room:
    pool: str
    schedulable: bool
    free_cpus: float
    free_gpus: set[int]


def check_plan(snapshot: Snapshot, result: PassPlan) -> None:
    rooms = {n.id: _Room(n.pool, n.schedulable, n.free_cpus, set(n.free_gpus)) for n in snapshot.nodes}
    placements = {p.job_id: p for p in result.placements}
    assert len(placements) == len(result.placements), "a job placed twice in one pass"
    queued_ids = {j.id for j in snapshot.queued}
    assert set(placements) <= queued_ids
    assert not set(placements) & set(result.pending)
    assert set(placements) | set(result.pending) == queued_ids, "a queued job without placement or reason"
    holders = {r.job_id: r for r in result.reservations}
    held_by: dict[str, Reservation] = {}
    sweep_running = dict(snapshot.sweep_running)
    gpus_in_use = dict(snapshot.workspace_gpus_in_use)
    for job in queue_order(snapshot):
        limited = _over_limit(snapshot, job, sweep_running, gpus_in_use)
        if job.id in placements:
            assert not limited, f"{job.id} placed over a limit"
            _apply_placement(snapshot, job, placements[job.id].parts, rooms, held_by)
            sweep_running[job.sweep_id or ""] = sweep_running.get(job.sweep_id or "", 0) + 1
            gpus_in_use[job.workspace] = gpus_in_use.get(job.workspace, 0) + job.gpus * job.nodes
        elif not limited:
            usable = [n for n, room in rooms.items() if _fits(room, job) and _may_use(n, job, held_by, snapshot.now_s)]
            assert len(usable) < job.nodes, f"{job.id} fit on {usable} but was skipped"
        if job.id in holders:
            for node_id in holders[job.id].node_ids:
                held_by.setdefault(node_id, holders[job.id])
    _check_preemptions(snapshot, result)


def _over_limit(snapshot: Snapshot, job: JobView, sweep_running: dict[str, int], gpus_in_use: dict[str, int]) -> bool:
    limit = snapshot.sweep_max_concurrency.get(job.sweep_id or "")
    if limit is not None and sweep_running.get(job.sweep_id or "", 0) >= limit:
        return True
    quota = snapshot.workspace_gpu_quota.get(job.workspace)
    return bool(job.gpus) and quota is not None and gpus_in_use.get(job.workspace, 0) + job.gpus * job.nodes > quota


def _fits(room: _Room, job: JobView) -> bool:
    return (room.schedulable and room.pool == job.pool and room.free_cpus + EPSILON >= job.cpus
            and len(room.free_gpus) >= job.gpus)  # fmt: skip


def _may_use(node_id: str, job: JobView, held_by: dict[str, Reservation], now_s: float) -> bool:
    held = held_by.get(node_id)
    return held is None or now_s + job.max_wall_clock_s <= held.expected_start_s


def _apply_placement(snapshot: Snapshot, job: JobView, parts: list[placement.PartPlacement],
                     rooms: dict[str, _Room], held_by: dict[str, Reservation]) -> None:  # fmt: skip
    assert len(parts) == job.nodes, "a gang placed in part"
    assert len({p.node_id for p in parts}) == job.nodes, "two ranks of a gang on one node"
    assert [p.rank for p in parts] == list(range(job.nodes))
    for part in parts:
        room = rooms[part.node_id]
        assert _fits(room, job), f"{job.id} placed on {part.node_id} without room"
        assert len(part.gpus) == job.gpus and set(part.gpus) <= room.free_gpus, "GPU index given twice"
        # Backfill onto a node reserved for a job ahead only when it ends before that job's start.
        assert _may_use(part.node_id, job, held_by, snapshot.now_s), f"{job.id} took a reserved node"
        room.free_gpus -= set(part.gpus)
        room.free_cpus -= job.cpus


def _check_preemptions(snapshot: Snapshot, result: PassPlan) -> None:
    victims = [job_id for job_id, _ in result.preemptions]
    assert len(victims) == len(set(victims)), "a job preempted twice"
    running = {r.job_id: r for r in snapshot.running}
    blocked_priorities = [j.priority for j in snapshot.queued if j.id in result.pending]
    for job_id, attempt in result.preemptions:
        victim = running[job_id]
        assert victim.preemptible and not victim.stopping and attempt == victim.attempt
        assert blocked_priorities and victim.priority < max(blocked_priorities)


def plan_without_shortcut(snapshot: Snapshot) -> PassPlan:
    """The same pass with the saturated-tail shortcut off: every job goes through the full loop."""
    return plan(snapshot, shortcut_tail=False)


# The model: what the database would hold, reduced to what scheduling needs.


@dataclass
class ModelNode:
    pool: str
    cpus: float
    gpus: list[int]
    schedulable: bool = True


@dataclass
class ModelJob:
    view: JobView
    state: str = "queued"
    attempt: int = 1
    parts: list[RunningPart] = field(default_factory=list)
    started_s: float = 0.0
    stopping_until_s: float | None = None


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now_s = 1000.0
        self.nodes: dict[str, ModelNode] = {}
        self.jobs: dict[str, ModelJob] = {}
        self.terminal: dict[str, str] = {}
        self.usage: dict[str, float] = {}
        self.counter = 0

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    @initialize()
    def start_cluster(self) -> None:
        for _ in range(3):
            self.nodes[self._next("n")] = ModelNode("gpu", 8.0, [0, 1, 2, 3])
        for _ in range(2):
            self.nodes[self._next("n")] = ModelNode("cpu", 4.0, [])

    @precondition(lambda self: len(self.nodes) < 8)
    @rule(pool=st.sampled_from(["gpu", "cpu"]), gpus=st.sampled_from([0, 2, 4]), cpus=st.sampled_from([2.0, 4.0, 8.0]))
    def node_join(self, pool: str, gpus: int, cpus: float) -> None:
        self.nodes[self._next("n")] = ModelNode(pool, cpus, list(range(gpus)))

    @precondition(lambda self: len(self.nodes) > 3)
    @rule(data=st.data())
    def node_leave(self, data: st.DataObject) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.nodes)))
        for job in self.jobs.values():
            if any(p.node_id == node_id for p in job.parts):
                self._requeue(job)  # node lost: the whole gang comes down, queued again
        del self.nodes[node_id]

    @precondition(lambda self: sum(n.schedulable for n in self.nodes.values()) > 3)
    @rule(data=st.data())
    def node_drain(self, data: st.DataObject) -> None:
        self.nodes[data.draw(st.sampled_from(sorted(self.nodes)))].schedulable = False

    @rule(
        pool=st.sampled_from(["gpu", "cpu", "gpu"]), nodes=st.sampled_from([1, 1, 2, 3]),
        gpus=st.sampled_from([0, 1, 2, 4]), cpus=st.sampled_from([0.5, 1.0, 2.0]),
        priority=st.sampled_from([250, 250, 500, 750, 1000]), preemptible=st.booleans(),
        wall_s=st.sampled_from([60.0, 600.0, 3600.0, 86400.0]),
        sweep=st.sampled_from([None, None, "s1", "s2"]), workspace=st.sampled_from(["team-a", "team-b"]),
        copies=st.integers(1, 4),
    )  # fmt: skip
    def submit(self, pool: str, nodes: int, gpus: int, cpus: float, priority: int, preemptible: bool,
               wall_s: float, sweep: str | None, workspace: str, copies: int) -> None:  # fmt: skip
        for _ in range(copies):
            job_id = self._next("j")
            view = JobView(id=job_id, pool=pool, priority=priority, seq=self.counter, workspace=workspace,
                           nodes=nodes, cpus=cpus, gpus=gpus if pool == "gpu" else 0, max_wall_clock_s=wall_s,
                           preemptible=preemptible, sweep_id=sweep, submitted_s=self.now_s)  # fmt: skip
            self.jobs[job_id] = ModelJob(view)

    @rule(gpus=st.sampled_from([1, 2]))
    def fill_with_spot_work(self, gpus: int) -> None:
        """Preemptible low-priority work taking every free GPU: what high-priority work may evict."""
        self.submit("gpu", 1, gpus, 1.0, 250, True, 86400.0, None, "team-b", 12 // gpus)
        self.tick(0.0)

    @rule(gpus=st.sampled_from([2, 4]), nodes=st.sampled_from([1, 2]))
    def submit_urgent(self, gpus: int, nodes: int) -> None:
        """High-priority work arriving on a busy cluster: what preemption is for."""
        self.submit("gpu", nodes, gpus, 1.0, 1000, False, 600.0, None, "team-b", 1)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job = self.jobs[data.draw(st.sampled_from(sorted(self.jobs)))]
        if job.state not in TERMINAL:
            self._end(job, "cancelled")

    @precondition(lambda self: any(j.state == "running" for j in self.jobs.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["succeeded", "failed"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        running = sorted(job_id for job_id, j in self.jobs.items() if j.state == "running")
        self._end(self.jobs[data.draw(st.sampled_from(running))], outcome)

    @precondition(lambda self: any(j.stopping_until_s is not None for j in self.jobs.values()))
    @rule()
    def preempted_jobs_exit(self) -> None:
        for job in self.jobs.values():
            if job.stopping_until_s is not None:
                self._requeue(job)

    @rule(elapsed_s=st.sampled_from([0.0, 20.0, 300.0, 3600.0]))
    def tick(self, elapsed_s: float) -> None:
        self.now_s += elapsed_s
        self._expire()
        snapshot = self._snapshot()
        result = plan(snapshot)
        check_plan(snapshot, result)
        assert result == plan_without_shortcut(snapshot), "the saturated-tail shortcut changed the plan"
        for placement_ in result.placements:
            job = self.jobs[placement_.job_id]
            assert job.state == "queued", "placed a job that is not queued"
            job.state, job.started_s = "running", self.now_s
            job.parts = [RunningPart(p.node_id, p.cpus, p.gpus) for p in placement_.parts]
        for job_id, attempt in result.preemptions:
            job = self.jobs[job_id]
            assert job.state == "running" and job.attempt == attempt and job.stopping_until_s is None
            job.stopping_until_s = self.now_s + PREEMPTION_GRACE_S

    def _expire(self) -> None:
        for job in self.jobs.values():
            if job.stopping_until_s is not None and job.stopping_until_s <= self.now_s:
                self._requeue(job)
            elif job.state == "running" and job.started_s + job.view.max_wall_clock_s <= self.now_s:
                self._end(job, "failed")  # wall clock

    def _end(self, job: ModelJob, state: str) -> None:
        self._charge_usage(job)
        job.state, job.parts, job.stopping_until_s = state, [], None
        self.terminal[job.view.id] = state

    def _requeue(self, job: ModelJob) -> None:
        self._charge_usage(job)
        job.state, job.parts, job.stopping_until_s = "queued", [], None
        job.attempt += 1

    def _charge_usage(self, job: ModelJob) -> None:
        if job.state == "running":
            gpu_s = (self.now_s - job.started_s) * job.view.gpus * job.view.nodes
            self.usage[job.view.workspace] = self.usage.get(job.view.workspace, 0.0) + gpu_s

    def _snapshot(self) -> Snapshot:
        running = [j for j in self.jobs.values() if j.state == "running"]
        used: dict[str, tuple[float, set[int]]] = {n: (0.0, set()) for n in self.nodes}
        for job in running:
            for part in job.parts:
                cpus, gpus = used[part.node_id]
                used[part.node_id] = (cpus + part.cpus, gpus | set(part.gpus))
        nodes = [
            NodeView(id=n, pool=m.pool, address=n, cpus=m.cpus, gpus=list(m.gpus), free_cpus=m.cpus - used[n][0],
                     free_gpus=[g for g in m.gpus if g not in used[n][1]], schedulable=m.schedulable)
            for n, m in self.nodes.items()
        ]  # fmt: skip
        views = [
            RunningView(job_id=j.view.id, attempt=j.attempt, priority=j.view.priority, preemptible=j.view.preemptible,
                        node_ids=[p.node_id for p in j.parts], parts=list(j.parts),
                        stopping=j.stopping_until_s is not None,
                        expected_end_s=j.stopping_until_s or j.started_s + j.view.max_wall_clock_s)
            for j in running
        ]  # fmt: skip
        sweep_running: dict[str, int] = {}
        gpus_in_use: dict[str, int] = {}
        for j in running:
            if j.view.sweep_id:
                sweep_running[j.view.sweep_id] = sweep_running.get(j.view.sweep_id, 0) + 1
            gpus_in_use[j.view.workspace] = gpus_in_use.get(j.view.workspace, 0) + j.view.gpus * j.view.nodes
        return Snapshot(
            nodes=nodes, queued=[j.view for j in self.jobs.values() if j.state == "queued"], running=views,
            now_s=self.now_s, workspace_usage=dict(self.usage), sweep_max_concurrency=SWEEP_LIMITS,
            sweep_running=sweep_running, workspace_gpu_quota=GPU_QUOTAS, workspace_gpus_in_use=gpus_in_use,
        )  # fmt: skip

    @invariant()
    def no_gpu_or_cpu_slot_given_twice(self) -> None:
        for node_id, node in self.nodes.items():
            parts = [p for j in self.jobs.values() if j.state == "running" for p in j.parts if p.node_id == node_id]
            gpus = [g for p in parts for g in p.gpus]
            assert len(gpus) == len(set(gpus)) and set(gpus) <= set(node.gpus)
            assert sum(p.cpus for p in parts) <= node.cpus + EPSILON

    @invariant()
    def one_attempt_per_job_and_gangs_whole(self) -> None:
        for job in self.jobs.values():
            if job.state == "running":
                assert len({p.node_id for p in job.parts}) == len(job.parts) == job.view.nodes
            else:
                assert job.parts == []

    @invariant()
    def terminal_states_stay_terminal(self) -> None:
        for job_id, state in self.terminal.items():
            assert self.jobs[job_id].state == state


ClusterMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestClusterMachine = ClusterMachine.TestCase


# Bigger one-shot snapshots: the checker and the shortcut's equivalence on queues of many shapes.

_node_views = st.builds(
    lambda i, pool, gpus, cpus, used_gpus, schedulable: NodeView(
        id=f"n{i}", pool=pool, address="x", cpus=cpus, gpus=list(range(gpus)), free_cpus=cpus - min(cpus, used_gpus),
        free_gpus=list(range(min(used_gpus, gpus), gpus)), schedulable=schedulable,
    ),
    st.integers(0, 10**6), st.sampled_from(["gpu", "cpu"]), st.sampled_from([0, 4, 8]),
    st.sampled_from([4.0, 16.0]), st.integers(0, 8), st.sampled_from([True, True, True, False]),
)  # fmt: skip


_shapes = st.tuples(
    st.sampled_from(["gpu", "cpu"]), st.sampled_from([1, 1, 2, 3]), st.sampled_from([0, 1, 4, 8]),
    st.sampled_from([1.0, 4.0]),
)  # fmt: skip


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    """A few nodes and up to 200 jobs of a few shapes: queues deep enough for the tail shortcut."""
    nodes = {n.id: n for n in draw(st.lists(_node_views, min_size=1, max_size=8))}
    shapes = draw(st.lists(_shapes, min_size=1, max_size=4))
    queued = []
    for i in range(draw(st.integers(1, 200))):
        pool, gang, gpus, cpus = draw(st.sampled_from(shapes))
        queued.append(JobView(
            id=f"q{i}", pool=pool, priority=draw(st.sampled_from([250, 500, 750])), seq=i, nodes=gang, gpus=gpus,
            cpus=cpus, max_wall_clock_s=draw(st.sampled_from([60.0, 3600.0])),
            sweep_id=draw(st.sampled_from([None, "s1"])), workspace=draw(st.sampled_from(["team-a", "team-b"])),
            submitted_s=draw(st.floats(0, 20_000)),
        ))  # fmt: skip
    return Snapshot(
        nodes=list(nodes.values()), queued=queued, now_s=20_000.0, sweep_max_concurrency=SWEEP_LIMITS,
        sweep_running={"s1": draw(st.integers(0, 3))}, workspace_gpu_quota=GPU_QUOTAS,
        workspace_gpus_in_use={"team-a": draw(st.integers(0, 8))}, workspace_usage={"team-a": draw(st.floats(0, 100))},
    )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(snapshots())
def test_large_queues_keep_every_invariant_and_the_shortcut_changes_nothing(snapshot: Snapshot) -> None:
    result = plan(snapshot)
    check_plan(snapshot, result)
    assert result == plan_without_shortcut(snapshot)
