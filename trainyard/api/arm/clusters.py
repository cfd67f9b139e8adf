"""Batch AI clusters under /arm: each one a trainyard pool, sized and set up by its create body.

- PUT creates (or replaces) the cluster and answers 200 with `provisioningState: succeeded` at once
  (trainyard provisions nothing; the pool's nodes come as its provider starts them), so both SDK
  pollers finish on the first answer. How the body becomes the pool's settings: cluster_bodies.py.
- PATCH changes `scaleSettings` only; DELETE scales the pool to 0 (running jobs cancelled) and
  forgets the cluster; the pool row stays, with no setup task.
- GET derives the answer from the pool and its registered nodes (cluster_state.py);
  listRemoteLoginInformation lists those nodes.

The pool is named `<workspace>.<cluster>` (db.arm_clusters.pool_name). Creating, updating and
deleting clusters needs an admin token (pools are the operator's); reading needs a viewer's.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trainyard.api.arm.cluster_bodies import (
    UNKNOWN_FIELD,
    body_properties,
    mount_targets,
    prepare,
    public_properties,
    scale_of,
    size_pool,
    translate,
)
from trainyard.api.arm.cluster_state import cluster_body, pool_nodes, render
from trainyard.api.arm.common import (
    NAME_PATTERN,
    NOTHING_DELETED,
    WORKSPACE_PATH,
    PageRequest,
    WorkspaceIds,
    api_version,
    bad_request,
    conflict,
    found_or_none,
    list_result,
    not_found,
    page_request,
    remote_login,
    workspace_ids,
    workspace_in,
)
from trainyard.api.arm.operations import GONE_NODE_STATES, MAX_CLUSTERS, vm_sizes
from trainyard.api.arm.sizes import VmSize
from trainyard.api.auth import Principal, require
from trainyard.api.pools import OTHER_SETTINGS
from trainyard.db.arm import page_after
from trainyard.db.arm_clusters import ArmCluster, cluster_of_pool, empty_pool, pool_name
from trainyard.db.models import ArmWorkspace, Event, Node, Pool, utcnow

router = APIRouter()

ClusterName = Path(pattern=NAME_PATTERN, min_length=1, max_length=64, description="the cluster's name")


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
        prepared = prepare(request, session, body, ids, pool_id)
        pool = session.get(Pool, pool_id) or Pool(name=pool_id, min_nodes=0, max_nodes=None, settings={})
        session.add(pool)
        size_pool(pool, prepared.scale, prepared.priority == "lowpriority")
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
        return render(session, ids, cluster)


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
    props = body_properties(body)
    unknown = sorted(set(props) - {"scaleSettings"})
    if unknown:
        raise bad_request(f"properties.{unknown[0]}: a cluster's update changes scaleSettings only",
                          f"properties.{unknown[0]}")  # fmt: skip
    with request.app.state.sessions.begin() as session:
        cluster = _cluster(session, who, ids, cluster_name)
        if props.get("scaleSettings") is None:
            return render(session, ids, cluster)
        pool = session.get(Pool, cluster.pool) or Pool(name=cluster.pool, min_nodes=0, max_nodes=None, settings={})
        session.add(pool)
        size = vm_sizes(request).get(cluster.vm_size) or VmSize(cluster.vm_size, 2, 0, 0, "Other")
        kept = dict(pool.settings or {})
        translation = translate({"scaleSettings": props["scaleSettings"]}, cluster.pool, size, {},
                                 str(kept.get("provider") or "local"), ids.workspace)  # fmt: skip
        size_pool(pool, scale_of(translation, kept), cluster.lowpriority)
        stored = dict(cluster.properties)
        stored["scaleSettings"] = copy.deepcopy(props["scaleSettings"])
        cluster.properties, cluster.scaled_at = stored, utcnow()
        session.add(Event(at=cluster.scaled_at, kind="arm_cluster_scaled", actor=who.name,
                          detail={"workspace": ids.workspace, "cluster": cluster_name, "pool": cluster.pool,
                                  "min_nodes": pool.min_nodes, "max_nodes": pool.max_nodes}))  # fmt: skip
        session.flush()
        return render(session, ids, cluster)


@router.get(WORKSPACE_PATH + "/clusters/{cluster_name}", summary="A cluster, with its nodes counted by state")
def get_cluster(
    request: Request,
    cluster_name: str = ClusterName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        return render(session, ids, _cluster(session, who, ids, cluster_name))


@router.delete(WORKSPACE_PATH + "/clusters/{cluster_name}", summary="Delete a cluster: its pool scales to 0")
def delete_cluster(
    request: Request,
    cluster_name: str = ClusterName,
    ids: WorkspaceIds = Depends(workspace_ids),
    _version: str = Depends(api_version),
    who: Principal = require("admin"),
) -> Response:
    with request.app.state.sessions.begin() as session:
        cluster = found_or_none(lambda: _cluster(session, who, ids, cluster_name))
        if cluster is None:
            return Response(status_code=NOTHING_DELETED)
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
        nodes = list(session.execute(page_after(query, Node.id, page.after, page.limit + 1)).tuples())
    return list_result(request, page, nodes, lambda node: node[0], remote_login)  # as for a job's nodes


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
        query = select(ArmCluster).where(ArmCluster.workspace == ids.workspace)
        clusters = list(session.scalars(page_after(query, ArmCluster.name, page.after, page.limit + 1)))
        nodes = pool_nodes(session, [c.pool for c in clusters])
        pools = {p.name: p for p in session.scalars(select(Pool).where(Pool.name.in_([c.pool for c in clusters])))}
        return list_result(request, page, clusters, lambda c: c.name,
                           lambda c: cluster_body(ids, c, pools.get(c.pool), nodes[c.pool]))  # fmt: skip


# Other /arm modules read a job's mounts as a cluster's are read (jobs.py).
__all__ = ["UNKNOWN_FIELD", "mount_targets", "router"]
