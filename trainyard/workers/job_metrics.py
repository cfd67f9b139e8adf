"""The node's side of `trainyard.report`: make it importable in the job, and read back what it wrote.

A job may run any Python, with or without trainyard installed. The agent puts a directory that
holds only this node's `trainyard` package (a symlink) at the end of the job's PYTHONPATH, so
`import trainyard; trainyard.report(...)` works everywhere (`trainyard.reporting` needs nothing
outside the standard library); where trainyard is installed it is the same package anyway.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import trainyard

METRICS_FILE_NAME = ".trainyard-metrics.jsonl"
# What is read back at the part's end: the tail of a long file holds the latest values.
MAX_READ_BYTES = 8 * 1024 * 1024


def metrics_file(workdir: Path) -> Path:
    return workdir / METRICS_FILE_NAME


_SHIMS: set[Path] = set()  # made by this process: not looked at again for every part
_SHIMS_LOCK = threading.Lock()  # parts starting at once on a new node make it once, not in a race


def python_shim(node_dir: Path) -> Path:
    """A directory whose only entry is `trainyard`, a link to this node's package (made once)."""
    shim = node_dir / "python"
    if shim in _SHIMS:
        return shim
    with _SHIMS_LOCK:
        return _make_shim(shim)


def _make_shim(shim: Path) -> Path:
    if shim in _SHIMS:
        return shim
    link = shim / "trainyard"
    package = Path(trainyard.__file__).resolve().parent
    if not link.exists() or link.resolve() != package:
        shim.mkdir(parents=True, exist_ok=True)
        temporary = shim / f".trainyard-{os.getpid()}-{threading.get_ident()}"  # other processes may race too
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(package, target_is_directory=True)
        temporary.replace(link)  # atomic: parts starting at once never see a missing link
    _SHIMS.add(shim)
    return shim


def job_python_env(node_dir: Path, spec: dict[str, Any]) -> dict[str, str]:
    """PYTHONPATH for the job: its own (spec env, else the node's), then the shim last."""
    current = (spec.get("env") or {}).get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")
    shim = str(python_shim(node_dir))
    return {"PYTHONPATH": f"{current}{os.pathsep}{shim}" if current else shim}


def _tail_lines(path: Path) -> list[bytes]:
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - MAX_READ_BYTES))
        data = handle.read()
    lines = data.split(b"\n")
    return lines[1:] if size > MAX_READ_BYTES else lines  # the first may be cut


def read_metrics(path: Path) -> dict[str, Any]:
    """`{"metrics": {name: last finite value}, "metrics_step": last step}` of a part, or {} if none."""
    try:
        lines = _tail_lines(path)
    except OSError:
        return {}
    last: dict[str, float] = {}
    step = None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill, or not ours
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            continue
        for name, value in entry["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                last[str(name)] = value
        if isinstance(entry.get("step"), int):
            step = entry["step"]
    return {"metrics": last, "metrics_step": step} if last else {}


# -- live metrics: the file tailed while the part runs ----------------------------------------

TAIL_PERIOD_S = 1.0
# At most this many points per event: a job reporting faster than that each period is thinned
# (evenly, always keeping the newest), so one chatty job never floods the stream or the database.
MAX_POINTS_PER_BATCH = 200
MAX_BYTES_PER_READ = 4 * 1024 * 1024


def _point(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
        return None
    step = entry.get("step")
    when = entry.get("time")
    values = {
        str(name): (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) else None)
        for name, value in entry["metrics"].items()
    }  # fmt: skip
    return {
        "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
        "time": float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else 0.0,
        "values": values,
    }


def thin(points: list[dict[str, Any]], limit: int = MAX_POINTS_PER_BATCH) -> list[dict[str, Any]]:
    """At most `limit` points, evenly spaced, the newest always kept."""
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit - 1)]
    return [*picked, points[-1]]


class MetricsTail:
    """Reads the complete lines appended to a metrics file since the last read (no thread of its own)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> tuple[int, int, list[dict[str, Any]]]:
        """(start offset, end offset, points) of what is new; the end is where the next read starts."""
        start = self.offset
        try:
            with self.path.open("rb") as handle:
                handle.seek(start)
                data = handle.read(MAX_BYTES_PER_READ)
        except OSError:
            return start, start, []
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset = start + complete
        points = [p for line in data[:complete].split(b"\n") if line and (p := _point(line)) is not None]
        return start, self.offset, thin(points)
