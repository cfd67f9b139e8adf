"""Node and pool routes: list nodes, drain one, a node's setup log, list pools with nodes counted by state."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select, update

from trainyard.api.auth import Principal, require
from trainyard.api.pools import pool_dict
from trainyard.api.schemas import ErrorResponse, NodeList, NodeOut, PoolList, plausible_id
from trainyard.db.jobs import iso
from trainyard.db.models import Event, Node, Part, Pool, utcnow
from trainyard.spec import NodeState
from trainyard.storage_adapters import ObjectNotFound, StorageError
from trainyard.wire import setup_log_key

# What `GET /v1/pools` counts: a node up with no part is idle, with parts running; draining is leaving.
POOL_COUNT_STATES = ("idle", "running", "preparing", "unusable", "leaving", "lost")

router = APIRouter(prefix="/v1")


def _usage(session: Any) -> tuple[dict[str, float], dict[str, list[int]], dict[str, int]]:
    cpus: dict[str, float] = defaultdict(float)
    gpus: dict[str, list[int]] = defaultdict(list)
    parts: dict[str, int] = defaultdict(int)
    for node_id, part_cpus, part_gpus in session.execute(
        select(Part.node_id, Part.cpus, Part.gpus).where(Part.active.is_(True))
    ):
        cpus[node_id] += part_cpus
        gpus[node_id].extend(part_gpus or [])
        parts[node_id] += 1
    return cpus, gpus, parts


def node_dict(node: Node, used_cpus: float, used_gpus: list[int], running: int) -> dict[str, Any]:
    return {
        "id": node.id,
        "pool": node.pool,
        "address": node.address,
        "state": node.state,
        "slots": node.slots,
        "slots_used": used_cpus,
        "gpus": list(node.gpus),
        "gpus_used": sorted(used_gpus),
        "memory_bytes": node.memory_bytes,
        "labels": node.labels,
        "host_volumes": list(node.host_volumes or []),
        "state_detail": node.state_detail,
        "running_parts": running,
        "registered_at": iso(node.registered_at),
        "last_heartbeat_at": iso(node.last_heartbeat_at),
    }


@router.get(
    "/nodes", summary="Nodes with their resources and state", response_model=NodeList, response_model_exclude_unset=True
)
def list_nodes(request: Request, who: Principal = require("viewer")) -> Any:
    with request.app.state.sessions() as session:
        cpus, gpus, parts = _usage(session)
        nodes = session.scalars(select(Node).order_by(Node.pool, Node.id)).all()
        return {"nodes": [node_dict(n, cpus[n.id], gpus[n.id], parts[n.id]) for n in nodes]}


@router.post(
    "/nodes/{node_id}:drain",
    summary="Drain a node: no new work; running work finishes",
    response_model=NodeOut,
    response_model_exclude_unset=True,
    responses={404: {"model": ErrorResponse, "description": "no such node"}},
)
def drain_node(request: Request, node_id: str, who: Principal = require("admin")) -> Any:
    with request.app.state.sessions.begin() as session:
        node = session.get(Node, node_id) if plausible_id(node_id) else None
        if node is None:
            raise HTTPException(status_code=404, detail=f"no node {node_id}")
        session.execute(
            update(Node)
            .where(Node.id == node_id, Node.state.in_((NodeState.UP, NodeState.PREPARING, NodeState.UNUSABLE)))
            .values(state=NodeState.DRAINING.value)
        )
        session.add(Event(at=utcnow(), kind="drained", node_id=node_id, actor=who.name, detail={}))
    with request.app.state.sessions() as session:
        cpus, gpus, parts = _usage(session)
        node = session.get(Node, node_id)
        assert node is not None
        return node_dict(node, cpus[node_id], gpus[node_id], parts[node_id])


@router.get("/nodes/{node_id}/logs", summary="The output of the node's setup task (its latest run; empty if none ran)",
            response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                       404: {"model": ErrorResponse, "description": "no such node"}})  # fmt: skip
def node_logs(request: Request, node_id: str, who: Principal = require("viewer")) -> Any:
    with request.app.state.sessions() as session:
        node = session.get(Node, node_id) if plausible_id(node_id) else None
        if node is None:
            raise HTTPException(status_code=404, detail=f"no node {node_id}")
        # While the task runs, its log is under the current session's key (shipped every few seconds).
        key = node.setup_log or (setup_log_key(node.id, node.session) if node.state == "preparing" else None)
    if key is None:  # the node's pool has no setup task: nothing ran, nothing to show
        return Response(b"", media_type="text/plain; charset=utf-8", headers={"X-Setup-Log": "none"})
    try:
        data = request.app.state.storage.get(key)
    except ObjectNotFound:  # the task started but has not shipped its first lines yet
        return Response(b"", media_type="text/plain; charset=utf-8", headers={"X-Setup-Log": "pending"})
    except StorageError as exc:
        raise HTTPException(status_code=503, detail=f"the store is unavailable: {exc}") from None
    return Response(data, media_type="text/plain; charset=utf-8", headers={"X-Setup-Log": "stored"})


@router.get("/pools", summary="Pools and their nodes", response_model=PoolList, response_model_exclude_unset=True)
def list_pools(request: Request, who: Principal = require("viewer")) -> Any:
    with request.app.state.sessions() as session:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(POOL_COUNT_STATES, 0))
        _cpus, _gpus, parts = _usage(session)
        for node_id, pool, state in session.execute(select(Node.id, Node.pool, Node.state)):
            if state == "up":
                state = "running" if parts.get(node_id) else "idle"
            elif state in ("draining", "stopping"):
                state = "leaving"
            counts[pool][state] = counts[pool].get(state, 0) + 1
        settings = {p.name: p for p in session.scalars(select(Pool))}
        names = sorted(set(counts) | set(settings))
        return {
            "pools": [
                {
                    "name": name,
                    "nodes": dict(counts[name]),
                    "min_nodes": settings[name].min_nodes if name in settings else 0,
                    "max_nodes": settings[name].max_nodes if name in settings else None,
                    "settings": pool_dict(settings[name])["settings"] if name in settings else {},
                }
                for name in names
            ]
        }
