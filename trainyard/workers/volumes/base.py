"""What every kind of volume shares: the mount interface, the mount_failed error, and unmounting."""

from __future__ import annotations

import abc
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainyard.spec import AttemptReason, VolumeSpec
from trainyard.workers.launchers import PrepareFailed

log = logging.getLogger(__name__)

UNMOUNT_TIMEOUT_S = 30.0
Say = Callable[[bytes], None]


class MountFailed(PrepareFailed):
    """A volume could not be put in place: the attempt ends with reason mount_failed before the job runs."""

    def __init__(self, volume: str, message: str):
        super().__init__(1, AttemptReason.MOUNT_FAILED.value)
        self.volume, self.message = volume, message
        self.args = (f"volume {volume}: {message}",)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class PartRef:
    """Which part a volume belongs to, and where on the node its mounts live."""

    job_id: str
    attempt: int
    rank: int
    root: Path  # <node>/volumes/<job>-<attempt>-<rank>: mount points and sync copies, never inside the workdir
    env: dict[str, str] = field(default_factory=dict)  # the node's environment plus the job's secrets


class VolumeMount(abc.ABC):
    """One volume of one part: `mount()` gives the directory holding its data on this node."""

    def __init__(self, spec: VolumeSpec, part: PartRef):
        self.spec, self.part = spec, part
        self.mount_point = part.root / spec.name

    @abc.abstractmethod
    def mount(self) -> Path:
        """Put the volume in place; raises MountFailed with the tool's message."""

    @abc.abstractmethod
    def release(self, say: Say) -> list[str]:
        """Flush what the job wrote (where the kind needs it) and unmount; the problems met."""

    def source_read_only(self) -> bool:
        """Whether the node already enforces read_only on the source (a container binds it ro anyway)."""
        return self.spec.read_only


def mounted_under(root: Path) -> list[tuple[Path, str]]:
    """(mount point, file system type) of mounts at or below `root`, deepest first, from the kernel's table."""
    real = os.path.realpath(root)
    found = []
    with open("/proc/self/mounts") as table:
        for line in table:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if point == real or point.startswith(real.rstrip("/") + "/"):
                found.append((Path(point), fields[2]))
    return sorted(found, key=lambda item: len(item[0].parts), reverse=True)


def unmount(point: Path, fuse: bool) -> str | None:
    """Unmount `point`, lazily when it is busy; the error, or None."""
    tool = ["fusermount3", "-u"] if fuse else ["umount"]
    lazy = ["fusermount3", "-uz"] if fuse else ["umount", "-l"]
    for argv in (tool, lazy):
        try:
            done = subprocess.run(
                [*argv, str(point)], capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{argv[0]}: {exc}"
        if done.returncode == 0 or not os.path.ismount(point):
            return None
        log.warning("%s %s: %s", " ".join(argv), point, done.stderr.strip())
    return f"could not unmount {point}"
