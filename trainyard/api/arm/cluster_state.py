"""What a Batch AI cluster's pool is doing, as Batch AI reported a cluster: the GET body of /arm clusters.

Counted from the pool's registered nodes: idle (up, no work), running (up, with work), preparing (its
setup task runs), unusable (the task failed: one `errors` entry each), leaving (draining, stopping);
lost and removed nodes are not counted. `scaleSettings` is the pool's current size (a pool scaled
through /v1 shows that), `allocationState` resizing while the count is not what that size asks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trainyard.api.arm.common import WorkspaceIds, arm_time, resource_id, resource_type
from trainyard.db.arm_clusters import ArmCluster
from trainyard.db.models import Job, Node, Part, Pool
from trainyard.spec import JobState, NodeState

CLUSTER_TYPE = resource_type("clusters")
DEALLOCATION_OPTION = {"requeue": "requeue", "terminate": "terminate", "wait": "waitforjobcompletion"}
# Fields of the create body echoed by GET (secrets and passwords left out); the rest is derived.
ECHOED = ("virtualMachineConfiguration", "nodeSetup", "userAccountSettings", "subnet")
DEMAND_STATES = tuple(state.value for state in JobState if not state.is_terminal())
COUNTED_STATES = {"idle", "running", "preparing", "unusable", "leaving"}


@dataclass
class PoolNodes:
    """A pool's registered nodes as Batch AI counted a cluster's."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(sorted(COUNTED_STATES), 0))
    errors: list[dict[str, Any]] = field(default_factory=list)
    demand: Demand = field(default_factory=lambda: Demand())

    @property
    def current(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Demand:
    """What a pool's queued and running jobs ask for, as the autoscaler sizes it (scheduler/autoscale.py)."""

    cpus: float = 0.0
    gpus: int = 0
    largest_gang: int = 0

    def nodes(self, settings: dict[str, Any]) -> int:
        slots, gpus = max(1, int(settings.get("slots_per_node", 2))), int(settings.get("gpus_per_node", 0))
        by_cpus = math.ceil(self.cpus / slots - 1e-9) if self.cpus > 0 else 0
        by_gpus = math.ceil(self.gpus / gpus) if gpus and self.gpus else 0
        return max(by_cpus, by_gpus, self.largest_gang)


def _demands(session: Session, pools: list[str]) -> dict[str, Demand]:
    rows = session.execute(
        select(Job.pool, func.sum(Job.nodes * Job.cpus), func.sum(Job.nodes * Job.gpus), func.max(Job.nodes))
        .where(Job.pool.in_(pools), Job.state.in_(DEMAND_STATES), Job.cancel_requested.is_(False),
               Job.waiting_on == 0)
        .group_by(Job.pool)
    )  # fmt: skip
    return {pool: Demand(float(cpus or 0), int(gpus or 0), int(gang or 0)) for pool, cpus, gpus, gang in rows}


def pool_nodes(session: Session, pools: list[str]) -> dict[str, PoolNodes]:
    """Per pool: idle (up, no work), running (up, with work), preparing, unusable, leaving (draining,
    stopping). Lost nodes are gone (their jobs requeued; a replacement comes) and removed ones left."""
    found: dict[str, PoolNodes] = defaultdict(PoolNodes)
    if not pools:
        return found
    for pool, demand in _demands(session, pools).items():
        found[pool].demand = demand
    busy = set(session.scalars(
        select(Part.node_id).join(Node, Node.id == Part.node_id).where(Part.active.is_(True), Node.pool.in_(pools))
    ))  # fmt: skip
    rows = session.execute(
        select(Node.id, Node.pool, Node.state, Node.state_detail).where(Node.pool.in_(pools)).order_by(Node.id)
    )
    for node_id, pool, state, detail in rows:
        if state == NodeState.UP:
            state = "running" if node_id in busy else "idle"
        elif state in (NodeState.DRAINING, NodeState.STOPPING):
            state = "leaving"
        if state not in COUNTED_STATES:
            continue
        found[pool].counts[state] += 1
        if state == NodeState.UNUSABLE:
            found[pool].errors.append({
                "code": "NodeSetupFailed",
                "message": detail or f"the setup task of node {node_id} failed (trainyard node logs {node_id})",
                "details": [{"name": "nodeId", "value": node_id}],
            })  # fmt: skip
    return found


def scale_settings(pool: Pool | None, stored: dict[str, Any]) -> dict[str, Any]:
    """The cluster's scaleSettings as its pool is sized now (a pool scaled through /v1 shows that size)."""
    settings = dict(pool.settings or {}) if pool is not None else {}
    if settings.get("autoscale"):
        initial = ((stored.get("scaleSettings") or {}).get("autoScale") or {}).get("initialNodeCount") or 0
        assert pool is not None
        return {"autoScale": {"minimumNodeCount": pool.min_nodes, "maximumNodeCount": pool.max_nodes or 0,
                              "initialNodeCount": initial}}  # fmt: skip
    option = DEALLOCATION_OPTION.get(str(settings.get("deallocation", "requeue")), "requeue")
    return {"manual": {"targetNodeCount": int(settings.get("target") or 0), "nodeDeallocationOption": option}}


def _allocation(scale: dict[str, Any], nodes: PoolNodes, settings: dict[str, Any]) -> str:
    """resizing while nodes leave, or the count is not what the size asks: the manual target; for autoscale,
    within the bounds and not below what the queued and running jobs need (idle nodes above it are
    removed only after the pool's idle timeout, and show as leaving then)."""
    current = nodes.current
    if nodes.counts["leaving"]:
        return "resizing"
    if "manual" in scale:
        return "steady" if current == scale["manual"]["targetNodeCount"] else "resizing"
    low, high = scale["autoScale"]["minimumNodeCount"], scale["autoScale"]["maximumNodeCount"]
    wanted = max(low, min(high, nodes.demand.nodes(settings)))
    return "steady" if low <= current <= high and current >= wanted else "resizing"


def cluster_body(ids: WorkspaceIds, cluster: ArmCluster, pool: Pool | None, nodes: PoolNodes) -> dict[str, Any]:
    scale = scale_settings(pool, cluster.properties)
    props: dict[str, Any] = {"vmSize": cluster.vm_size, "vmPriority": cluster.vm_priority, "scaleSettings": scale}
    props.update({key: cluster.properties[key] for key in ECHOED if cluster.properties.get(key) is not None})
    props.update({
        "creationTime": arm_time(cluster.created_at),
        "provisioningState": "succeeded",
        "provisioningStateTransitionTime": arm_time(cluster.created_at),
        "allocationState": _allocation(scale, nodes, dict(pool.settings or {}) if pool is not None else {}),
        "allocationStateTransitionTime": arm_time(cluster.scaled_at),
        "errors": nodes.errors or None,
        "currentNodeCount": nodes.current,
        "nodeStateCounts": {f"{state}NodeCount": count for state, count in nodes.counts.items()},
    })  # fmt: skip
    body: dict[str, Any] = {"id": resource_id(ids, ("clusters", cluster.name)), "name": cluster.name,
                            "type": CLUSTER_TYPE}  # fmt: skip
    body["properties"] = {key: value for key, value in props.items() if value is not None}
    return body


def render(session: Session, ids: WorkspaceIds, cluster: ArmCluster) -> dict[str, Any]:
    nodes = pool_nodes(session, [cluster.pool])
    return cluster_body(ids, cluster, session.get(Pool, cluster.pool), nodes[cluster.pool])
