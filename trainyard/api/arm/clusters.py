"""Batch AI clusters under /arm: each one a trainyard pool, sized and set up by its create body.

- PUT creates (or replaces) the cluster and answers 200 with `provisioningState: succeeded` at once
  (trainyard provisions nothing; the pool's nodes come as its provider starts them), so both SDK
  pollers finish on the first answer. The body goes through `batchai_cluster_to_pool`:
  `scaleSettings.manual` → a fixed size whose `nodeDeallocationOption` is what shrinking does
  (requeue → jobs requeued, terminate → cancelled, waitforjobcompletion → nodes drained);
  `scaleSettings.autoScale` → autoscaled between min and max; `vmSize` → slots and GPUs per node
  (sizes.py); `nodeSetup` → the pool's setup task and volumes. Each `nodeSetup.mountVolumes` entry
  takes its storage from a registered volume of the workspace named like its share, container or
  relativeMountPath, and `fileServers` entries from the file server's volume. Bad bodies are
  CloudError 400 whose target is the field (`properties.scaleSettings.manual.targetNodeCount`).
- PATCH changes `scaleSettings` only; DELETE scales the pool to 0 (running jobs cancelled) and
  forgets the cluster; the pool row stays, with no setup task.
- GET derives the answer from the pool and its registered nodes: `scaleSettings` from the pool's
  current size, `currentNodeCount` and `nodeStateCounts` from its nodes (lost and removed ones are
  not counted), `allocationState` resizing while the count differs from what the size asks,
  `errors` one per unusable node (its setup task failed).

The pool is named `<workspace>.<cluster>` (db.arm_clusters.pool_name). Creating, updating and
deleting clusters needs an admin token (pools are the operator's); reading needs a viewer's.
"""

from __future__ import annotations

import copy
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainyard.api.arm.common import (
    NAME_PATTERN,
    WORKSPACE_PATH,
    CloudError,
    PageRequest,
    WorkspaceIds,
    api_version,
    arm_time,
    bad_request,
    conflict,
    list_result,
    not_found,
    page_request,
    resource_id,
    resource_type,
    workspace_ids,
    workspace_in,
)
from trainyard.api.arm.operations import GONE_NODE_STATES, MAX_CLUSTERS, vm_sizes
from trainyard.api.arm.sizes import VmSize
from trainyard.api.auth import Principal, require
from trainyard.api.pools import OTHER_SETTINGS, PoolScale, PoolSetup, PoolVolumes
from trainyard.batchai_cluster import PoolTranslation, batchai_cluster_to_pool
from trainyard.config import secret
from trainyard.crypto import encrypt_secrets
from trainyard.db.arm_clusters import ArmCluster, ArmFileServer, cluster_of_pool, empty_pool, pool_name
from trainyard.db.models import ArmWorkspace, Event, Job, Node, Part, Pool, Volume, utcnow
from trainyard.spec import JobState, NodeState, SpecError

router = APIRouter()

CLUSTER_TYPE = resource_type("clusters")
DEALLOCATION_OPTION = {"requeue": "requeue", "terminate": "terminate", "wait": "waitforjobcompletion"}
# Fields of the create body echoed by GET (secrets and passwords left out); the rest is derived.
ECHOED = ("virtualMachineConfiguration", "nodeSetup", "userAccountSettings", "subnet")
_HINT = re.compile(r": pass --volume KEY=TARGET.*$", re.DOTALL)
UNKNOWN_FIELD = "not a field of Batch AI"
DEMAND_STATES = tuple(state.value for state in JobState if not state.is_terminal())
COUNTED_STATES = {"idle", "running", "preparing", "unusable", "leaving"}


ClusterName = Path(pattern=NAME_PATTERN, min_length=1, max_length=64, description="the cluster's name")


# ---- what a cluster's nodes are doing ------------------------------------------------------------


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


def _render(session: Session, ids: WorkspaceIds, cluster: ArmCluster) -> dict[str, Any]:
    nodes = pool_nodes(session, [cluster.pool])
    return cluster_body(ids, cluster, session.get(Pool, cluster.pool), nodes[cluster.pool])


# ---- reading a create body -----------------------------------------------------------------------


def _refused(problems: list[dict[str, str]], workspace: str) -> CloudError:
    hint = (f": register a volume of that name (the share, container or relativeMountPath) in workspace "
            f"{workspace} (POST /v1/volumes, `trainyard volume create`), or mount a file server of it")  # fmt: skip
    details = []
    for problem in problems:
        where = problem["field"].strip("()")
        target = "properties" if where in ("", "properties", "file") else f"properties.{where}"
        details.append({"code": "InvalidParameter", "target": target,
                        "message": _HINT.sub(hint, problem["reason"])})  # fmt: skip
    message = "; ".join(f"{d['target']}: {d['message']}" for d in details)
    return CloudError(400, "InvalidParameter", message, details[0]["target"], details)


def _properties(body: dict[str, Any]) -> dict[str, Any]:
    props = body.get("properties")
    if not isinstance(props, dict):
        raise bad_request("properties: required, a JSON object", "properties")
    return props


def _volume_target(volume: Volume) -> str | None:
    """A registered volume as the translation takes a mount's storage (batchai.parse_volume_target)."""
    definition = volume.definition or {}
    if volume.kind == "host" and definition.get("path"):
        return f"host:{definition['path']}"
    if volume.kind in ("blob", "sync") and definition.get("uri"):
        return f"{volume.kind}:{definition['uri']}"
    return None


def _file_server_path(session: Session, workspace: str, item: dict[str, Any]) -> str | None:
    """The host path a `fileServers` mount entry reads: its file server's volume, at sourceDirectory."""
    ref = item.get("fileServer")
    server_id = str(ref.get("id") or "") if isinstance(ref, dict) else ""
    match = re.search(r"/workspaces/([^/]+)/fileservers/([^/]+)/?$", server_id, re.IGNORECASE)
    if match is None or match.group(1) != workspace:
        return None  # a file server of another workspace is not this workspace's to mount
    server = session.get(ArmFileServer, (workspace, match.group(2)))
    volume = session.get(Volume, (workspace, server.volume)) if server is not None else None
    if volume is None or volume.kind != "host" or not (volume.definition or {}).get("path"):
        return None
    root = str(volume.definition["path"]).rstrip("/") or "/"
    source = str(item.get("sourceDirectory") or "").strip()
    if not source or source.rstrip("/") == root:
        return root
    inner = source[len(root) :] if source.startswith(root + "/") else source
    return f"{root.rstrip('/')}/{inner.strip('/')}"


def mount_targets(session: Session, workspace: str, props: dict[str, Any]) -> dict[str, str]:
    """Storage for each of nodeSetup.mountVolumes: the workspace's volumes by name, file servers by mount path."""
    mapping: dict[str, str] = {}
    for volume in session.scalars(select(Volume).where(Volume.workspace == workspace)):
        target = _volume_target(volume)
        if target is not None:
            mapping[volume.name] = target
    setup = props.get("nodeSetup")
    mounts = setup.get("mountVolumes") if isinstance(setup, dict) else None
    servers = mounts.get("fileServers") if isinstance(mounts, dict) else None
    for item in servers if isinstance(servers, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("relativeMountPath"), str):
            continue
        rel = "/".join(p for p in item["relativeMountPath"].strip().split("/") if p and p != ".")
        path = _file_server_path(session, workspace, item)
        if path is not None and rel:
            mapping[rel] = f"host:{path}"
        else:
            mapping.pop(rel, None)  # a volume named like the mount path is not the file server it names
    return mapping


def _translate(props: dict[str, Any], pool: str, size: VmSize, mapping: dict[str, str],
               provider: str, workspace: str) -> PoolTranslation:  # fmt: skip
    try:
        translation, warnings = batchai_cluster_to_pool(
            {"properties": props}, name=pool, volumes=mapping, gpus=size.gpus, slots=size.cpus, provider=provider
        )
    except SpecError as exc:
        raise _refused(exc.problems + _unknown_fields(exc.warnings), workspace) from None
    if unknown := _unknown_fields(warnings):  # a file's unknown fields are warned about; a request's refused
        raise _refused(unknown, workspace)
    return translation


def _unknown_fields(warnings: list[str]) -> list[dict[str, str]]:
    return [{"field": text.split(": ", 1)[0], "reason": text.split(": ", 1)[1]}
            for text in warnings if UNKNOWN_FIELD in text and ": " in text]  # fmt: skip


def _size(request: Request, props: dict[str, Any]) -> VmSize:
    name = props.get("vmSize")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("properties.vmSize: required, the name of a VM size", "properties.vmSize")
    sizes = vm_sizes(request)
    size = sizes.get(name)
    if size is None:
        known = ", ".join(sizes.names())
        raise bad_request(f"properties.vmSize: {name!r} is not a size this deployment knows ({known}); "
                          "TRAINYARD_ARM_VM_SIZES adds sizes", "properties.vmSize")  # fmt: skip
    return size


def public_properties(props: dict[str, Any]) -> dict[str, Any]:
    """What GET echoes of a create body: no password, no secret value, no storage key."""
    kept = copy.deepcopy({key: props[key] for key in (*ECHOED, "scaleSettings") if key in props})
    account = kept.get("userAccountSettings")
    if isinstance(account, dict):
        kept["userAccountSettings"] = {k: v for k, v in account.items() if k != "adminUserPassword"}
    setup = kept.get("nodeSetup")
    if isinstance(setup, dict):
        task = setup.get("setupTask")
        if isinstance(task, dict) and isinstance(task.get("secrets"), list):
            task["secrets"] = [{"name": s.get("name")} for s in task["secrets"] if isinstance(s, dict)]
        mounts = setup.get("mountVolumes")
        for items in mounts.values() if isinstance(mounts, dict) else []:
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict):
                    item.pop("credentials", None)
        counters = setup.get("performanceCountersSettings")
        reference = counters.get("appInsightsReference") if isinstance(counters, dict) else None
        if isinstance(reference, dict):
            reference.pop("instrumentationKey", None)
    return kept


# ---- writing the pool ----------------------------------------------------------------------------


def _scale(translation: PoolTranslation, kept: dict[str, Any]) -> PoolScale:
    assert translation.scale is not None
    values = {**translation.scale, **{k: v for k, v in kept.items() if k in ("idle_timeout_s", "image")}}
    try:
        return PoolScale.model_validate(values)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise bad_request(f"properties.scaleSettings: {message}", "properties.scaleSettings") from None


def _setup(request: Request, translation: PoolTranslation) -> dict[str, Any] | None:
    if translation.setup is None:
        return None
    where = "properties.nodeSetup.setupTask"
    try:
        task = PoolSetup.model_validate(translation.setup)
    except ValidationError as exc:
        raise bad_request(f"{where}: {exc.errors()[0]['msg']}", where) from None
    stored: dict[str, Any] = {"command": task.command, "env": task.env, "timeout_s": task.timeout_s,
                              "secrets": dict.fromkeys(task.secrets, "***")}  # fmt: skip
    if task.secrets:
        key = secret(request.app.state.settings.secret_key)
        if not key:
            raise bad_request(f"{where}.secrets: the server has no TRAINYARD_SECRET_KEY to keep secrets",
                              f"{where}.secrets")  # fmt: skip
        stored["secrets_enc"] = encrypt_secrets(task.secrets, key)
    return stored


def _volumes(translation: PoolTranslation) -> list[dict[str, Any]]:
    try:
        checked = PoolVolumes.model_validate({"volumes": translation.volumes})
    except ValidationError as exc:
        where = "properties.nodeSetup.mountVolumes"
        raise bad_request(f"{where}: {exc.errors()[0]['msg']}", where) from None
    return [v.model_dump(mode="json", exclude_none=True) for v in checked.volumes]


def _size_pool(pool: Pool, scale: PoolScale, lowpriority: bool) -> None:
    kept = {k: v for k, v in (pool.settings or {}).items() if k in OTHER_SETTINGS}
    settings = scale.model_dump(exclude={"min_nodes", "max_nodes"})
    if lowpriority:
        settings["preemptible"] = True  # read by /arm jobs: Batch AI's low-priority VMs could be taken away
    pool.min_nodes, pool.max_nodes, pool.settings = scale.min_nodes, scale.max_nodes, {**kept, **settings}


@dataclass
class _Prepared:
    """A create body read and checked, before anything is stored."""

    props: dict[str, Any]
    size: VmSize
    priority: str
    scale: PoolScale
    setup: dict[str, Any] | None
    volumes: list[dict[str, Any]]


def _prepare(request: Request, session: Session, body: dict[str, Any], ids: WorkspaceIds, pool: str) -> _Prepared:
    props = _properties(body)
    size = _size(request, props)
    if props.get("scaleSettings") is None:  # Batch AI's default: a manual cluster of no nodes
        props = {**props, "scaleSettings": {"manual": {"targetNodeCount": 0}}}
    existing = session.get(Pool, pool)
    kept = dict(existing.settings or {}) if existing is not None else {}
    translation = _translate(props, pool, size, mount_targets(session, ids.workspace, props),
                             str(kept.get("provider") or "local"), ids.workspace)  # fmt: skip
    priority = str(props.get("vmPriority") or "dedicated").strip().lower()
    return _Prepared(props, size, priority, _scale(translation, kept), _setup(request, translation),
                     _volumes(translation))  # fmt: skip


# ---- routes --------------------------------------------------------------------------------------


@router.put(WORKSPACE_PATH + "/clusters/{cluster_name}", summary="Create a cluster (a trainyard pool)")
def create_cluster(
    request: Request,
    cluster_name: str = ClusterName,
    body: dict[str, Any] = Body(...),
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("admin"),
) -> Any:
    try:
        return _create(request, cluster_name, body, ids, who)
    except IntegrityError:  # a concurrent PUT of the same cluster won the key: replace what it made
        return _create(request, cluster_name, body, ids, who)


def _create(request: Request, cluster_name: str, body: dict[str, Any], ids: WorkspaceIds, who: Principal) -> Any:
    with request.app.state.sessions.begin() as session:
        workspace_in(session, who, ids)
        cluster = session.get(ArmCluster, (ids.workspace, cluster_name))
        pool_id = cluster.pool if cluster is not None else pool_name(ids.workspace, cluster_name)
        owner = cluster_of_pool(session, pool_id) if cluster is None else cluster
        if owner is not None and (owner.workspace, owner.name) != (ids.workspace, cluster_name):
            raise conflict(f"pool {pool_id} already belongs to cluster {owner.workspace}/{owner.name}", "name")
        if cluster is None and _cluster_count(session, ids) >= MAX_CLUSTERS:
            raise conflict(f"the subscription has {MAX_CLUSTERS} clusters already", "name")
        prepared = _prepare(request, session, body, ids, pool_id)
        pool = session.get(Pool, pool_id) or Pool(name=pool_id, min_nodes=0, max_nodes=None, settings={})
        session.add(pool)
        _size_pool(pool, prepared.scale, prepared.priority == "lowpriority")
        settings = {k: v for k, v in pool.settings.items() if k not in OTHER_SETTINGS}
        if prepared.setup is not None:
            settings["setup"] = prepared.setup
        if prepared.volumes:
            settings["volumes"] = prepared.volumes
        pool.settings = settings
        now = utcnow()
        if cluster is None:
            cluster = ArmCluster(workspace=ids.workspace, name=cluster_name, pool=pool_id, created_at=now)
            session.add(cluster)
        # As the client spelled it (sizes match case-insensitively), as Azure echoed it.
        cluster.vm_size, cluster.vm_priority = str(prepared.props["vmSize"]).strip(), prepared.priority
        cluster.properties, cluster.scaled_at = public_properties(prepared.props), now
        session.add(Event(at=now, kind="arm_cluster_created", actor=who.name,
                          detail={"workspace": ids.workspace, "cluster": cluster_name, "pool": pool_id,
                                  "vm_size": cluster.vm_size, "min_nodes": pool.min_nodes,
                                  "max_nodes": pool.max_nodes}))  # fmt: skip
        session.flush()
        return _render(session, ids, cluster)


def _cluster_count(session: Session, ids: WorkspaceIds) -> int:
    query = (
        select(func.count())
        .select_from(ArmCluster)
        .join(ArmWorkspace, ArmWorkspace.name == ArmCluster.workspace)
        .where(func.lower(ArmWorkspace.subscription_id) == ids.subscription_id.lower())
    )
    return int(session.scalar(query) or 0)


def _cluster(session: Session, who: Principal, ids: WorkspaceIds, name: str) -> ArmCluster:
    workspace_in(session, who, ids)
    cluster = session.get(ArmCluster, (ids.workspace, name))
    if cluster is None:
        raise not_found("cluster", name)
    return cluster


@router.patch(WORKSPACE_PATH + "/clusters/{cluster_name}", summary="Change a cluster's scale settings")
def update_cluster(
    request: Request,
    cluster_name: str = ClusterName,
    body: dict[str, Any] = Body(...),
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("admin"),
) -> Any:
    props = _properties(body)
    unknown = sorted(set(props) - {"scaleSettings"})
    if unknown:
        raise bad_request(f"properties.{unknown[0]}: a cluster's update changes scaleSettings only",
                          f"properties.{unknown[0]}")  # fmt: skip
    with request.app.state.sessions.begin() as session:
        cluster = _cluster(session, who, ids, cluster_name)
        if props.get("scaleSettings") is None:
            return _render(session, ids, cluster)
        pool = session.get(Pool, cluster.pool) or Pool(name=cluster.pool, min_nodes=0, max_nodes=None, settings={})
        session.add(pool)
        size = vm_sizes(request).get(cluster.vm_size) or VmSize(cluster.vm_size, 2, 0, 0, "Other")
        kept = dict(pool.settings or {})
        translation = _translate({"scaleSettings": props["scaleSettings"]}, cluster.pool, size, {},
                                 str(kept.get("provider") or "local"), ids.workspace)  # fmt: skip
        _size_pool(pool, _scale(translation, kept), cluster.lowpriority)
        stored = dict(cluster.properties)
        stored["scaleSettings"] = copy.deepcopy(props["scaleSettings"])
        cluster.properties, cluster.scaled_at = stored, utcnow()
        session.add(Event(at=cluster.scaled_at, kind="arm_cluster_scaled", actor=who.name,
                          detail={"workspace": ids.workspace, "cluster": cluster_name, "pool": cluster.pool,
                                  "min_nodes": pool.min_nodes, "max_nodes": pool.max_nodes}))  # fmt: skip
        session.flush()
        return _render(session, ids, cluster)


@router.get(WORKSPACE_PATH + "/clusters/{cluster_name}", summary="A cluster, with its nodes counted by state")
def get_cluster(
    request: Request,
    cluster_name: str = ClusterName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        return _render(session, ids, _cluster(session, who, ids, cluster_name))


@router.delete(WORKSPACE_PATH + "/clusters/{cluster_name}", summary="Delete a cluster: its pool scales to 0")
def delete_cluster(
    request: Request,
    cluster_name: str = ClusterName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("admin"),
) -> Response:
    with request.app.state.sessions.begin() as session:
        workspace_in(session, who, ids)
        cluster = session.get(ArmCluster, (ids.workspace, cluster_name))
        if cluster is None:
            return Response(status_code=204)
        empty_pool(session, cluster.pool)
        session.delete(cluster)
        detail = {"workspace": ids.workspace, "cluster": cluster_name, "pool": cluster.pool}
        session.add(Event(at=utcnow(), kind="arm_cluster_deleted", actor=who.name, detail=detail))
    return Response(status_code=200)


@router.post(WORKSPACE_PATH + "/clusters/{cluster_name}/listRemoteLoginInformation",
             summary="The nodes of a cluster and the addresses their workers registered")  # fmt: skip
def list_remote_login_information(
    request: Request,
    cluster_name: str = ClusterName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        cluster = _cluster(session, who, ids, cluster_name)
        query = select(Node.id, Node.address).where(Node.pool == cluster.pool, Node.state.not_in(GONE_NODE_STATES))
        if page.after is not None:
            query = query.where(Node.id > page.after)
        nodes = list(session.execute(query.order_by(Node.id).limit(page.limit + 1)).tuples())
    # As for a job's nodes: the address each worker registered, and the SSH port Batch AI named (22).
    return list_result(request, page, nodes, lambda node: node[0],
                       lambda node: {"nodeId": node[0], "ipAddress": node[1], "port": 22})  # fmt: skip


@router.get(WORKSPACE_PATH + "/clusters", summary="The clusters of a workspace (paged: nextLink)")
def list_clusters(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        workspace_in(session, who, ids)
        query = select(ArmCluster).where(ArmCluster.workspace == ids.workspace).order_by(ArmCluster.name)
        if page.after is not None:
            query = query.where(ArmCluster.name > page.after)
        clusters = list(session.scalars(query.limit(page.limit + 1)))
        nodes = pool_nodes(session, [c.pool for c in clusters])
        pools = {p.name: p for p in session.scalars(select(Pool).where(Pool.name.in_([c.pool for c in clusters])))}
        return list_result(request, page, clusters, lambda c: c.name,
                           lambda c: cluster_body(ids, c, pools.get(c.pool), nodes[c.pool]))  # fmt: skip


__all__ = ["cluster_body", "mount_targets", "pool_nodes", "router", "scale_settings"]
