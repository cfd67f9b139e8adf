"""Node and pool routes: list nodes, drain one, list pools."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select, update

from trainyard.api.auth import Principal, require
from trainyard.api.schemas import ErrorResponse, NodeList, NodeOut, PoolList, plausible_id
from trainyard.db.jobs import iso
from trainyard.db.models import Event, Node, Part, Pool, utcnow

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
        "running_parts": running,
        "registered_at": iso(node.registered_at),
        "last_heartbeat_at": iso(node.last_heartbeat_at),
    }


@router.get("/nodes", summary="Nodes with their resources and state", response_model=NodeList,
            response_model_exclude_unset=True)
def list_nodes(request: Request, who: Principal = require("viewer")) -> Any:
    with request.app.state.sessions() as session:
        cpus, gpus, parts = _usage(session)
        nodes = session.scalars(select(Node).order_by(Node.pool, Node.id)).all()
        return {"nodes": [node_dict(n, cpus[n.id], gpus[n.id], parts[n.id]) for n in nodes]}


@router.post("/nodes/{node_id}:drain", summary="Drain a node: no new work; running work finishes",
             response_model=NodeOut, response_model_exclude_unset=True,
             responses={404: {"model": ErrorResponse, "description": "no such node"}})
def drain_node(request: Request, node_id: str, who: Principal = require("admin")) -> Any:
    with request.app.state.sessions.begin() as session:
        node = session.get(Node, node_id) if plausible_id(node_id) else None
        if node is None:
            raise HTTPException(status_code=404, detail=f"no node {node_id}")
        session.execute(update(Node).where(Node.id == node_id, Node.state == "up").values(state="draining"))
        session.add(Event(at=utcnow(), kind="drained", node_id=node_id, actor=who.name, detail={}))
    with request.app.state.sessions() as session:
        cpus, gpus, parts = _usage(session)
        node = session.get(Node, node_id)
        assert node is not None
        return node_dict(node, cpus[node_id], gpus[node_id], parts[node_id])


@router.get("/pools", summary="Pools and their nodes", response_model=PoolList, response_model_exclude_unset=True)
def list_pools(request: Request, who: Principal = require("viewer")) -> Any:
    with request.app.state.sessions() as session:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for pool, state in session.execute(select(Node.pool, Node.state)):
            counts[pool][state] += 1
        settings = {p.name: p for p in session.scalars(select(Pool))}
        names = sorted(set(counts) | set(settings))
        return {
            "pools": [
                {
                    "name": name,
                    "nodes": dict(counts[name]),
                    "min_nodes": settings[name].min_nodes if name in settings else 0,
                    "max_nodes": settings[name].max_nodes if name in settings else None,
                }
                for name in names
            ]
        }
