"""Pool scale settings: `PUT /v1/pools/{name}` (manual target or autoscale between min and max)."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainyard.api.auth import Principal, require
from trainyard.db.models import Event, Pool, utcnow

router = APIRouter(prefix="/v1")

POOL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PoolScale(BaseModel):
    """How big a pool is: `target` nodes, or autoscaled between min and max by demand."""

    model_config = ConfigDict(extra="forbid")

    min_nodes: int = Field(0, ge=0, le=1000)
    max_nodes: int = Field(1, ge=0, le=1000)
    target: int | None = Field(None, ge=0, le=1000)
    autoscale: bool = True
    idle_timeout_s: float = Field(300.0, ge=0)
    deallocation: Literal["requeue", "terminate", "wait"] = "wait"
    provider: Literal["local", "docker"] = "local"
    slots_per_node: int = Field(2, ge=1, le=4096)
    gpus_per_node: int = Field(0, ge=0, le=64)
    image: str | None = Field(None, description="worker image (docker provider)")

    @model_validator(mode="after")
    def _bounds(self) -> PoolScale:
        if self.min_nodes > self.max_nodes:
            raise ValueError("min_nodes must not exceed max_nodes")
        if self.target is not None and not self.min_nodes <= self.target <= self.max_nodes:
            raise ValueError("target must lie between min_nodes and max_nodes")
        if not self.autoscale and self.target is None:
            raise ValueError("a pool without autoscale needs a target")
        return self


def pool_dict(pool: Pool) -> dict[str, Any]:
    return {"name": pool.name, "min_nodes": pool.min_nodes, "max_nodes": pool.max_nodes,
            "settings": dict(pool.settings or {})}


@router.put("/pools/{name}", summary="Set a pool's size: manual target or autoscale between min and max")
def scale_pool(request: Request, name: str, body: PoolScale, who: Principal = require("admin")) -> Any:
    if not re.match(POOL_NAME_PATTERN, name):
        reason = "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise HTTPException(status_code=422, detail={"message": "invalid pool", "problems": [
            {"field": "name", "reason": reason}]})  # fmt: skip
    settings = body.model_dump(exclude={"min_nodes", "max_nodes"})
    with request.app.state.sessions.begin() as session:
        pool = session.get(Pool, name)
        if pool is None:
            pool = Pool(name=name)
            session.add(pool)
        pool.min_nodes, pool.max_nodes, pool.settings = body.min_nodes, body.max_nodes, settings
        session.add(Event(at=utcnow(), kind="pool_scaled", actor=who.name,
                          detail={"pool": name, **settings, "min_nodes": body.min_nodes, "max_nodes": body.max_nodes}))
        session.flush()
        return pool_dict(pool)
