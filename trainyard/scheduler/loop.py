"""The scheduler loop: wake on events (or a short timer), apply them, place queued jobs, dispatch.

One scheduler leads at a time (a lease in Redis); the others wait. Everything it knows it can
rebuild from the database, so a restart or a failover loses nothing.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trainyard import transport
from trainyard.config import Settings
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.db.models import Job, Node, Part, utcnow
from trainyard.metrics import START_LATENCY_SECONDS, SchedulerMetrics
from trainyard.scheduler import outcomes
from trainyard.scheduler.autoscale import Autoscaler
from trainyard.scheduler.dispatch import Dispatcher
from trainyard.scheduler.outcomes import Effects
from trainyard.scheduler.passes import PassRunner

log = logging.getLogger(__name__)

EVENT_BATCH = 2000
IDLE_WAKE_MS = 500
LEASE_TTL_MS = 6000
LEASE_RENEW_S = 1.0
STOP_RESEND_S = 5.0
HOUSEKEEPING_PERIOD_S = 0.5
FULL_PASS_PERIOD_S = 1.0
# A part still not started this long after dispatch, on a node whose later heartbeats do not list
# it, lost its message (Redis restarted or wiped): send it again. Nodes ignore duplicates.
REDISPATCH_AFTER_S = 15.0
REDISPATCH_HEARTBEAT_MARGIN_S = 4.0
HEARTBEAT_DB_WRITE_S = 5.0

_RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Scheduler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.redis = transport.redis_client(settings.redis_url)
        self.dispatcher = Dispatcher(settings, self.redis)
        self.passes = PassRunner(self.dispatcher)
        self.autoscaler = Autoscaler()  # sizes pools with scale settings (PUT /v1/pools/{name})
        self.metrics = SchedulerMetrics(self.redis)
        self.identity = secrets.token_hex(6)
        self._heartbeat_seen: dict[str, float] = {}
        self._heartbeat_written: dict[str, float] = {}
        self._stop_sent: dict[tuple[str, int], float] = {}
        self._node_running: dict[str, tuple[datetime, set[tuple[str, int, int]]]] = {}
        self._redis_outage = False
        self._housekeeping_at = 0.0
        self._full_pass_at = 0.0
        self._queue_changed = True
        self._lease_renewed_at = 0.0
        self.stop_event = threading.Event()
        self.stale_writes = 0

    # -- leadership ---------------------------------------------------------------------------

    def _hold_lease(self) -> bool:
        now = time.monotonic()
        if now - self._lease_renewed_at < LEASE_RENEW_S:
            return True
        key = transport.SCHEDULER_LEASE_KEY
        held = bool(self.redis.eval(_RENEW_LUA, 1, key, self.identity, LEASE_TTL_MS)) or bool(
            self.redis.set(key, self.identity, nx=True, px=LEASE_TTL_MS)
        )
        if held:
            self._lease_renewed_at = now
        else:
            self._lease_renewed_at = 0.0
        return held

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        leading = False
        while not self.stop_event.is_set():
            try:
                if not self._hold_lease():
                    if leading:
                        log.warning("lost the scheduler lease; standing by")
                    leading = False
                    self.stop_event.wait(LEASE_RENEW_S)
                    continue
                if not leading:
                    log.info("scheduler %s leads", self.identity)
                    self._become_leader()
                    leading = True
                self.step()
            except redis.RedisError as exc:
                log.warning("redis unavailable: %s", exc)
                self._redis_outage = True
                self.stop_event.wait(1.0)

    def _become_leader(self) -> None:
        try:
            self.redis.xgroup_create(transport.EVENTS_STREAM, transport.EVENTS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        now = time.monotonic()
        with self.sessions() as session:
            # Fresh lease on life for every node: heartbeats are judged from now on, not from the past.
            self._heartbeat_seen = {n: now for n in session.scalars(select(Node.id).where(Node.state != "lost"))}
        self._consume(pending=True)
        self.dispatcher.reconcile(self.sessions)

    def step(self) -> None:
        self._consume(pending=False, block_ms=IDLE_WAKE_MS)
        if self._redis_outage:
            # Nobody could heartbeat while Redis was away: judge the nodes from now on.
            self._redis_outage = False
            now = time.monotonic()
            self._heartbeat_seen = dict.fromkeys(self._heartbeat_seen, now)
        self._tick()

    def _consume(self, pending: bool, block_ms: int | None = None) -> None:
        """Read a batch of events, apply it in one transaction, then acknowledge it."""
        start_id = "0" if pending else ">"
        while True:
            try:
                reply: Any = self.redis.xreadgroup(
                    transport.EVENTS_GROUP,
                    "leader",
                    {transport.EVENTS_STREAM: start_id},
                    count=EVENT_BATCH,
                    block=None if pending else block_ms,
                )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost its data: rebuild our stream group and re-send what never started.
                log.warning("events stream lost (Redis was wiped); recreating it")
                self._become_leader()
                return
            entries = reply[0][1] if reply else []
            if not entries:
                return
            self._apply([(entry_id, transport.decode(fields)) for entry_id, fields in entries if fields])
            self.redis.xack(transport.EVENTS_STREAM, transport.EVENTS_GROUP, *[e[0] for e in entries])
            if not pending or len(entries) < EVENT_BATCH:
                return
            block_ms = None

    def _apply(self, events: list[tuple[bytes, dict[str, Any]]]) -> None:
        effects = Effects()
        now = utcnow()
        with self.sessions.begin() as session:
            part_events: list[dict[str, Any]] = []
            for _entry_id, event in events:
                if event.get("kind") in ("part_started", "part_exited"):
                    part_events.append(event)
                    continue
                # Keep the order: part events before this one are applied first.
                outcomes.apply_part_events(session, part_events, now, effects)
                part_events = []
                session.flush()
                self._apply_one(session, event, now, effects)
            outcomes.apply_part_events(session, part_events, now, effects)
        for latency_s in effects.start_latencies_s:
            self.metrics.observe(START_LATENCY_SECONDS, latency_s)
        self._after_commit(effects)

    def _apply_one(self, session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
        kind = event.get("kind")
        if kind == "wake":
            self._queue_changed = True
        elif kind == "logs_done":
            outcomes.logs_done(session, event, now, effects)
        elif kind == "node_register":
            self._register_node(session, event, now, effects)
        elif kind == "heartbeat":
            self._heartbeat(session, event, now, effects)

    def _after_commit(self, effects: Effects) -> None:
        self.stale_writes += effects.stale_writes
        for node_id, job_id, attempt, reason in effects.stops:
            self.dispatcher.send_stop(node_id, job_id, attempt, reason)
        if effects.ended_attempts:
            self.dispatcher.forget_secrets(effects.ended_attempts)

    # -- nodes --------------------------------------------------------------------------------

    def _register_node(self, session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
        node = session.get(Node, event["node"])
        if node is None:
            node = Node(id=event["node"], registered_at=now, state="up", session=event["session"])
            session.add(node)
        elif node.session != event["session"]:
            # The worker restarted: whatever it ran before is gone with its old process.
            lost = outcomes.mark_node_lost(session, node, now, effects)
            if lost:
                log.warning("node %s restarted; requeued %d attempt(s)", node.id, lost)
            node.state = "up" if node.state != "draining" else "draining"
        elif node.state == "lost":
            node.state = "up"
        node.session = event["session"]
        node.pool, node.address = event["pool"], event["address"]
        node.slots, node.gpus = int(event["slots"]), list(event.get("gpus") or [])
        node.memory_bytes, node.labels = event.get("memory_bytes"), dict(event.get("labels") or {})
        node.last_heartbeat_at = now
        self._heartbeat_seen[node.id] = time.monotonic()

    def _heartbeat(self, session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
        node_id = event["node"]
        node = session.get(Node, node_id)
        if node is None or node.session != event["session"] or node.state == "lost":
            if event.get("registration"):
                self._register_node(session, event["registration"], now, effects)
            node = session.get(Node, node_id)
            if node is None:
                return
        self._heartbeat_seen[node_id] = time.monotonic()
        self.metrics.heartbeat(event)
        self._node_running[node_id] = (now, {(j, int(a), int(r)) for j, a, r in event.get("running") or []})
        if time.monotonic() - self._heartbeat_written.get(node_id, 0.0) > HEARTBEAT_DB_WRITE_S:
            node.last_heartbeat_at = now
            self._heartbeat_written[node_id] = time.monotonic()
        self._stop_strays(session, node_id, event.get("running") or [], effects)

    def _stop_strays(self, session: Session, node_id: str, running: list[list[Any]], effects: Effects) -> None:
        """Processes of attempts the database no longer gives this node are killed (fencing)."""
        for job_id, attempt, rank in running:
            part = session.get(Part, (job_id, int(attempt), int(rank)))
            if part is None or not part.active or part.node_id != node_id:
                effects.stops.append((node_id, job_id, int(attempt), "stale"))

    def _check_liveness(self, session: Session, effects: Effects) -> None:
        deadline = time.monotonic() - self.settings.node_lost_after_s
        now = utcnow()
        for node in session.scalars(select(Node).where(Node.state.in_(("up", "draining")))):
            seen = self._heartbeat_seen.setdefault(node.id, time.monotonic())
            if seen < deadline:
                count = outcomes.mark_node_lost(session, node, now, effects)
                log.warning(
                    "node %s lost (no heartbeat for %.0f s); requeued %d attempt(s)",
                    node.id,
                    self.settings.node_lost_after_s,
                    count,
                )

    # -- periodic work ------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._housekeeping_at >= HOUSEKEEPING_PERIOD_S:
            self._housekeeping_at = now
            effects = Effects()
            with self.sessions.begin() as session:
                self._check_liveness(session, effects)
                self._send_cancels(session, effects)
                self._redispatch_lost_messages(session)
            self._after_commit(effects)
        self.autoscaler.tick(self.sessions, self._after_commit)  # throttled: every few seconds
        # A full pass reads the whole queue window and writes pending reasons: on submissions and
        # cancels, and at least every FULL_PASS_PERIOD_S. In between, when only parts started or
        # ended, a fast pass looks at the head of the queue to refill the slots that freed.
        full = self._queue_changed or now - self._full_pass_at >= FULL_PASS_PERIOD_S
        if full:
            self._queue_changed, self._full_pass_at = False, now
        with self.metrics.timed_pass():
            placed = self.passes.run(self.sessions, full=full)
        self.metrics.flush()
        if placed:
            log.debug("placed %d job(s)", placed)

    def _redispatch_lost_messages(self, session: Session) -> None:
        cutoff = utcnow() - timedelta(seconds=REDISPATCH_AFTER_S)
        rows = session.execute(
            select(Part.job_id, Part.attempt, Part.rank, Part.node_id, Part.dispatched_at).where(
                Part.active.is_(True), Part.state == "scheduled", Part.dispatched_at < cutoff
            )
        ).tuples()
        resend: set[tuple[str, int]] = set()
        for job_id, attempt, rank, node_id, dispatched_at in rows:
            seen_at, running = self._node_running.get(node_id, (None, set()))
            margin = timedelta(seconds=REDISPATCH_HEARTBEAT_MARGIN_S)
            heard_since = seen_at is not None and dispatched_at is not None and seen_at > dispatched_at + margin
            if heard_since and (job_id, attempt, rank) not in running:
                resend.add((job_id, attempt))
        if resend:
            log.warning("re-sending %d attempt(s) whose messages were lost", len(resend))
            self.dispatcher.send_parts(session, sorted(resend), resend=True)

    def _send_cancels(self, session: Session, effects: Effects) -> None:
        rows = session.execute(
            select(Part.node_id, Part.job_id, Part.attempt)
            .join(Job, (Job.id == Part.job_id) & (Job.attempt == Part.attempt))
            .where(Job.cancel_requested.is_(True), Part.active.is_(True))
        ).all()
        now = time.monotonic()
        for node_id, job_id, attempt in rows:
            if now - self._stop_sent.get((job_id, attempt), 0.0) > STOP_RESEND_S:
                effects.stops.append((node_id, job_id, attempt, "cancelled"))
                self._stop_sent[(job_id, attempt)] = now
        if len(self._stop_sent) > 10_000:
            self._stop_sent = {k: v for k, v in self._stop_sent.items() if now - v < 3600}
        # A cancelled job whose attempt was placed but not yet dispatched has no parts running.
        session.execute(
            update(Job)
            .where(Job.cancel_requested.is_(True), Job.state == "queued")
            .values(state="cancelled", ended_at=utcnow())
        )
