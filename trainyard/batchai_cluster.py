"""Azure Batch AI cluster files (`ClusterCreateParameters`, API version 2018-05-01) as trainyard pool settings.

`batchai_cluster_to_pool(doc)` translates a cluster file into a `PoolTranslation`: the bodies of
the three pool routes (`PUT /v1/pools/{name}` scale, `PUT /v1/pools/{name}/volumes`,
`PUT /v1/pools/{name}/setup`) plus a warning for every field honoured in part or not at all.
What cannot be honoured is refused with `SpecError`, each problem named by its field path
relative to `properties`. Nothing is dropped silently.

Field by field:

- `scaleSettings.manual.targetNodeCount` → a fixed size (`target`, min = max = target);
  `nodeDeallocationOption` requeue / terminate / waitforjobcompletion → `deallocation`
  requeue / terminate / wait (Batch AI's default: requeue).
- `scaleSettings.autoScale` {minimumNodeCount, maximumNodeCount} → autoscale between them;
  `initialNodeCount` → warning (trainyard sizes the pool by demand from the start).
  No scaleSettings: the pool's size is left as it is (warning).
- `nodeSetup.mountVolumes` → the pool's volumes at `$AZ_BATCHAI_MOUNT_ROOT/<relativeMountPath>`
  (mount_path `.batchai/mounts/<rel>`), each source from `--volume KEY=TARGET` as for job files
  (a registered `volume:NAME` is refused: pools hold the volume itself).
- `nodeSetup.setupTask` {commandLine, environmentVariables, secrets} → the pool's setup task, its
  env marked `AZ_BATCHAI_COMPAT`; `stdOutErrPathPrefix` → env `AZ_BATCHAI_STDOUTERR_PREFIX` and a
  warning (the output is kept by trainyard, `trainyard node logs ID`, and copied under the prefix).
  On the node, `batchai_setup_env` gives such a task `AZ_BATCHAI_MOUNT_ROOT` (the pool's host
  volumes linked there; blob and sync volumes, warned about, are mounted for jobs only) and
  `AZ_BATCHAI_STDOUTERR_DIR` (`<prefix>/<pool>/<node id>/stdouterr`), and `keep_setup_output`
  copies the task's output there as `stdout.txt`.
- `vmSize` → `gpus_per_node` for the NC/ND/NV sizes of 6, 12 and 24 cores (1, 2, 4 GPUs), with
  a warning (trainyard's nodes are the machines their workers run on); `--gpus` overrides.
- `vmPriority`, `virtualMachineConfiguration`, `userAccountSettings`, `subnet`,
  `nodeSetup.performanceCountersSettings` → warnings saying why each is not applied.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard.batchai import (
    API_VERSION,
    CLUSTER_MOUNTS_DIR,
    COMPAT_VAR,
    MOUNT_KINDS,
    MOUNT_ROOT,
    SCRATCH_NAME,
    STDOUTERR_DIR,
    STDOUTERR_PREFIX_VAR,
    _env_value,
    _expand,
    _join,
    _mount_keys,
    _Reader,
    _segment,
    _type_reason,
    mount_volumes,
    unwrap_envelope,
)
from trainyard.spec import SpecError, env_name_problem

CLUSTER_FIELDS = frozenset(
    {
        "vmSize",
        "vmPriority",
        "scaleSettings",
        "virtualMachineConfiguration",
        "nodeSetup",
        "userAccountSettings",
        "subnet",
    }
)
# Fields of a cluster as Azure returned it (GET), not of a cluster to create.
READ_ONLY_FIELDS = frozenset(
    {
        "creationTime",
        "provisioningState",
        "provisioningStateTransitionTime",
        "allocationState",
        "allocationStateTransitionTime",
        "errors",
        "currentNodeCount",
        "nodeStateCounts",
    }
)
ENVELOPE_FIELDS = frozenset({"$schema", "properties", "name", "type", "apiVersion", "id", "location", "tags"})
DEALLOCATION = {"requeue": "requeue", "terminate": "terminate", "waitforjobcompletion": "wait"}
MAX_POOL_NODES = 1000
# The GPU sizes Batch AI offered: NC6/NC12/NC24(r), their s_v2/s_v3, ND and NV siblings; 6 cores per GPU.
_GPU_VM_SIZE = re.compile(r"^standard_n[cdv](6|12|24)r?(s|s_v2|s_v3|_promo)?$", re.IGNORECASE)
_GPUS_BY_CORES = {"6": 1, "12": 2, "24": 4}


@dataclass
class PoolTranslation:
    """What a cluster file sets on a pool: each part is None (or empty) when the file does not set it."""

    name: str
    scale: dict[str, Any] | None = None
    volumes: list[dict[str, Any]] = field(default_factory=list)
    setup: dict[str, Any] | None = field(default=None, repr=False)

    def public_dict(self) -> dict[str, Any]:
        """The translation as printed by --dry-run: secrets as names only."""
        setup = None
        if self.setup is not None:
            setup = {**self.setup, "secrets": dict.fromkeys(self.setup.get("secrets") or {}, "***")}
        return {"name": self.name, "scale": self.scale, "volumes": self.volumes, "setup": setup}


def _unwrap(doc: Any, r: _Reader) -> tuple[dict[str, Any], str | None]:
    """The properties object and the cluster name the envelope gives, if any."""
    return unwrap_envelope(doc, r, "cluster", CLUSTER_FIELDS, ENVELOPE_FIELDS, check_api_version=False)


def cluster_envelope_name(doc: Any) -> str | None:
    """The cluster name an ARM envelope gives (`workspace/cluster` → `cluster`), if any."""
    return _unwrap(doc, _Reader())[1] if isinstance(doc, dict) else None


def _count(r: _Reader, parent: dict[str, Any], key: str, path: str, *, required: bool) -> int | None:
    if parent.get(key) is None:
        if required:
            r.refuse(_join(path, key), "required field is missing")
        return None
    value = r.integer(parent, key, path, minimum=0)
    if value is not None and value > MAX_POOL_NODES:
        r.refuse(_join(path, key), f"at most {MAX_POOL_NODES} nodes")
        return None
    return value


def _manual(r: _Reader, manual: dict[str, Any], path: str) -> dict[str, Any] | None:
    r.unknown(manual, frozenset({"targetNodeCount", "nodeDeallocationOption"}), path)
    target = _count(r, manual, "targetNodeCount", path, required=True)
    option = r.string(manual, "nodeDeallocationOption", path) or "requeue"
    deallocation = DEALLOCATION.get(option.strip().lower())
    if deallocation is None:
        r.refuse(
            _join(path, "nodeDeallocationOption"), f"{option!r}: must be requeue, terminate or waitforjobcompletion"
        )
    if target is None or deallocation is None:
        return None
    return {
        "min_nodes": target,
        "max_nodes": target,
        "target": target,
        "autoscale": False,
        "deallocation": deallocation,
    }


def _auto(r: _Reader, auto: dict[str, Any], path: str) -> dict[str, Any] | None:
    r.unknown(auto, frozenset({"minimumNodeCount", "maximumNodeCount", "initialNodeCount"}), path)
    low = _count(r, auto, "minimumNodeCount", path, required=True)
    high = _count(r, auto, "maximumNodeCount", path, required=True)
    initial = _count(r, auto, "initialNodeCount", path, required=False)
    if low is None or high is None:
        return None
    if low > high:
        r.refuse(_join(path, "minimumNodeCount"), f"{low} exceeds maximumNodeCount {high}")
        return None
    if initial is not None:
        r.warn(
            _join(path, "initialNodeCount"),
            f"not used: trainyard sizes the pool by its queued and running jobs from the start, "
            f"between {low} and {high}",
        )
    return {"min_nodes": low, "max_nodes": high, "target": None, "autoscale": True, "deallocation": "requeue"}


def _scale(r: _Reader, props: dict[str, Any]) -> dict[str, Any] | None:
    settings = r.obj(props, "scaleSettings", "")
    if settings is None:
        r.warn("scaleSettings", "not given: the pool's size is left as it is (trainyard pool scale sets it)")
        return None
    r.unknown(settings, frozenset({"manual", "autoScale"}), "scaleSettings")
    manual = r.obj(settings, "manual", "scaleSettings")
    auto = r.obj(settings, "autoScale", "scaleSettings")
    if manual is not None and auto is not None:
        r.refuse("scaleSettings", "give manual or autoScale, not both")
        return None
    if manual is not None:
        return _manual(r, manual, "scaleSettings.manual")
    if auto is not None:
        return _auto(r, auto, "scaleSettings.autoScale")
    r.refuse("scaleSettings", "one of manual or autoScale is required")
    return None


def _gpus_of_vm_size(r: _Reader, props: dict[str, Any]) -> int | None:
    size = r.string(props, "vmSize", "")
    if size is None:
        return None
    match = _GPU_VM_SIZE.match(size.strip())
    gpus = _GPUS_BY_CORES[match.group(1)] if match else None
    r.warn(
        "vmSize",
        f"{size!r} is not provisioned: the pool's nodes are the machines their workers run on"
        + (f"; nodes the pool's provider starts declare {gpus} GPU(s) ({size}), --gpus overrides" if gpus else ""),
    )
    return gpus


def _not_applied(r: _Reader, props: dict[str, Any]) -> None:
    """Cluster fields that describe Azure's machines, not what trainyard runs: each warned about by name."""
    priority = r.string(props, "vmPriority", "")
    if priority is not None and priority.strip().lower() not in ("dedicated", "lowpriority"):
        r.refuse("vmPriority", f"{priority!r}: must be dedicated or lowpriority")
    elif priority is not None and priority.strip().lower() == "lowpriority":
        r.warn(
            "vmPriority",
            "lowpriority: no cloud preempts trainyard's nodes; submit the pool's jobs with preemptible: true "
            "to let higher-priority work take their place",
        )
    reasons = {
        "virtualMachineConfiguration": "the nodes run the OS of their machines; give jobs an image for theirs",
        "userAccountSettings": "no user account or ssh key is made on the nodes: jobs run as the worker's user "
        "and need no ssh (MPI starts through trainyard's rsh agent)",
        "subnet": "the nodes are on the network their workers run on",
    }
    for key, reason in reasons.items():
        if props.get(key) is not None:
            r.warn(key, f"not applied: {reason}")


def _setup_task(r: _Reader, task: dict[str, Any], path: str) -> dict[str, Any] | None:
    r.unknown(task, frozenset({"commandLine", "environmentVariables", "secrets", "stdOutErrPathPrefix"}), path)
    command = r.string(task, "commandLine", path, required=True)
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for key, target in (("environmentVariables", env), ("secrets", secrets)):
        known = frozenset({"name", "value"} | ({"valueSecretReference"} if target is secrets else set()))
        for i, item in enumerate(r.array(task, key, path)):
            where = f"{path}.{key}[{i}]"
            if not isinstance(item, dict):
                r.refuse(where, _type_reason(item, "an object"))
                continue
            r.unknown(item, known, where)
            name = r.string(item, "name", where, required=True)
            value = _env_value(r, item, where, secret=target is secrets)
            problem = env_name_problem(name) if name is not None else None
            if problem:
                r.refuse(f"{where}.name", problem)
            elif name is not None and (name in env or name in secrets):
                r.refuse(f"{where}.name", f"{name!r} is set twice")
            elif name is not None and value is not None:
                target[name] = value
    for name in (COMPAT_VAR, STDOUTERR_PREFIX_VAR, MOUNT_ROOT, STDOUTERR_DIR):
        if name in env or name in secrets:
            r.refuse(path, f"{name!r} is set by trainyard for Batch AI setup tasks")
    env[COMPAT_VAR] = API_VERSION  # the node gives the task $AZ_BATCHAI_MOUNT_ROOT and the rest
    prefix = r.string(task, "stdOutErrPathPrefix", path)
    if prefix is not None:
        env[STDOUTERR_PREFIX_VAR] = prefix
        r.warn(
            _join(path, "stdOutErrPathPrefix"),
            "the task's output (stdout and stderr together) is kept by trainyard (trainyard node logs ID) and "
            "copied to $AZ_BATCHAI_STDOUTERR_DIR/stdout.txt, <prefix>/<pool>/<node id>/stdouterr, when the "
            "prefix is a directory on the node (a host volume under $AZ_BATCHAI_MOUNT_ROOT, or an absolute path)",
        )
    if command is None:
        return None
    return {"command": command, "env": env, "secrets": secrets}


def _setup_mount_warnings(r: _Reader, volumes: list[dict[str, Any]]) -> None:
    for volume in volumes:
        if volume.get("kind") != "host":
            r.warn(
                "nodeSetup.setupTask",
                f"{volume['mount_path']} ({volume.get('kind')} volume) is mounted for the pool's jobs, not for its "
                "setup task: the task sees only host volumes under $AZ_BATCHAI_MOUNT_ROOT",
            )


def _node_setup(r: _Reader, props: dict[str, Any], mapping: Mapping[str, str]) -> tuple[list[dict[str, Any]], Any]:
    setup = r.obj(props, "nodeSetup", "")
    if setup is None:
        return [], None
    r.unknown(setup, frozenset({"setupTask", "mountVolumes", "performanceCountersSettings"}), "nodeSetup")
    volumes: list[dict[str, Any]] = []
    mounts = r.obj(setup, "mountVolumes", "nodeSetup")
    if mounts is not None:
        volumes = mount_volumes(r, mounts, "nodeSetup.mountVolumes", mapping, cluster=True)
        for volume in volumes:
            if "volume" in volume:
                r.refuse(
                    "nodeSetup.mountVolumes",
                    f"{volume['mount_path']}: a pool holds the volume itself (host:/path, sync:URI, blob:URI), "
                    f"not a registered volume:{volume['volume']}",
                )
    if setup.get("performanceCountersSettings") is not None:
        r.warn(
            "nodeSetup.performanceCountersSettings",
            "not applied: trainyard exports its metrics at /metrics (Prometheus), not to Application Insights",
        )
    task = r.obj(setup, "setupTask", "nodeSetup")
    if task is None:
        return volumes, None
    _setup_mount_warnings(r, volumes)
    return volumes, _setup_task(r, task, "nodeSetup.setupTask")


def batchai_cluster_to_pool(
    doc: dict[str, Any],
    *,
    name: str | None = None,
    volumes: Mapping[str, str] | None = None,
    gpus: int | None = None,
    slots: int | None = None,
    provider: str | None = None,
) -> tuple[PoolTranslation, list[str]]:
    """Translate a Batch AI cluster file into (pool settings, warnings); raises SpecError naming each refusal.

    `name` defaults to the envelope's name. `volumes` maps each of nodeSetup.mountVolumes (by
    relativeMountPath, share or container name) to its storage (`batchai.parse_volume_target`).
    `gpus`, `slots` and `provider` are the pool's gpus_per_node, slots_per_node and provider
    (the nodes it starts itself); `gpus` defaults to what vmSize has.
    """
    r = _Reader()
    r.schema = "ClusterCreateParameters"
    props, given = _unwrap(doc, r)
    pool = (name or given or "").strip()
    if not pool:
        r.refuse("name", "the cluster file has no name: give one (trainyard pool create --name NAME)")
    r.unknown(props, CLUSTER_FIELDS | READ_ONLY_FIELDS, "")
    for key in sorted(READ_ONLY_FIELDS & set(props)):
        r.warn(key, "a read-only field of a cluster Azure returned; ignored")
    sized_gpus = _gpus_of_vm_size(r, props)
    _not_applied(r, props)
    scale = _scale(r, props)
    pool_volumes, setup = _node_setup(r, props, dict(volumes or {}))
    for key in sorted(set(volumes or {}) - set(r.cluster_mounts) - _mount_names(props)):
        r.warn("", f"--volume {key}: no nodeSetup.mountVolumes entry has that key; not used")
    if r.problems:
        raise SpecError(r.problems, r.warnings)
    if scale is not None:
        scale.update(
            {
                "provider": provider or "local",
                "slots_per_node": slots or 2,
                "gpus_per_node": gpus if gpus is not None else sized_gpus or 0,
            }
        )
    return PoolTranslation(pool, scale, pool_volumes, setup), r.warnings


def _mount_names(props: dict[str, Any]) -> set[str]:
    """Every key a --volume may use for the cluster's mounts (share URLs and names, containers, servers)."""
    names: set[str] = set()
    setup = props.get("nodeSetup")
    mounts = setup.get("mountVolumes") if isinstance(setup, dict) else None
    if isinstance(mounts, dict):
        for kind in MOUNT_KINDS:
            for item in mounts.get(kind) or []:
                if isinstance(item, dict):
                    names |= set(_mount_keys(kind, item, str(item.get("relativeMountPath", "")))[0])
    return names


__all__ = ["PoolTranslation", "batchai_cluster_to_pool", "cluster_envelope_name"]


# ---------------------------------------------------------------------------------------------
# On the node, when the setup task runs

log = logging.getLogger(__name__)
SETUP_OUTPUT_NAME = "stdout.txt"
_POOL_MOUNTS = f"{SCRATCH_NAME}/{CLUSTER_MOUNTS_DIR}/"


def batchai_setup_env(
    env: Mapping[str, str], setup_dir: Path, node_id: str, pool: str, volumes: list[dict[str, Any]]
) -> dict[str, str]:
    """The AZ_BATCHAI_* variables Batch AI gave a setup task, for a pool from a cluster file; else {}.

    A setup task from a cluster file has AZ_BATCHAI_COMPAT in its env. It gets
    `AZ_BATCHAI_MOUNT_ROOT` = `<setup dir>/.batchai/mounts`, where each host volume of the pool is
    linked at its relativeMountPath (blob and sync volumes are mounted for jobs only), and
    `AZ_BATCHAI_STDOUTERR_DIR` = `<stdOutErrPathPrefix>/<pool>/<node id>/stdouterr` when the prefix
    expands to an absolute path, else `<setup dir>/.batchai/stdouterr`. Both directories are made.
    """
    if COMPAT_VAR not in env:
        return {}
    root = setup_dir / SCRATCH_NAME / CLUSTER_MOUNTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    for volume in volumes:
        _link_host_volume(root, volume)
    stdouterr = setup_dir / SCRATCH_NAME / "stdouterr"
    prefix = env.get(STDOUTERR_PREFIX_VAR)
    if prefix:
        base = _expand(prefix.strip(), {MOUNT_ROOT: str(root)})
        if base.startswith("/") and "$" not in base:
            stdouterr = Path(base) / _segment(pool) / _segment(node_id) / "stdouterr"
    try:
        stdouterr.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the prefix is not writable here: the task still runs, its log is in trainyard
        log.warning("cannot make the setup task's stdouterr directory %s: %s", stdouterr, exc)
        stdouterr = setup_dir / SCRATCH_NAME / "stdouterr"
        stdouterr.mkdir(parents=True, exist_ok=True)
    return {MOUNT_ROOT: str(root), STDOUTERR_DIR: str(stdouterr)}


def _link_host_volume(root: Path, volume: Mapping[str, Any]) -> None:
    mount_path = str(volume.get("mount_path") or "")
    if volume.get("kind") != "host" or not volume.get("path") or not mount_path.startswith(_POOL_MOUNTS):
        return
    link = root / mount_path.removeprefix(_POOL_MOUNTS)
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(str(volume["path"]), target_is_directory=True)


def keep_setup_output(env: Mapping[str, str], output: Path) -> None:
    """Copy the setup task's output into $AZ_BATCHAI_STDOUTERR_DIR (Batch AI's stdOutErrPathPrefix)."""
    target = env.get(STDOUTERR_DIR)
    if not target or COMPAT_VAR not in env:
        return
    try:
        (Path(target) / SETUP_OUTPUT_NAME).write_bytes(output.read_bytes())
    except OSError as exc:
        log.warning("could not copy the setup task's output to %s: %s", target, exc)
