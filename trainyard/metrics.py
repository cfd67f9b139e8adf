"""Scheduler-side figures for `/metrics`, kept in one Redis hash that the API reads at scrape time.

The API and the scheduler are separate processes, so the scheduler cannot hand its own
Prometheus registry to the API. It buffers observations (scheduling pass time, submit→start
latency, log upload lag reported in node heartbeats) and adds them to the hash about twice a
second. Losing Redis loses only these figures; everything else /metrics shows comes from the
database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard import transport
from trainyard.db.models import Job, Part

log = logging.getLogger(__name__)

FLUSH_PERIOD_S = 0.5
# Heartbeat fields a node may report: seconds its oldest not-yet-uploaded log byte has waited,
# and how many bytes wait (0 and 0 when everything is in the store).
LOG_LAG_FIELD = "log_upload_lag_s"
LOG_PENDING_FIELD = "log_pending_bytes"


@dataclass(frozen=True)
class Histogram:
    """A histogram stored as one hash field per bucket (not cumulative), plus sum and count."""

    name: str
    buckets: tuple[float, ...]

    def bucket_field(self, index: int) -> str:
        return f"{self.name}:bucket:{index}"

    def field_for(self, value: float) -> str:
        for index, upper in enumerate(self.buckets):
            if value <= upper:
                return self.bucket_field(index)
        return self.bucket_field(len(self.buckets))  # the +Inf bucket

    def read(self, fields: dict[str, float]) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs as Prometheus wants them, and the sum."""
        cumulative, total = [], 0.0
        for index, upper in enumerate((*self.buckets, math.inf)):
            total += fields.get(self.bucket_field(index), 0.0)
            cumulative.append(("+Inf" if upper == math.inf else repr(float(upper)), total))
        return cumulative, fields.get(f"{self.name}:sum", 0.0)


PASS_SECONDS = Histogram("pass_seconds", (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
START_LATENCY_SECONDS = Histogram(
    "start_latency_seconds", (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
)


class SchedulerMetrics:
    """What the scheduler observes, buffered in memory and added to the Redis hash in one round trip."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._counts: Counter[str] = Counter()
        self._sums: dict[str, float] = {}
        self._gauges: dict[str, float] = {}
        self._flushed_at = 0.0

    def observe(self, histogram: Histogram, value: float) -> None:
        self._counts[histogram.field_for(value)] += 1
        self._counts[f"{histogram.name}:count"] += 1
        key = f"{histogram.name}:sum"
        self._sums[key] = self._sums.get(key, 0.0) + value

    @contextlib.contextmanager
    def timed_pass(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(PASS_SECONDS, time.perf_counter() - started)

    def part_started(self, session: Session, event: dict[str, Any], now: datetime) -> None:
        """Submit→start latency, once per job: when rank 0 of its first attempt has just started."""
        if int(event.get("attempt", 0)) != 1 or int(event.get("rank", -1)) != 0:
            return
        row = session.execute(
            select(Job.submitted_at, Part.started_at)
            .join(Part, Part.job_id == Job.id)
            .where(Part.job_id == event["job_id"], Part.attempt == 1, Part.rank == 0)
        ).first()
        # started_at equals `now` only when this very event moved the part (not a duplicate).
        if row is not None and row.started_at == now:
            self.observe(START_LATENCY_SECONDS, max(0.0, (now - row.submitted_at).total_seconds()))

    def heartbeat(self, event: dict[str, Any]) -> None:
        node = str(event.get("node", ""))
        for field in (LOG_LAG_FIELD, LOG_PENDING_FIELD):
            value = event.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._gauges[f"{field}:{node}"] = float(value)

    def flush(self, force: bool = False) -> None:
        """Add what was observed to the hash (at most every FLUSH_PERIOD_S unless forced)."""
        now = time.monotonic()
        if not force and now - self._flushed_at < FLUSH_PERIOD_S:
            return
        self._flushed_at = now
        if not (self._counts or self._sums or self._gauges):
            return
        key = transport.scheduler_metrics_key()
        pipe = self.redis.pipeline(transaction=False)
        for field, count in self._counts.items():
            pipe.hincrby(key, field, count)
        for field, total in self._sums.items():
            pipe.hincrbyfloat(key, field, total)
        if self._gauges:
            pipe.hset(key, mapping={field: str(value) for field, value in self._gauges.items()})
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # Figures are best effort: scheduling never waits for them. Keep them for the next try.
            log.debug("metrics flush failed: %s", exc)
            return
        self._counts.clear()
        self._sums.clear()
        self._gauges.clear()


def read_scheduler_metrics(client: redis.Redis) -> dict[str, float]:
    """The hash as numbers (an unreadable field is skipped)."""
    fields: dict[str, float] = {}
    raw: Any = client.hgetall(transport.scheduler_metrics_key())
    for name, value in raw.items():
        with contextlib.suppress(ValueError):
            fields[name.decode() if isinstance(name, bytes) else str(name)] = float(value)
    return fields


def node_gauges(fields: dict[str, float], field: str) -> dict[str, float]:
    """Per-node gauges stored as `<field>:<node>`."""
    prefix = field + ":"
    return {name[len(prefix) :]: value for name, value in fields.items() if name.startswith(prefix)}
