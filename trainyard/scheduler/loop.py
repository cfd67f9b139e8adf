"""The scheduler loop: wake on events (or a short timer), apply them, place queued jobs, dispatch.

One scheduler leads at a time, by a lease in the database (scheduler/lease.py); the others
stand by and try to take it every second. Every write transaction of the leader is fenced by
that lease, and the leader re-checks it (against a monotonic deadline, and for pauses) before
each step of the loop. Everything a leader knows it rebuilds from the database when it starts
leading, so a restart, a failover or a pause loses nothing.

The pieces: `events` (reading the stream as this scheduler's own consumer), `nodes`
(registrations, heartbeats, liveness), `outcomes` (part events applied compare-and-set),
`passes` (snapshot → plan → claims → dispatch), `housekeeping` (cancel stops, lost messages),
`autoscale` (pool sizes).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from trainyard import transport
from trainyard.config import Settings
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.db.models import utcnow
from trainyard.metrics import START_LATENCY_SECONDS, SchedulerMetrics
from trainyard.scheduler import housekeeping, live_metrics, outcomes
from trainyard.scheduler.autoscale import Autoscaler
from trainyard.scheduler.dispatch import Dispatcher
from trainyard.scheduler.events import EventReader, StreamLost
from trainyard.scheduler.lease import RENEW_EVERY_S, Deposed, LeaderLease, fenced_sessions
from trainyard.scheduler.nodes import NodeTracker
from trainyard.scheduler.outcomes import Effects
from trainyard.scheduler.passes import PassRunner
from trainyard.scheduler.snapshot import SnapshotReader

log = logging.getLogger(__name__)

IDLE_WAKE_MS = 500
HOUSEKEEPING_PERIOD_S = 0.5
FULL_PASS_PERIOD_S = 1.0
ORPHAN_CLAIM_PERIOD_S = 2.0


class Scheduler:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.engine = make_engine(settings.database_url.get_secret_value())
        self.identity = secrets.token_hex(6)
        self.lease = LeaderLease(make_sessionmaker(self.engine), self.identity, settings.scheduler_lease_s, mono=clock)
        # Every transaction the scheduler commits goes through the lease's fence.
        self.sessions = fenced_sessions(make_sessionmaker(self.engine), self.lease)
        self.redis = transport.redis_client(settings.redis_url.get_secret_value())
        self.dispatcher = Dispatcher(settings, self.redis)
        self.passes = PassRunner(
            self.dispatcher,
            preempt_grace_s=settings.preempt_grace_s,
            reader=SnapshotReader(gpu_quotas=settings.gpu_quotas),
        )
        self.autoscaler = Autoscaler()  # sizes pools with scale settings (PUT /v1/pools/{name})
        self.metrics = SchedulerMetrics(self.redis)
        self.events = EventReader(self.redis, consumer=f"scheduler-{self.identity}")
        self.nodes = NodeTracker(settings.node_lost_after_s, clock, on_heartbeat=self.metrics.heartbeat)
        self.cancels = housekeeping.CancelStops(clock)
        self.early_stopper = live_metrics.EarlyStopper(clock)
        self._housekeeping_at = float("-inf")
        self._orphans_at = float("-inf")
        self._full_pass_at = float("-inf")
        self._queue_changed = True
        self.stop_event = threading.Event()
        self.stale_writes = 0

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.run_once()
        finally:
            try:
                self.events.flush_acks()  # what this scheduler applied is not applied again by the next
            except redis.RedisError as exc:
                log.warning("could not acknowledge the last events: %s", exc)
            try:
                self.lease.release()
            except Exception as exc:  # the database may be gone at shutdown: the lease then expires
                log.warning("could not release the scheduler lease: %s", exc)

    def run_once(self) -> None:
        """One turn: stand by, take the lease, or lead one step."""
        try:
            if not self.lease.leading:
                if not self.lease.try_acquire():
                    self.stop_event.wait(RENEW_EVERY_S)
                    return
                self._become_leader()
            if not self.lease.keep():
                return  # deposed or paused: the next turn tries to lead again, from the database
            self.step()
        except Deposed as exc:
            log.warning("scheduler %s stopped acting: %s", self.identity, exc)
            self.lease.step_down(str(exc))
        except redis.RedisError as exc:
            log.warning("redis unavailable: %s", exc)
            # Nobody could heartbeat while Redis was away: judge the nodes from its return on.
            self.nodes.liveness.reset()
            self.stop_event.wait(1.0)
        except OperationalError as exc:
            log.warning("database unavailable: %s", exc)
            self.lease.step_down("database unavailable")
            self.stop_event.wait(1.0)

    def _become_leader(self) -> None:
        """Start a term: forget what an earlier term knew, then rebuild it from the database."""
        self.nodes.reset()  # liveness is judged on heartbeats seen from now on
        self.passes.reset()
        self.cancels.reset()
        self.early_stopper.reset()
        self._queue_changed = True
        self.events.ensure_group()
        self._consume(self.events.read(pending=True))
        self._consume(self.events.claim_orphans(min_idle_ms=0))
        self._orphans_at = self.clock()
        self.lease.check()
        self.dispatcher.reconcile(self.sessions)

    def step(self) -> None:
        try:
            entries = self.events.read(block_ms=IDLE_WAKE_MS)
            while True:
                self.lease.check()  # what was read during a pause is applied only if still leading
                self._consume(entries)
                if len(entries) < self.events.batch:
                    break
                entries = self.events.read(block_ms=None)
            if self.clock() - self._orphans_at >= ORPHAN_CLAIM_PERIOD_S:
                self._orphans_at = self.clock()
                self._consume(self.events.claim_orphans())
        except StreamLost:
            # Redis lost its data: recreate the group and re-send what never started.
            log.warning("events stream lost (Redis was wiped); recreating it")
            self.nodes.liveness.reset()
            self._become_leader()
            return
        self.lease.check()
        self._tick()

    def _consume(self, entries: list[tuple[bytes, dict[str, Any]]]) -> None:
        """Apply a batch of events in one fenced transaction, then acknowledge it (with the next read).

        When the database refuses the batch (a value it cannot store), its events are applied
        one by one and the one it still refuses is parked: one bad event never stops the others.
        """
        if not entries:
            return
        try:
            self._apply([event for _entry_id, event in entries])
        except (DataError, IntegrityError) as exc:
            if len(entries) == 1:
                self.events.park(entries[0][0], entries[0][1], str(exc.orig))
                return
            log.warning("the database refused %d events (%s); applying them one by one", len(entries), exc.orig)
            for entry in entries:
                self._consume([entry])
            return
        self.events.ack([entry_id for entry_id, _ in entries])

    def _apply(self, events: list[dict[str, Any]]) -> None:
        effects = Effects()
        now = utcnow()
        reported: set[str] = set()
        with self.sessions.begin() as session:
            # Runs of part events and of metrics events are each applied as one batch, in order:
            # a part's last metrics land before its exit report (which ends the part).
            part_events: list[dict[str, Any]] = []
            metric_events: list[dict[str, Any]] = []

            def flush() -> None:
                outcomes.apply_part_events(session, part_events, now, effects)
                reported.update(live_metrics.apply_metrics(session, metric_events, now, effects))
                part_events.clear()
                metric_events.clear()

            for event in events:
                kind = event.get("kind")
                if kind in ("part_started", "part_exited"):
                    if metric_events:
                        flush()
                    part_events.append(event)
                elif kind == "metrics":
                    if part_events:
                        flush()
                    metric_events.append(event)
                else:
                    flush()
                    session.flush()
                    self._apply_one(session, event, now, effects)
            flush()
            outcomes.record_notifications(session, effects, now)
        self.early_stopper.dirty.update(reported)  # judged by the next housekeeping, once committed
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
            self.nodes.register(session, event, now, effects)
        elif kind == "node_setup_done":
            self.nodes.setup_done(session, event, now)
        elif kind == "node_leaving":
            self.nodes.leaving(session, event)
        elif kind == "heartbeat":
            self.nodes.heartbeat(session, event, now, effects)

    def _after_commit(self, effects: Effects) -> None:
        self.stale_writes += effects.stale_writes
        if effects.gate_due or effects.ended_jobs:
            self.passes.gate_due = True
        for node_id, job_id, attempt, reason in effects.stops:
            self.dispatcher.send_stop(node_id, job_id, attempt, reason)
        if effects.ended_with_secrets:
            self.dispatcher.forget_secrets(effects.ended_with_secrets)
        for message in effects.setups:
            self.dispatcher.send_control(message["node"], {k: v for k, v in message.items() if k != "node"})

    # -- periodic work ------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        if now - self._housekeeping_at >= HOUSEKEEPING_PERIOD_S:
            self._housekeeping_at = now
            effects = Effects()
            resend: list[tuple[str, int]] = []
            with self.sessions.begin() as session:
                self.nodes.check(session, effects)
                self.nodes.resend_setups(session, effects)
                if self.early_stopper.run(session, utcnow()):
                    self._queue_changed = True  # their slots free soon: a full pass follows
                self.cancels.run(session, effects)
                resend = housekeeping.lost_messages(session, self.nodes.running)
                outcomes.record_notifications(session, effects, utcnow())
            self._after_commit(effects)
            if resend:
                log.warning("re-sending %d attempt(s) whose messages were lost", len(resend))
                with self.sessions.begin() as session:
                    self.dispatcher.send_parts(session, resend, resend=True)
            self.lease.check()
        self.autoscaler.tick(self.sessions, self._after_commit)  # throttled: every few seconds
        # A full pass reads the whole queue window and writes pending reasons: on submissions,
        # cancels and ends, and at least every FULL_PASS_PERIOD_S. In between, when only parts
        # started, a fast pass looks at the head of the queue to refill the slots that freed.
        full = self._queue_changed or now - self._full_pass_at >= FULL_PASS_PERIOD_S
        if full:
            self._queue_changed, self._full_pass_at = False, now
        self.lease.check()
        with self.metrics.timed_pass():
            placed = self.passes.run(self.sessions, full=full)
        self.metrics.flush()
        if placed:
            log.debug("placed %d job(s)", placed)
