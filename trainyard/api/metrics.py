"""Prometheus `/metrics`: gauges counted in the database at scrape time, plus the scheduler's own figures.

The database answers what is queued, running and up, and how often jobs were requeued (the
`requeued` events); the scheduler's pass time, submit→start latency and the log upload lag that
nodes report come from the Redis hash it keeps (trainyard.metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from trainyard.api.auth import Principal, require
from trainyard.db.models import Event, Job, Node, Part
from trainyard.metrics import (
    LOG_LAG_FIELD,
    LOG_PENDING_FIELD,
    PASS_SECONDS,
    START_LATENCY_SECONDS,
    Histogram,
    node_gauges,
    read_scheduler_metrics,
)
from trainyard.spec import JobState, NodeState, PartState

log = logging.getLogger(__name__)

router = APIRouter()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _database_metrics(session: Session) -> Iterator[Metric]:
    queued = GaugeMetricFamily("trainyard_jobs_queued", "Jobs waiting in the queue", labels=["pool", "priority"])
    for pool, priority, count in session.execute(
        select(Job.pool, Job.priority, func.count())
        .where(Job.state == JobState.QUEUED.value)
        .group_by(Job.pool, Job.priority)
    ):
        queued.add_metric([pool, str(priority)], count)
    yield queued
    jobs = GaugeMetricFamily("trainyard_jobs", "Jobs by state", labels=["state"])
    for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        jobs.add_metric([state], count)
    yield jobs
    running = GaugeMetricFamily("trainyard_parts_running", "Job parts running on nodes", labels=["pool"])
    for pool, count in session.execute(
        select(Node.pool, func.count())
        .join(Part, Part.node_id == Node.id)
        .where(Part.active.is_(True), Part.state == PartState.RUNNING.value)
        .group_by(Node.pool)
    ):
        running.add_metric([pool], count)
    yield running
    nodes = GaugeMetricFamily("trainyard_nodes", "Nodes by pool and state", labels=["pool", "state"])
    for pool, state, count in session.execute(
        select(Node.pool, Node.state, func.count()).group_by(Node.pool, Node.state)
    ):
        nodes.add_metric([pool, state], count)
    yield nodes
    requeues = CounterMetricFamily(
        "trainyard_requeues", "Attempts that put their job back in the queue, by reason", labels=["reason"]
    )
    reason = Event.detail["reason"].as_string()
    for why, count in session.execute(select(reason, func.count()).where(Event.kind == "requeued").group_by(reason)):
        requeues.add_metric([why or "unknown"], count)
    yield requeues


def _histogram(name: str, doc: str, histogram: Histogram, fields: dict[str, float]) -> HistogramMetricFamily:
    buckets, total = histogram.read(fields)
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def _scheduler_metrics(fields: dict[str, float], live_nodes: set[str]) -> Iterator[Metric]:
    yield _histogram(
        "trainyard_job_start_latency_seconds",
        "Submit to start of a job's first attempt",
        START_LATENCY_SECONDS,
        fields,
    )
    yield _histogram("trainyard_scheduler_pass_seconds", "Time of one scheduling pass", PASS_SECONDS, fields)
    lag = GaugeMetricFamily(
        "trainyard_log_upload_lag_seconds", "Age of a node's oldest log byte not yet in blob storage", labels=["node"]
    )
    pending = GaugeMetricFamily(
        "trainyard_log_upload_pending_bytes", "Log bytes spooled on a node, not yet in blob storage", labels=["node"]
    )
    for family, field in ((lag, LOG_LAG_FIELD), (pending, LOG_PENDING_FIELD)):
        for node, value in sorted(node_gauges(fields, field).items()):
            if node in live_nodes:
                family.add_metric([node], value)
        yield family


class TrainyardCollector(Collector):
    """Collects at scrape time, so that every API process reports the same, current figures."""

    def __init__(self, sessions: sessionmaker[Session], client: redis.Redis):
        self.sessions, self.redis = sessions, client

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield from _database_metrics(session)
            live = set(session.scalars(select(Node.id).where(Node.state != NodeState.LOST.value)))
        try:
            fields = read_scheduler_metrics(self.redis)
        except redis.RedisError as exc:
            log.warning("scheduler metrics unavailable: %s", exc)
            fields = {}
        yield from _scheduler_metrics(fields, live)


def make_registry(sessions: sessionmaker[Session], client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrainyardCollector(sessions, client))
    return registry


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request, who: Principal = require("viewer")) -> Response:
    registry: Any = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
