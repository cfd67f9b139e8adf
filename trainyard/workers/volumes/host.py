"""`host` volumes: a directory already on the node (NFS, Lustre, a local disk), zero copy.

The job reaches the directory itself through a link. A read-only volume is bind-mounted
read-only under the part's volume root when the node may mount (root); elsewhere read_only
holds in containers only (their bind is read-only) and a warning says so.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from trainyard.spec import VolumeSpec
from trainyard.workers.volumes.base import MountFailed, PartRef, Say, VolumeMount, unmount

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 30.0


class HostVolume(VolumeMount):
    def __init__(self, spec: VolumeSpec, part: PartRef):
        super().__init__(spec, part)
        self._bound = False

    def mount(self) -> Path:
        path = Path(str(self.spec.path))
        if not path.is_dir():
            raise MountFailed(self.spec.name, f"{path} is not a directory on this node")
        if not self.spec.read_only:
            return path
        if self._bind_read_only(path):
            self._bound = True
            return self.mount_point
        log.warning("volume %s: %s is not read-only for host processes (bind mounts need root)", self.spec.name, path)
        return path

    def _bind_read_only(self, path: Path) -> bool:
        if os.geteuid() != 0:
            return False
        self.mount_point.mkdir(parents=True, exist_ok=True)
        for argv in (
            ["mount", "--bind", str(path), str(self.mount_point)],
            ["mount", "-o", "remount,bind,ro", str(self.mount_point)],
        ):
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                done = subprocess.CompletedProcess(argv, 1, "", str(exc))
            if done.returncode != 0:
                if os.path.ismount(self.mount_point):
                    unmount(self.mount_point, fuse=False)
                raise MountFailed(self.spec.name, f"{' '.join(argv[:2])}: {done.stderr.strip()}")
        return True

    def source_read_only(self) -> bool:
        return self._bound

    def release(self, say: Say) -> list[str]:
        if self._bound:
            problem = unmount(self.mount_point, fuse=False)
            if problem:
                return [f"volume {self.spec.name}: {problem}"]
        return []
