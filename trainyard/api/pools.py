"""Pool settings: scale (`PUT /v1/pools/{name}`), setup task (`PUT /v1/pools/{name}/setup`), volumes.

The three are set apart, each replaced whole by its route: scaling a pool keeps its setup task
and volumes (whose secrets could not be sent again: they are never read back).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from trainyard.api.auth import Principal, require
from trainyard.config import secret
from trainyard.crypto import encrypt_secrets
from trainyard.db.models import Event, Pool, utcnow
from trainyard.spec import VolumeSpec, check_volume_clashes, env_name_problem

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


# Keys of a pool's stored settings that its scale route does not own.
OTHER_SETTINGS = ("setup", "volumes")


class PoolSetup(BaseModel):
    """The pool's setup task: run by each node when its worker registers, before it takes work."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1, max_length=100_000, description="run with /bin/sh -c on the node")
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, description="write-only: never shown again")
    timeout_s: float = Field(1800.0, gt=0, le=7 * 86400, description="seconds before the task is killed")

    @model_validator(mode="after")
    def _names(self) -> PoolSetup:
        for name in [*self.env, *self.secrets]:
            problem = env_name_problem(name)
            if problem:
                raise ValueError(problem)
        if set(self.env) & set(self.secrets):
            raise ValueError(f"env and secrets both set {', '.join(sorted(set(self.env) & set(self.secrets)))}")
        return self


class PoolVolumes(BaseModel):
    """Volumes every job of the pool sees, beside its own (a job's volume of the same name wins)."""

    model_config = ConfigDict(extra="forbid")

    volumes: list[VolumeSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _volumes(self) -> PoolVolumes:
        if any(v.volume for v in self.volumes):
            raise ValueError("a pool's volumes give their kind, path or uri (registered volumes are for jobs)")
        check_volume_clashes(self.volumes)
        return self


def pool_dict(pool: Pool) -> dict[str, Any]:
    settings = dict(pool.settings or {})
    setup = settings.get("setup")
    if setup:  # secrets as names only
        settings["setup"] = {k: v for k, v in setup.items() if k != "secrets_enc"}
    return {"name": pool.name, "min_nodes": pool.min_nodes, "max_nodes": pool.max_nodes, "settings": settings}


def _check_name(name: str) -> None:
    if not re.match(POOL_NAME_PATTERN, name):
        reason = "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise HTTPException(status_code=422, detail={"message": "invalid pool", "problems": [
            {"field": "name", "reason": reason}]})  # fmt: skip


def _pool(session: Session, name: str) -> Pool:
    pool = session.get(Pool, name)
    if pool is None:
        pool = Pool(name=name, min_nodes=0, max_nodes=None, settings={})
        session.add(pool)
    return pool


@router.put("/pools/{name}", summary="Set a pool's size: manual target or autoscale between min and max")
def scale_pool(request: Request, name: str, body: PoolScale, who: Principal = require("admin")) -> Any:
    _check_name(name)
    settings = body.model_dump(exclude={"min_nodes", "max_nodes"})
    with request.app.state.sessions.begin() as session:
        pool = _pool(session, name)
        kept = {k: v for k, v in (pool.settings or {}).items() if k in OTHER_SETTINGS}
        pool.min_nodes, pool.max_nodes, pool.settings = body.min_nodes, body.max_nodes, {**settings, **kept}
        session.add(
            Event(
                at=utcnow(),
                kind="pool_scaled",
                actor=who.name,
                detail={"pool": name, **settings, "min_nodes": body.min_nodes, "max_nodes": body.max_nodes},
            )
        )
        session.flush()
        return pool_dict(pool)


@router.put("/pools/{name}/setup", summary="Set the pool's setup task (run by each node before it takes work)")
def set_pool_setup(request: Request, name: str, body: PoolSetup, who: Principal = require("admin")) -> Any:
    _check_name(name)
    stored: dict[str, Any] = {"command": body.command, "env": body.env, "timeout_s": body.timeout_s,
                              "secrets": dict.fromkeys(body.secrets, "***")}  # fmt: skip
    if body.secrets:
        key = secret(request.app.state.settings.secret_key)
        if not key:
            raise HTTPException(status_code=422, detail={"message": "invalid setup", "problems": [
                {"field": "secrets", "reason": "the server has no TRAINYARD_SECRET_KEY to keep secrets"}]})  # fmt: skip
        stored["secrets_enc"] = encrypt_secrets(body.secrets, key)
    with request.app.state.sessions.begin() as session:
        pool = _pool(session, name)
        pool.settings = {**(pool.settings or {}), "setup": stored}
        session.add(
            Event(
                at=utcnow(),
                kind="pool_setup",
                actor=who.name,
                detail={"pool": name, "command": body.command[:200], "secrets": sorted(body.secrets)},
            )
        )
        session.flush()
        return pool_dict(pool)


@router.delete("/pools/{name}/setup", summary="Remove the pool's setup task")
def delete_pool_setup(request: Request, name: str, who: Principal = require("admin")) -> Any:
    _check_name(name)
    with request.app.state.sessions.begin() as session:
        pool = _pool(session, name)
        pool.settings = {k: v for k, v in (pool.settings or {}).items() if k != "setup"}
        session.add(Event(at=utcnow(), kind="pool_setup", actor=who.name, detail={"pool": name, "removed": True}))
        session.flush()
        return pool_dict(pool)


@router.put("/pools/{name}/volumes", summary="Set the volumes every job of the pool sees")
def set_pool_volumes(request: Request, name: str, body: PoolVolumes, who: Principal = require("admin")) -> Any:
    _check_name(name)
    volumes = [v.model_dump(mode="json", exclude_none=True) for v in body.volumes]
    with request.app.state.sessions.begin() as session:
        pool = _pool(session, name)
        pool.settings = {**(pool.settings or {}), "volumes": volumes}
        session.add(
            Event(
                at=utcnow(),
                kind="pool_volumes",
                actor=who.name,
                detail={"pool": name, "volumes": [v["name"] for v in volumes]},
            )
        )
        session.flush()
        return pool_dict(pool)
