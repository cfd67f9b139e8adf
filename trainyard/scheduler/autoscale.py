"""The autoscaler: the leading scheduler sizes each scaled pool by its queued + running demand.

A pool with scale settings (`PUT /v1/pools/{name}`) has a manual `target`, or autoscales between
`min_nodes` and `max_nodes`. Demand, in nodes, is ceil(requested CPUs / slots per node) (and the
same for GPUs), at least the largest gang. Scale-up asks the pool's provider for nodes; scale-down
removes nodes idle longer than `idle_timeout_s`, and when busy nodes exceed the bound, applies the
pool's `deallocation`: `requeue` ends their attempts as preempted (requeued), `terminate` as
cancelled, `wait` drains them and removes each once its work has finished. A node is marked
`removed` in the database before its provider stops it, so it is never taken for lost.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trainyard.db.models import Event, Job, Node, Part, Pool, utcnow
from trainyard.scheduler import outcomes
from trainyard.scheduler.outcomes import Effects
from trainyard.scheduler.providers import NodeProvider, make_provider
from trainyard.spec import JobState, NodeState

log = logging.getLogger(__name__)

PERIOD_S = 2.0
START_TIMEOUT_S = 90.0  # a started node that has not registered by then is stopped again
DEMAND_STATES = tuple(state.value for state in JobState if not state.is_terminal())
REMOVED = NodeState.REMOVED.value
DEALLOCATION_REASONS = {"requeue": "preempted", "terminate": "cancelled"}


@dataclass(frozen=True)
class ScaleSettings:
    """A pool's scale settings, as stored in its row."""

    name: str
    min_nodes: int
    max_nodes: int
    target: int | None
    autoscale: bool
    idle_timeout_s: float
    deallocation: str
    provider: str
    slots_per_node: int
    gpus_per_node: int

    @classmethod
    def of(cls, pool: Pool) -> ScaleSettings | None:
        settings = dict(pool.settings or {})
        if not settings.get("autoscale") and settings.get("target") is None:
            return None  # a pool without scale settings: its nodes are managed by hand
        return cls(
            name=pool.name, min_nodes=pool.min_nodes, max_nodes=pool.max_nodes or 0,
            target=settings.get("target"), autoscale=bool(settings.get("autoscale")),
            idle_timeout_s=float(settings.get("idle_timeout_s", 300.0)),
            deallocation=str(settings.get("deallocation", "wait")), provider=str(settings.get("provider", "local")),
            slots_per_node=max(1, int(settings.get("slots_per_node", 2))),
            gpus_per_node=int(settings.get("gpus_per_node", 0)),
        )  # fmt: skip

    @property
    def upper(self) -> int:
        return self.max_nodes if self.autoscale or self.target is None else self.target

    def desired(self, demand: int) -> int:
        if not self.autoscale and self.target is not None:
            return self.target
        return max(self.min_nodes, min(self.max_nodes, demand))


@dataclass(frozen=True)
class Demand:
    cpus: float = 0.0
    gpus: int = 0
    largest_gang: int = 0

    def nodes(self, scale: ScaleSettings) -> int:
        by_cpus = math.ceil(self.cpus / scale.slots_per_node - 1e-9) if self.cpus > 0 else 0
        by_gpus = math.ceil(self.gpus / scale.gpus_per_node) if scale.gpus_per_node and self.gpus else 0
        return max(by_cpus, by_gpus, self.largest_gang)


def pool_demand(session: Session, pool: str) -> Demand:
    """Queued and running work of a pool's jobs (cancelled-but-not-yet-ended jobs and jobs waiting on
    dependencies do not count)."""
    rows = session.execute(
        select(Job.nodes, Job.cpus, Job.gpus).where(
            Job.pool == pool,
            Job.state.in_(DEMAND_STATES),
            Job.cancel_requested.is_(False),
            Job.waiting_on == 0,  # a job that waits on dependencies needs no node yet
        )
    ).all()
    cpus = sum(nodes * per_node for nodes, per_node, _ in rows)
    gpus = sum(nodes * per_node for nodes, _, per_node in rows)
    return Demand(cpus=float(cpus), gpus=int(gpus), largest_gang=max((n for n, _, _ in rows), default=0))


@dataclass
class Autoscaler:
    """Called once per scheduler tick; works every PERIOD_S."""

    providers: dict[str, NodeProvider] = field(default_factory=dict)
    provider_factory: Callable[[str], NodeProvider] = make_provider
    period_s: float = PERIOD_S
    _last_run: float = 0.0
    _idle_since: dict[str, float] = field(default_factory=dict)
    _starting: dict[str, float] = field(default_factory=dict)

    def provider(self, kind: str) -> NodeProvider:
        if kind not in self.providers:
            self.providers[kind] = self.provider_factory(kind)
        return self.providers[kind]

    def tick(self, sessions: sessionmaker[Session], after_commit: Callable[[Effects], None]) -> None:
        now = time.monotonic()
        if now - self._last_run < self.period_s:
            return
        self._last_run = now
        with sessions() as session:
            scales = [s for s in (ScaleSettings.of(p) for p in session.scalars(select(Pool))) if s is not None]
        for scale in scales:
            try:
                self.scale_pool(sessions, scale, after_commit)
            except Exception:  # one pool's provider failing must not stop the scheduler
                log.exception("autoscaling pool %s failed", scale.name)

    def scale_pool(
        self, sessions: sessionmaker[Session], scale: ScaleSettings, after_commit: Callable[[Effects], None]
    ) -> None:
        provider = self.provider(scale.provider)
        alive = {n.node_id for n in provider.list_nodes(scale.name)}
        effects = Effects()
        with sessions.begin() as session:
            nodes = {n.id: n for n in session.scalars(select(Node).where(Node.pool == scale.name))}
            busy = _busy_nodes(session, scale.name)
            desired = scale.desired(pool_demand(session, scale.name).nodes(scale))
            managed = self._managed(alive, nodes)
            unmanaged = [n for n in nodes.values() if n.id not in alive and n.state == NodeState.UP]
            taking = (NodeState.UP, NodeState.PREPARING)  # a preparing node will take work: start no other
            serving = [m for m in managed if nodes.get(m) is None or nodes[m].state in taking]
            surplus = len(serving) + len(unmanaged) - desired
            to_start = max(0, -surplus)
            removed = self._remove_drained(session, managed, nodes, busy)
            if surplus > 0:
                removed += self._remove_idle(session, scale, serving, nodes, busy, surplus)
                over = len(serving) + len(unmanaged) - len(removed) - scale.upper
                if over > 0:
                    removed += self._deallocate(session, scale, serving, nodes, busy, removed, over, effects)
            outcomes.record_notifications(session, effects, utcnow())
        after_commit(effects)
        for node_id in removed:
            log.info("pool %s: removing node %s", scale.name, node_id)
            provider.stop_node(node_id)
        for _ in range(to_start):
            self._start(provider, scale, nodes, alive)

    def _managed(self, alive: set[str], nodes: dict[str, Node]) -> list[str]:
        """Provider nodes not yet removed; starts that never registered are forgotten after a while."""
        now = time.monotonic()
        managed = []
        for node_id in sorted(alive):
            node = nodes.get(node_id)
            if node is not None and node.state == REMOVED:
                continue
            if node is None and now - self._starting.get(node_id, now) > START_TIMEOUT_S:
                continue
            managed.append(node_id)
        return managed

    def _remove_drained(
        self, session: Session, managed: list[str], nodes: dict[str, Node], busy: dict[str, int]
    ) -> list[str]:
        drained = [m for m in managed if m in nodes and nodes[m].state == NodeState.DRAINING and not busy.get(m)]
        for node_id in drained:
            _mark_removed(session, nodes[node_id], "drained")
        return drained

    def _remove_idle(
        self,
        session: Session,
        scale: ScaleSettings,
        serving: list[str],
        nodes: dict[str, Node],
        busy: dict[str, int],
        surplus: int,
    ) -> list[str]:
        now = time.monotonic()
        over_bound = len(serving) > scale.upper
        removed: list[str] = []
        for node_id in serving:
            node = nodes.get(node_id)
            if node is None or busy.get(node_id):
                self._idle_since.pop(node_id, None)
                continue
            since = self._idle_since.setdefault(node_id, now)
            if len(removed) < surplus and (over_bound or now - since >= scale.idle_timeout_s):
                _mark_removed(session, node, "idle")
                self._idle_since.pop(node_id, None)
                removed.append(node_id)
        return removed

    def _deallocate(
        self,
        session: Session,
        scale: ScaleSettings,
        serving: list[str],
        nodes: dict[str, Node],
        busy: dict[str, int],
        removed: list[str],
        over: int,
        effects: Effects,
    ) -> list[str]:
        """Busy nodes above the bound: requeue or terminate their work (and remove them), or drain them."""
        candidates = sorted((n for n in serving if n in nodes and n not in removed), key=lambda n: busy.get(n, 0))
        gone: list[str] = []
        for node_id in candidates[:over]:
            node = nodes[node_id]
            reason = DEALLOCATION_REASONS.get(scale.deallocation)
            if reason is None:
                node.state = NodeState.DRAINING.value
                session.add(Event(at=utcnow(), kind="drained", node_id=node_id, actor="autoscaler", detail={}))
                continue
            _end_attempts_on(session, node_id, reason, effects)
            _mark_removed(session, node, scale.deallocation)
            gone.append(node_id)
        return gone

    def _start(self, provider: NodeProvider, scale: ScaleSettings, nodes: dict[str, Node], alive: set[str]) -> None:
        node_id = _next_node_id(scale.name, set(alive) | {n for n, row in nodes.items() if row.state != REMOVED})
        alive.add(node_id)
        self._starting[node_id] = time.monotonic()
        log.info("pool %s: starting node %s (%s)", scale.name, node_id, provider.name)
        provider.start_node(scale.name, node_id, scale.slots_per_node, scale.gpus_per_node)


def _busy_nodes(session: Session, pool: str) -> dict[str, int]:
    busy: dict[str, int] = defaultdict(int)
    rows = session.execute(
        select(Part.node_id).join(Node, Node.id == Part.node_id).where(Node.pool == pool, Part.active.is_(True))
    ).scalars()
    for node_id in rows:
        busy[node_id] += 1
    return busy


def _end_attempts_on(session: Session, node_id: str, reason: str, effects: Effects) -> None:
    query = select(Part.job_id, Part.attempt).where(Part.node_id == node_id, Part.active.is_(True))
    attempts = set(session.execute(query))
    for job_id, attempt in sorted(attempts):
        outcomes.teardown_attempt(session, job_id, attempt, reason, utcnow(), effects)


def _mark_removed(session: Session, node: Node, why: str) -> None:
    node.state = REMOVED
    session.add(Event(at=utcnow(), kind="node_removed", node_id=node.id, actor="autoscaler", detail={"why": why}))


def _next_node_id(pool: str, taken: set[str]) -> str:
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", pool)
    number = 1
    while f"{prefix}-auto-{number}" in taken:
        number += 1
    return f"{prefix}-auto-{number}"


def describe(scale: ScaleSettings) -> dict[str, Any]:
    """For logs and tests: the settings as a plain dict."""
    return dict(scale.__dict__)
