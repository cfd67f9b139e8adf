"""Output directories on mounts: listOutputFiles of an `outputDirectories[]` entry whose `pathPrefix` lies
under `$AZ_BATCHAI_JOB_MOUNT_ROOT` (a job mount) or `$AZ_BATCHAI_MOUNT_ROOT` (a cluster mount).

Such a directory is not one of the job's store outputs (no manifest lists it): the job writes into
the mount on its nodes. The API lists it where it can read the storage under that mount itself:

- a store-backed volume (`sync`, `blob`): the files under the directory in the volume's store;
- a host volume or file server: its files, when the host path lies in one of the directories
  `TRAINYARD_ARM_READABLE_PATHS` names (the API's machine sees that export too; by default none,
  as a host path is the nodes' and a volume's path is chosen by its registrant);
- else CloudError 400 `OutputDirectoryNotReadable`, saying why (a mount on no volume, a host path
  the API may not read), rather than a bare 404.
"""

from __future__ import annotations

import os
import posixpath
import re
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from trainyard import datarefs
from trainyard.api.arm.common import CloudError
from trainyard.api.arm.links import FileRef
from trainyard.batchai import CLUSTER_MOUNTS_DIR, JOB_MOUNT_ROOT, JOB_MOUNTS_DIR, OUTPUT_PREFIX, SCRATCH_NAME
from trainyard.db.models import Job, Pool

_ROOT = r"(AZ_BATCHAI_(?:JOB_)?MOUNT_ROOT)"
_ON_MOUNT = re.compile(r"^\$(?:\{" + _ROOT + r"\}|" + _ROOT + r"(?![A-Za-z0-9_]))/*(.*)$")
CODE = "OutputDirectoryNotReadable"


def mount_output(job: Job, output_id: str) -> str | None:
    """The directory (`$AZ_BATCHAI_JOB_MOUNT_ROOT/<mount>/…`) of an output the job writes on a mount, if one."""
    wanted = (OUTPUT_PREFIX + output_id).lower()
    for key, value in ((job.spec or {}).get("env") or {}).items():
        if key.lower() == wanted and isinstance(value, str) and _ON_MOUNT.match(value):
            return value
    return None


def _refused(output_id: str, why: str) -> CloudError:
    return CloudError(400, CODE, f"The output directory '{output_id}' cannot be listed here: {why}.",
                      "outputdirectoryid")  # fmt: skip


def _volume_of(session: Session, job: Job, directory: str) -> tuple[dict[str, Any], str] | None:
    """The volume the directory (`.batchai/jobmounts/<rest>`) lies on, and its path inside that volume:
    the job's own volumes first, then its pool's (cluster mounts); the longest mount path wins."""
    volumes = list((job.spec or {}).get("volumes") or [])
    pool = session.get(Pool, job.pool)
    volumes += list(((pool.settings or {}).get("volumes") or []) if pool is not None else [])
    best: tuple[dict[str, Any], str] | None = None
    for volume in volumes:
        mount = str(volume.get("mount_path") or "").strip("/") if isinstance(volume, dict) else ""
        on_it = mount and (directory == mount or directory.startswith(mount + "/"))
        if on_it and (best is None or len(mount) > len(str(best[0].get("mount_path")).strip("/"))):
            best = (volume, directory[len(mount) :].strip("/"))
    return best


def _readable(path: str, roots: str | None) -> bool:
    real = os.path.realpath(path)
    for root in (r.strip() for r in (roots or "").split(",")):
        if root and os.path.isabs(root):
            base = os.path.realpath(root)
            if real == base or real.startswith(base.rstrip("/") + "/"):
                return True
    return False


def mount_output_files(
    session: Session, job: Job, output_id: str, value: str, readable_paths: str | None, cluster_storage: str | None
) -> list[tuple[str, FileRef, datetime | None]]:
    """(path in the output directory, reference, modified) of each file in an output directory on a mount."""
    match = _ON_MOUNT.match(value)
    assert match is not None  # mount_output found it
    root_var, rest = match.group(1) or match.group(2), match.group(3).strip("/")
    if "$" in rest or not datarefs.safe_relpath(rest or "."):
        raise _refused(output_id, f"{value} is not a plain path below the mount root")
    mounts = JOB_MOUNTS_DIR if root_var == JOB_MOUNT_ROOT else CLUSTER_MOUNTS_DIR
    found = _volume_of(session, job, posixpath.join(SCRATCH_NAME, mounts, rest))
    if found is None:
        raise _refused(output_id, f"{value} lies on no volume of the job or its pool: it is on the nodes' disks")
    volume, inside = found
    kind = volume.get("kind")
    if kind == "host":
        path = posixpath.join(str(volume.get("path") or "/"), inside)
        if not _readable(path, readable_paths):
            raise _refused(output_id, f"{value} is the host path {path} of the nodes, which this API does not read "
                           "(TRAINYARD_ARM_READABLE_PATHS names the directories it may)")  # fmt: skip
        uri = "file://" + path
    elif kind in ("sync", "blob") and volume.get("uri"):
        uri = datarefs.join_uri(str(volume["uri"]), inside) if inside else str(volume["uri"])
        if datarefs.scheme_of(uri) == "file" and not _readable(uri.removeprefix("file://"), readable_paths):
            raise _refused(output_id, f"{value} is in {uri}, a directory of the nodes, which this API does not read "
                           "(TRAINYARD_ARM_READABLE_PATHS names the directories it may)")  # fmt: skip
    else:
        raise _refused(output_id, f"{value} is on a {kind or 'node-local'} volume, which only the nodes see")
    if cluster_storage and datarefs.overlaps(uri, cluster_storage):
        raise _refused(output_id, f"{value} is in the cluster's own store")
    root, prefix = datarefs.split_uri(uri)
    prefix = prefix.strip("/")
    store = datarefs.open_root(root)
    files = []
    for info in store.list(prefix + "/" if prefix else ""):  # a file whose link leads elsewhere is left out
        path = info.key[len(prefix) :].lstrip("/") if prefix else info.key
        if path and (not uri.startswith("file://") or _readable("/" + info.key, readable_paths)):  # no way out
            file_uri = root + info.key if root.endswith("/") else f"{root}/{info.key}"  # file:/// or s3://bucket
            files.append((path, FileRef(job.id, output_uri=file_uri, size=info.size), job.ended_at))
    return files
