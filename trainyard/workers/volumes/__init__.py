"""A part's volumes (spec `volumes:`): mounted after staging, before the job starts; released at its end.

Each volume's data sits under `<node>/volumes/<job>-<attempt>-<rank>/<name>` (a mount point, a
synced copy, or a bind of a host path), never inside the working directory: cleaning the working
directory can never reach through a mount. The job finds the volume at its `mount_path` (a link
there; in a container, a bind at that path) and in `TRAINYARD_VOLUME_<NAME>`. A volume that cannot
be mounted fails the attempt with reason mount_failed; what was mounted is unmounted. Mounts a
crashed worker left behind are unmounted the first time a part starts on the node again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

from trainyard.spec import VolumeSpec
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.volumes.base import MountFailed, PartRef, Say, VolumeMount, mounted_under, unmount
from trainyard.workers.volumes.blob import BlobVolume
from trainyard.workers.volumes.host import HostVolume
from trainyard.workers.volumes.sync import SyncVolume

__all__ = ["MountFailed", "clean_leftovers", "finish_part", "mount_part", "release_part"]

log = logging.getLogger(__name__)

KINDS: dict[str, type[VolumeMount]] = {"host": HostVolume, "sync": SyncVolume, "blob": BlobVolume}
STATE_FILE = "links.json"
ENV_PREFIX = "TRAINYARD_VOLUME_"
PartKey = tuple[str, int, int]


class PartVolumes:
    """The mounts of one part, in mount order, and the links made to them at the job's mount paths."""

    def __init__(self, part: PartRef):
        self.part = part
        self.mounts: list[VolumeMount] = []
        self.links: list[Path] = []

    def save_links(self) -> None:
        (self.part.root / STATE_FILE).write_text(json.dumps([str(p) for p in self.links]))


_ACTIVE: dict[tuple[str, PartKey], PartVolumes] = {}
_CLEANED: set[str] = set()
_LOCK = threading.Lock()  # guards _ACTIVE and _CLEANED: parts of one node start on several threads


def part_root(node_dir: Path, key: PartKey) -> Path:
    return node_dir / "volumes" / f"{key[0]}-{key[1]}-{key[2]}"


def mount_part(node_dir: Path, ctx: LaunchContext) -> None:
    """Mount every volume of the part's spec; sets TRAINYARD_VOLUME_<NAME> and the container binds."""
    key = (ctx.job_id, ctx.attempt, ctx.rank)
    _clean_leftovers_once(node_dir)
    specs = [VolumeSpec.model_validate(v) for v in ctx.spec.get("volumes") or []]
    if not specs:
        return
    root = part_root(node_dir, key)
    _clean_root(root)  # a redelivered part starts clean
    root.mkdir(parents=True, exist_ok=True)
    active = PartVolumes(PartRef(*key, root=root, env={**os.environ, **ctx.secrets}))
    with _LOCK:
        _ACTIVE[(str(node_dir), key)] = active
    try:
        for spec in specs:
            _mount_one(ctx, spec, active)
    except BaseException:
        release_part(node_dir, key)
        raise


def _mount_one(ctx: LaunchContext, spec: VolumeSpec, active: PartVolumes) -> None:
    if spec.volume is not None or spec.kind is None:
        raise MountFailed(
            spec.name,
            f"the registered volume {spec.volume!r} was not resolved when the job was submitted (unknown volume)",
        )
    mount = KINDS[spec.kind](spec, active.part)
    active.mounts.append(mount)  # before mounting: a half-done mount is released with the rest
    source = mount.mount()
    mode = "ro" if spec.read_only else "rw"
    in_container = ctx.image is not None
    if spec.job_path.startswith("/") and in_container:
        job_path = spec.job_path  # the container binds the source right there
        ctx.volume_binds[str(source)] = {"bind": job_path, "mode": mode}
    else:
        job_path = str(_link(ctx, spec, source, active))
        ctx.volume_binds[str(source)] = {"bind": str(source), "mode": mode}  # the link resolves inside too
    for name in sorted({ENV_PREFIX + spec.name, ENV_PREFIX + spec.name.upper()}):
        ctx.data_env[name] = job_path


def _link(ctx: LaunchContext, spec: VolumeSpec, source: Path, active: PartVolumes) -> Path:
    """A symlink at the job's mount path to the volume's data on this node."""
    absolute = spec.job_path.startswith("/")
    target = Path(spec.job_path) if absolute else ctx.workdir / spec.job_path
    if target.is_symlink():
        if not absolute or not _is_ours(target):
            raise MountFailed(spec.name, f"mount_path {target} is already a link on this node")
        target.unlink()  # a link a crashed part of this node left
    elif target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists():
        where = "on this node" if absolute else "in the job's working directory"
        raise MountFailed(spec.name, f"mount_path {spec.job_path} already exists {where}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source, target_is_directory=True)
    except OSError as exc:
        raise MountFailed(spec.name, f"cannot make mount_path {target}: {exc.strerror}") from exc
    active.links.append(target)
    active.save_links()
    return target


def _is_ours(link: Path) -> bool:
    return "/volumes/" in os.readlink(link) and not Path(os.readlink(link)).exists()


def finish_part(node_dir: Path, key: PartKey, exit_code: int, say: Say) -> int:
    """Flush and unmount the part's volumes at its end; a job whose writes did not reach the store fails (exit 1)."""
    problems = release_part(node_dir, key, say)
    for problem in problems:
        say(f"trainyard: {problem}\n".encode())
    return 1 if problems and exit_code == 0 else exit_code


def release_part(node_dir: Path, key: PartKey, say: Say = lambda _: None) -> list[str]:
    """Unmount what `mount_part` mounted for the part (any of it; nothing when none); the problems met."""
    with _LOCK:
        active = _ACTIVE.pop((str(node_dir), key), None)
    if active is None:
        return []
    problems: list[str] = []
    for mount in reversed(active.mounts):
        try:
            problems.extend(mount.release(say))
        except Exception as exc:  # one volume's failure must not leave the others mounted
            problems.append(f"volume {mount.spec.name}: {type(exc).__name__}: {exc}")
    for link in active.links:
        if link.is_symlink():
            link.unlink()
    _clean_root(active.part.root)
    return problems


def _clean_root(root: Path) -> None:
    """Unmount anything left under `root`, remove the links it recorded, then the directory."""
    if not root.exists():
        return
    for point, fstype in mounted_under(root):
        problem = unmount(point, fuse=fstype.startswith("fuse"))
        if problem:
            log.error("leftover mount %s: %s", point, problem)
    try:
        links = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        links = []
    for link in map(Path, links):
        if link.is_symlink() and os.readlink(link).startswith(str(root)):
            link.unlink()
    if mounted_under(root):
        log.error("not removing %s: something is still mounted under it", root)
        return
    shutil.rmtree(root, ignore_errors=True)


def clean_leftovers(node_dir: Path) -> None:
    """Unmount and remove what parts no longer running on this node left (a worker that crashed)."""
    with _LOCK:
        active = {str(v.part.root) for (node, _), v in _ACTIVE.items() if node == str(node_dir)}
    for root in sorted((node_dir / "volumes").glob("*")):
        if root.is_dir() and str(root) not in active:
            log.info("cleaning the volumes a stopped part left: %s", root.name)
            _clean_root(root)


def _clean_leftovers_once(node_dir: Path) -> None:
    with _LOCK:
        first = str(node_dir) not in _CLEANED
        _CLEANED.add(str(node_dir))
    if first:
        clean_leftovers(node_dir)
