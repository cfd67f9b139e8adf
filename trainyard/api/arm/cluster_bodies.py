"""A Batch AI cluster's create body under /arm, read and checked, and the pool settings it makes.

The body goes through `batchai_cluster_to_pool` (the cluster-file translation): `scaleSettings.manual`
→ a fixed size whose `nodeDeallocationOption` is what shrinking does (requeue → jobs requeued,
terminate → cancelled, waitforjobcompletion → nodes drained); `scaleSettings.autoScale` → autoscaled
between min and max; `vmSize` → slots and GPUs per node (sizes.py); `nodeSetup` → the pool's setup
task and volumes. Each `nodeSetup.mountVolumes` entry takes its storage from a registered volume of
the workspace named like its share, container or relativeMountPath, and `fileServers` entries from
the file server's volume. Unknown fields, which a cluster file only warns about, are refused here.
Every refusal is CloudError 400 whose target is the field (`properties.scaleSettings.manual.targetNodeCount`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.api.arm.cluster_state import ECHOED
from trainyard.api.arm.common import CloudError, WorkspaceIds, bad_request
from trainyard.api.arm.operations import vm_sizes
from trainyard.api.arm.sizes import VmSize
from trainyard.api.pools import OTHER_SETTINGS, PoolScale, PoolSetup, PoolVolumes
from trainyard.batchai_cluster import PoolTranslation, batchai_cluster_to_pool
from trainyard.config import secret
from trainyard.crypto import encrypt_secrets
from trainyard.db.arm_clusters import ArmFileServer
from trainyard.db.models import Pool, Volume
from trainyard.spec import SpecError

_HINT = re.compile(r": pass --volume KEY=TARGET.*$", re.DOTALL)
UNKNOWN_FIELD = "not a field of Batch AI"


def refused(problems: list[dict[str, str]], workspace: str) -> CloudError:
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


def body_properties(body: dict[str, Any]) -> dict[str, Any]:
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


def translate(props: dict[str, Any], pool: str, size: VmSize, mapping: dict[str, str],
               provider: str, workspace: str) -> PoolTranslation:  # fmt: skip
    try:
        translation, warnings = batchai_cluster_to_pool(
            {"properties": props}, name=pool, volumes=mapping, gpus=size.gpus, slots=size.cpus, provider=provider
        )
    except SpecError as exc:
        raise refused(exc.problems + _unknown_fields(exc.warnings), workspace) from None
    if unknown := _unknown_fields(warnings):  # a file's unknown fields are warned about; a request's refused
        raise refused(unknown, workspace)
    return translation


def _unknown_fields(warnings: list[str]) -> list[dict[str, str]]:
    return [{"field": text.split(": ", 1)[0], "reason": text.split(": ", 1)[1]}
            for text in warnings if UNKNOWN_FIELD in text and ": " in text]  # fmt: skip


def vm_size_of(request: Request, props: dict[str, Any]) -> VmSize:
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


def scale_of(translation: PoolTranslation, kept: dict[str, Any]) -> PoolScale:
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


def size_pool(pool: Pool, scale: PoolScale, lowpriority: bool) -> None:
    kept = {k: v for k, v in (pool.settings or {}).items() if k in OTHER_SETTINGS}
    settings = scale.model_dump(exclude={"min_nodes", "max_nodes"})
    if lowpriority:
        settings["preemptible"] = True  # read by /arm jobs: Batch AI's low-priority VMs could be taken away
    pool.min_nodes, pool.max_nodes, pool.settings = scale.min_nodes, scale.max_nodes, {**kept, **settings}


@dataclass
class Prepared:
    """A create body read and checked, before anything is stored."""

    props: dict[str, Any]
    size: VmSize
    priority: str
    scale: PoolScale
    setup: dict[str, Any] | None
    volumes: list[dict[str, Any]]


def prepare(request: Request, session: Session, body: dict[str, Any], ids: WorkspaceIds, pool: str) -> Prepared:
    props = body_properties(body)
    size = vm_size_of(request, props)
    if props.get("scaleSettings") is None:  # Batch AI's default: a manual cluster of no nodes
        props = {**props, "scaleSettings": {"manual": {"targetNodeCount": 0}}}
    existing = session.get(Pool, pool)
    kept = dict(existing.settings or {}) if existing is not None else {}
    translation = translate(props, pool, size, mount_targets(session, ids.workspace, props),
                             str(kept.get("provider") or "local"), ids.workspace)  # fmt: skip
    priority = str(props.get("vmPriority") or "dedicated").strip().lower()
    return Prepared(props, size, priority, scale_of(translation, kept), _setup(request, translation),
                     _volumes(translation))  # fmt: skip
