"""The node agent: registers the node, heartbeats, runs parts through launchers, obeys control messages.

The agent never touches the database: it reports through the Redis events stream and the
scheduler applies what it says, compare-and-set on the attempt number.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from trainyard import transport, wire
from trainyard.config import Settings, secret
from trainyard.crypto import decrypt_secrets
from trainyard.lognotify import LogNotifier
from trainyard.storage_adapters import open_storage
from trainyard.workers import volumes, watchdog
from trainyard.workers.capacity import NodeCapacity
from trainyard.workers.job_metrics import job_python_env
from trainyard.workers.launchers import LaunchContext, PrepareFailed, gang_token
from trainyard.workers.logpump import PartLogs, SpoolBudget
from trainyard.workers.node_setup import NodeSetup
from trainyard.workers.outbox import EventOutbox
from trainyard.workers.part_runner import (
    PUMP_DRAIN_TIMEOUT_S,
    CheckpointSync,
    Metrics,
    PartRun,
    PartRunner,
    Relay,
    Staging,
    Volumes,
    WallClock,
)

log = logging.getLogger(__name__)

EVENT_RETRY_MAX_S = 5.0
CONTROL_POLL_S = 1.0
CANCELLED_MEMORY_S = 3600.0
SEEN_PARTS_MAX = 100_000


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    pool: str
    address: str
    slots: int
    gpus: list[int] = field(default_factory=list)
    memory_bytes: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Host directories this node has (NFS, Lustre, local disks): where jobs' host volumes may be placed.
    host_volumes: list[str] = field(default_factory=list)


class NodeAgent:
    """One per node: the part of `trainyard worker` that is not Celery."""

    def __init__(self, settings: Settings, node: NodeConfig):
        self.settings, self.node = settings, node
        self.session_id = secrets.token_hex(8)
        redis_url = settings.redis_url.get_secret_value()
        self.redis = transport.redis_client(redis_url)
        self.outbox = EventOutbox(transport.redis_client(redis_url))
        self.storage = open_storage(settings.storage_url)
        self.spool_budget = SpoolBudget(settings.spool_max_bytes)  # shared by every part of this node
        self.log_notifier = LogNotifier(self.redis)  # tells API followers that log bytes arrived
        self.node_dir = settings.home / "nodes" / node.node_id
        self._active: dict[tuple[str, int, int], PartRun] = {}  # parts whose prepare or command runs
        self._stopped_attempts: dict[tuple[str, int], tuple[str, float]] = {}
        # Parts this process has taken on: a re-sent message for one of them is ignored, so a
        # scheduler that re-dispatches after a crash or a Redis loss never starts a part twice.
        self._seen_parts: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self.capacity = NodeCapacity(node.slots)
        self.setup = NodeSetup(node.node_id, node.pool, self.session_id, self.node_dir, self.storage,
                               secret(settings.secret_key), self.publish)  # fmt: skip
        self._waiting: set[tuple[str, int, int]] = set()  # parts received, waiting for their slots to free
        self._lock = threading.Lock()
        self._shutdown = threading.Event()
        # Around each part's command, in this order (see part_runner for the steps).
        self.runner = PartRunner(
            [WallClock(), CheckpointSync(self.storage), Staging(self.storage, self.node_dir, node.node_id),
             Volumes(self.node_dir), Relay(self.redis), Metrics(self.publish)],
            self,
        )  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        self._watchdog = watchdog.start(self.session_id)
        self._recover_spools()
        volumes.clean_leftovers(self.node_dir)  # mounts a crashed worker left behind
        self.publish(self._registration())
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._control_loop, name="control", daemon=True).start()

    def _recover_spools(self) -> None:
        """Ship what an earlier process of this node left in its spool: those parts are gone, their bytes are not.

        No logs_done follows: the scheduler ended those parts when the node restarted (their
        finalisation would be a stale write); readers get the bytes all the same.
        """
        for spool_dir in sorted((self.node_dir / "spool").glob("*")):
            if PartLogs.recover(self.storage, spool_dir, self.spool_budget, self.log_notifier.notify) is not None:
                log.info("shipping the leftover spool %s", spool_dir.name)

    def shutdown(self) -> None:
        """Take no new parts, stop heartbeating and kill every running part: the scheduler requeues them."""
        self._shutdown.set()
        self.publish({"kind": "node_leaving"})
        with self._lock:
            active = list(self._active.values())
        for part in active:
            part.stop("node_shutdown", grace_s=2.0)

    def _registration(self) -> dict[str, Any]:
        node = self.node
        return {
            "kind": "node_register",
            "node": node.node_id,
            "session": self.session_id,
            "pool": node.pool,
            "address": node.address,
            "slots": node.slots,
            "gpus": node.gpus,
            "memory_bytes": node.memory_bytes,
            "labels": node.labels,
            "host_volumes": node.host_volumes,
        }

    # -- reporting ---------------------------------------------------------------------------

    def publish(self, payload: dict[str, Any]) -> None:
        """Send an event to the scheduler; while Redis is away, keep trying (events are not dropped)."""
        payload.setdefault("node", self.node.node_id)
        payload.setdefault("session", self.session_id)
        self.outbox.put(payload)

    def _heartbeat_loop(self) -> None:
        period_s = self.settings.heartbeat_period_s
        while not self._shutdown.wait(period_s):
            with self._lock:
                running = [list(key) for key in self._active] + [list(key) for key in self._waiting]
            try:
                transport.publish_event(
                    self.redis,
                    {
                        "kind": "heartbeat",
                        "node": self.node.node_id,
                        "session": self.session_id,
                        "running": running,
                        "registration": self._registration(),
                    },
                )
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- control -----------------------------------------------------------------------------

    def _control_loop(self) -> None:
        key = transport.node_control_key(self.node.node_id)
        while not self._shutdown.is_set():
            try:
                item = self.redis.blpop([key], timeout=CONTROL_POLL_S)
            except redis.RedisError as exc:
                log.warning("control channel unavailable: %s", exc)
                time.sleep(CONTROL_POLL_S)
                continue
            if item is not None:
                self.handle_control(json.loads(item[1]))

    def handle_control(self, message: dict[str, Any]) -> None:
        try:
            control = wire.parse_control(message)
        except wire.InvalidMessage as exc:
            log.warning("ignoring an invalid control message: %s", exc)
            return
        if isinstance(control, wire.Setup):
            self.setup.handle(control)
        else:
            self._stop(control)

    def _stop(self, stop: wire.Stop) -> None:
        job_id, attempt, reason, grace_s = stop.job_id, stop.attempt, stop.reason or "cancelled", stop.grace_s
        with self._lock:
            self._forget_old_stops()
            self._stopped_attempts[(job_id, attempt)] = (reason, time.monotonic())
            targets = [(k, p) for k, p in self._active.items() if k[0] == job_id and k[1] <= attempt]
        self.capacity.wake()  # a part waiting for slots may be the one stopped
        for _key, part in targets:
            threading.Thread(target=part.stop, args=(reason, grace_s), daemon=True).start()

    def _forget_old_stops(self) -> None:
        horizon = time.monotonic() - CANCELLED_MEMORY_S
        for key in [k for k, (_, at) in self._stopped_attempts.items() if at < horizon]:
            del self._stopped_attempts[key]

    # -- running a part ----------------------------------------------------------------------

    def _secrets_for(self, message: dict[str, Any]) -> dict[str, str]:
        if not message.get("has_secrets"):
            return {}
        token: Any = self.redis.get(transport.secrets_key(message["job_id"], int(message["attempt"])))
        key = secret(self.settings.secret_key)
        if token is None or not key:
            raise RuntimeError("the job's secrets could not be fetched for launch")
        return decrypt_secrets(token.decode() if isinstance(token, bytes) else str(token), key)

    def _context(self, message: dict[str, Any]) -> LaunchContext:
        job_id, attempt, rank = message["job_id"], int(message["attempt"]), int(message["rank"])
        return LaunchContext(
            job_id=job_id,
            name=message["name"],
            attempt=attempt,
            rank=rank,
            num_nodes=int(message["num_nodes"]),
            node_hosts=list(message["node_hosts"]),
            node_address=self.node.address,
            spec=message["spec"],
            gpus=[int(g) for g in message.get("gpus", [])],
            workdir=self.node_dir / "work" / f"{job_id}-{attempt}-{rank}",
            checkpoint_dir=self.node_dir / "checkpoints" / job_id,
            master_port=int(message.get("master_port", 29500)),
            secrets=self._secrets_for(message),
            extra_env={watchdog.SESSION_ENV: self.session_id, **job_python_env(self.node_dir, message["spec"])},
            params={str(k): str(v) for k, v in (message.get("params") or {}).items()},
            gang_token=gang_token(secret(self.settings.secret_key), job_id, attempt),
        )

    def admit(self, message: dict[str, Any]) -> bool:
        """Wait until the part's slots are free on this node; False (and reported) if stopped meanwhile."""
        key = (message["job_id"], int(message["attempt"]), int(message["rank"]))
        cpus = float(message.get("cpus") or 0.0)
        if self._shutdown.is_set():  # sent before the scheduler heard this node is leaving
            self.publish(
                {
                    "kind": "part_exited",
                    "job_id": key[0],
                    "attempt": key[1],
                    "rank": key[2],
                    "exit_code": None,
                    "reason": "node_shutdown",
                    "logs_complete": True,
                }
            )
            return False
        with self._lock:
            self._waiting.add(key)
        try:
            admitted = self.capacity.acquire(cpus, lambda: (key[0], key[1]) in self._stopped_attempts)
        finally:
            with self._lock:
                self._waiting.discard(key)
        if not admitted:
            reason = self._stopped_attempts.get((key[0], key[1]), ("cancelled", 0.0))[0]
            self.publish(
                {
                    "kind": "part_exited",
                    "job_id": key[0],
                    "attempt": key[1],
                    "rank": key[2],
                    "exit_code": None,
                    "reason": reason,
                    "logs_complete": True,
                }
            )
        return admitted

    def release(self, message: dict[str, Any]) -> None:
        self.capacity.release(float(message.get("cpus") or 0.0))

    def abort_part(self, message: dict[str, Any], error: BaseException) -> None:
        """A part's handling crashed inside trainyard: stop what it started and report it failed."""
        key = (message["job_id"], int(message["attempt"]), int(message["rank"]))
        with self._lock:
            part = self._active.pop(key, None)
        if part is not None:
            part.stop(part.stop_reason or "exit", grace_s=2.0)
        self.publish(
            {
                "kind": "part_exited",
                "job_id": key[0],
                "attempt": key[1],
                "rank": key[2],
                "exit_code": 1,
                "reason": "exit",
                "logs_complete": True,
                "error": f"trainyard node error: {type(error).__name__}: {error}",
            }
        )

    def run_part(self, message: dict[str, Any]) -> int:
        """The body of the `trainyard.run` task: run one part to its end and report it."""
        job_id, attempt, rank = message["job_id"], int(message["attempt"]), int(message["rank"])
        key = (job_id, attempt, rank)
        with self._lock:
            stopped = self._stopped_attempts.get((job_id, attempt))
            duplicate = key in self._seen_parts
            self._seen_parts[key] = None
            while len(self._seen_parts) > SEEN_PARTS_MAX:
                self._seen_parts.popitem(last=False)
        if duplicate:
            log.info("ignoring a second message for part %s", key)
            return 0
        if stopped is not None:
            self.publish(
                {
                    "kind": "part_exited",
                    "job_id": job_id,
                    "attempt": attempt,
                    "rank": rank,
                    "exit_code": None,
                    "reason": stopped[0],
                    "logs_complete": True,
                }
            )
            return 0
        logs = PartLogs(
            self.storage,
            self.node_dir / "spool" / f"{job_id}-{attempt}-{rank}",
            job_id,
            attempt,
            rank,
            budget=self.spool_budget,
            notify=self.log_notifier.notify,
        )
        return self.runner.run(PartRun(key=key, message=message, logs=logs))

    # -- the runner's steps (part_runner.PartSteps) ------------------------------------------

    def context(self, message: dict[str, Any]) -> LaunchContext:
        return self._context(message)

    def run_prepare(self, run: PartRun) -> None:
        """Run the spec's `prepare` on this node before the command, output into the job's logs.

        Raises PrepareFailed when it fails (reason prepare_failed) or is stopped meanwhile.
        """
        assert run.launcher is not None and run.ctx is not None
        running = run.launcher.prepare(run.ctx)
        if running is None:
            return
        run.running = running
        with self._lock:
            self._active[run.key] = run
        pumps = [run.logs.pump_pipes(running.stdout_fd, running.stderr_fd)]
        exit_code = run.launcher.wait(running)
        for pump in pumps:
            pump.join(PUMP_DRAIN_TIMEOUT_S)
        if any(p.is_alive() for p in pumps):
            run.launcher.stop(running, grace_s=1.0)  # a background child of prepare must not outlive it
        with self._lock:
            self._active.pop(run.key, None)
            stopped = self._stopped_attempts.get(run.key[:2])
        run.running = None
        if run.stop_reason or stopped:
            raise PrepareFailed(exit_code, run.stop_reason or (stopped[0] if stopped else "cancelled"))
        if exit_code != 0:
            raise PrepareFailed(exit_code)

    def started(self, run: PartRun) -> None:
        assert run.running is not None
        with self._lock:
            self._active[run.key] = run
        job_id, attempt, rank = run.key
        self.publish(
            {"kind": "part_started", "job_id": job_id, "attempt": attempt, "rank": rank, "pid": run.running.pid}
        )

    def finished(self, run: PartRun, complete: bool) -> None:
        with self._lock:
            self._active.pop(run.key, None)
        job_id, attempt, rank = run.key
        report = {"job_id": job_id, "attempt": attempt, "rank": rank}
        self.publish(
            {
                "kind": "part_exited",
                **report,
                "exit_code": run.exit_code,
                "reason": run.stop_reason or "exit",
                "logs_complete": complete,
                **run.report,
            }
        )
        self._report_logs_done_later(run.logs, complete, report)

    def _report_logs_done_later(self, logs: PartLogs, complete: bool, report: dict[str, Any]) -> None:
        """The exit report said the logs were incomplete (store down): say so when they are in."""
        if not complete:
            logs.notify_when_shipped(lambda: self.publish({"kind": "logs_done", **report}))


def node_dir(home: Path, node_id: str) -> Path:
    return home / "nodes" / node_id
