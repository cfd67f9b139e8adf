"""Shared bench helpers: the JSON-line result format, percentiles, and a private trainyard cluster.

Every bench prints one JSON line per figure on stdout:
`{"bench": name, "value": float, "unit": str, "baseline": float|null, "ratio": float|null, "goal": str}`
and may add keys of its own (`run_all.py` ignores them). A goal reads `ratio >= 0.8` or `<= 50 ms`
(the subject is `value` when none is named); an optional boolean `met` overrides it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
# Variables that would point a private cluster at someone else's services.
FOREIGN_ENV = (
    "TRAINYARD_REDIS_URL",
    "TRAINYARD_DATABASE_URL",
    "TRAINYARD_API_URL",
    "TRAINYARD_ADMIN_TOKEN",
    "TRAINYARD_TOKEN",
    "TRAINYARD_STORAGE_URL",
    "TRAINYARD_API_PORT",
)


def emit(
    bench: str,
    value: float,
    unit: str,
    goal: str,
    baseline: float | None = None,
    ratio: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Print one result line (ratio defaults to value/baseline) and return it."""
    if ratio is None and baseline:
        ratio = value / baseline
    row = {
        "bench": bench,
        "value": _round(value),
        "unit": unit,
        "baseline": _round(baseline),
        "ratio": _round(ratio),
        "goal": goal,
        **extra,
    }
    print(json.dumps(row), flush=True)
    return row


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def note(message: str) -> None:
    """Progress for humans: stderr, so that stdout stays JSON lines."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: an observed sample, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@contextmanager
def private_cluster(workers: int, slots: int) -> Iterator[Any]:
    """`trainyard up` in-process with its own home, embedded Redis, SQLite and a free API port."""
    from trainyard.up import free_port, start_cluster

    saved = {key: os.environ.pop(key) for key in FOREIGN_ENV if key in os.environ}
    saved_home = os.environ.get("TRAINYARD_HOME")
    try:
        with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as home:
            os.environ["TRAINYARD_HOME"] = home
            cluster = start_cluster(workers=workers, slots=slots, port=free_port())
            try:
                wait_for_nodes(Path(home), workers)
                yield cluster
            except BaseException:
                dump_logs(Path(home) / "logs")
                raise
            finally:
                cluster.stop()
    finally:
        _restore_env(saved, saved_home)


def dump_logs(log_dir: Path, lines: int = 15) -> None:
    """The last lines of each service's log, to stderr: a failed bench says why."""
    for path in sorted(log_dir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            note(f"--- {path.name} (last {len(tail)} lines)\n" + "\n".join(tail))


def _restore_env(saved: dict[str, str], saved_home: str | None) -> None:
    os.environ.update(saved)
    if saved_home is None:
        os.environ.pop("TRAINYARD_HOME", None)
    else:
        os.environ["TRAINYARD_HOME"] = saved_home


def wait_for_nodes(home: Path, count: int, timeout_s: float = 60.0) -> None:
    """The scheduler has registered `count` nodes as up (read from its database)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with JobCounter(home / "trainyard.db") as db:
            if db.scalar("SELECT count(*) FROM nodes WHERE state = 'up'") >= count:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{count} node(s) did not register within {timeout_s:.0f} s")


class JobCounter:
    """Read-only queries on the cluster's SQLite file: cheap polling that adds no load on the API."""

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> JobCounter:
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        return self

    def __exit__(self, *_: object) -> None:
        if self._conn is not None:
            self._conn.close()

    def scalar(self, sql: str, *params: Any) -> int:
        try:
            assert self._conn is not None
            row = self._conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError:  # the schema may not exist yet at start-up
            return 0
        return int(row[0] or 0) if row else 0

    def terminal(self, experiment: str) -> int:
        placeholders = ",".join("?" * len(TERMINAL_STATES))
        return self.scalar(
            f"SELECT count(*) FROM jobs WHERE experiment = ? AND state IN ({placeholders})",
            experiment,
            *TERMINAL_STATES,
        )

    def count_state(self, experiment: str, state: str) -> int:
        return self.scalar("SELECT count(*) FROM jobs WHERE experiment = ? AND state = ?", experiment, state)

    def job_state(self, job_id: str) -> str | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return str(row[0]) if row else None
