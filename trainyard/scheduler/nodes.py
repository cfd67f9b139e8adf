"""What the leader knows of nodes: registrations, heartbeats, liveness, setup tasks, and stray processes.

A node that registers (a new worker session) in a pool with a setup task is `preparing` until
it reports the task's end: then `up`, or `unusable` with the error and the task's log. While it
prepares, the `setup` message is re-sent every SETUP_RESEND_S (a lost message only delays it;
the node runs the task once per session and repeats its result).

Heartbeats are applied to the database at most every HEARTBEAT_DB_WRITE_S per node (the
database shows a recent time, not every beat); liveness is judged in memory (`Liveness`), on
heartbeats this leader observed itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard.db.models import Event, Node, Part, Pool, utcnow
from trainyard.scheduler import outcomes
from trainyard.scheduler.liveness import Liveness
from trainyard.scheduler.outcomes import Effects
from trainyard.spec import SERVING_NODE_STATES, UNREADY_NODE_STATES, NodeState

log = logging.getLogger(__name__)

HEARTBEAT_DB_WRITE_S = 5.0
SETUP_RESEND_S = 10.0
# Nodes in these states heartbeat and can be lost; only `up` ones take new work.
WATCHED_STATES = (*SERVING_NODE_STATES, *UNREADY_NODE_STATES, NodeState.STOPPING.value)


def pool_setup(session: Session, pool: str) -> dict[str, Any] | None:
    """The pool's setup task as stored by PUT /v1/pools/{name} (secrets encrypted), or None."""
    row = session.get(Pool, pool)
    setup = (row.settings or {}).get("setup") if row is not None else None
    if not setup:
        return None
    return {**setup, "volumes": list((row.settings or {}).get("volumes") or []) if row is not None else []}


def setup_message(node: Node, setup: dict[str, Any]) -> dict[str, Any]:
    return {"node": node.id, "kind": "setup", "session": node.session, "command": setup["command"],
            "env": dict(setup.get("env") or {}), "secrets_enc": setup.get("secrets_enc"),
            "timeout_s": float(setup.get("timeout_s") or 1800.0),
            "volumes": list(setup.get("volumes") or [])}  # fmt: skip


class NodeTracker:
    def __init__(self, lost_after_s: float, clock: Callable[[], float] = time.monotonic,
                 on_heartbeat: Callable[[dict[str, Any]], None] | None = None):  # fmt: skip
        self.clock = clock
        self.liveness = Liveness(lost_after_s, clock)
        self._written: dict[str, float] = {}
        # node → (when its last heartbeat was applied, the parts it said it runs)
        self.running: dict[str, tuple[datetime, set[tuple[str, int, int]]]] = {}
        self._on_heartbeat = on_heartbeat
        self._setup_sent: dict[str, float] = {}  # node → when its setup message last went out
        self._setups_checked_at = float("-inf")

    def reset(self) -> None:
        """Leadership (re)started: judge every node from now on; forget what an older term saw."""
        self.liveness.reset()
        self._written.clear()
        self.running.clear()
        self._setup_sent.clear()

    def register(self, session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
        node = session.get(Node, event["node"])
        new_session = node is None or node.session != event["session"]
        was_lost = node is not None and node.state == NodeState.LOST
        if node is None:
            node = Node(id=event["node"], registered_at=now, state=NodeState.UP.value, session=event["session"])
            session.add(node)
        elif node.session != event["session"]:
            # The worker restarted: whatever it ran before is gone with its old process.
            lost = outcomes.mark_node_lost(session, node, now, effects)
            if lost:
                log.warning("node %s restarted; requeued %d attempt(s)", node.id, lost)
            node.state = NodeState.DRAINING.value if node.state == NodeState.DRAINING else NodeState.UP.value
        elif node.state == NodeState.LOST:
            node.state = NodeState.UP.value
        node.session = event["session"]
        node.pool, node.address = event["pool"], event["address"]
        node.slots, node.gpus = int(event["slots"]), list(event.get("gpus") or [])
        node.memory_bytes, node.labels = event.get("memory_bytes"), dict(event.get("labels") or {})
        node.host_volumes = sorted(str(p) for p in event.get("host_volumes") or [])
        node.last_heartbeat_at = now
        self.liveness.observe(node.id)
        self._written[node.id] = self.clock()
        setup = pool_setup(session, node.pool) if new_session or was_lost else None
        if setup is not None:
            # A lost node of the same session asks again: the node answers with its result at once.
            if node.state != NodeState.DRAINING:
                node.state, node.state_detail = NodeState.PREPARING.value, None
            node.setup_log = None
            effects.setups.append(setup_message(node, setup))
            self._setup_sent[node.id] = self.clock()
        elif new_session:
            node.state_detail, node.setup_log = None, None

    def setup_done(self, session: Session, event: dict[str, Any], now: datetime) -> None:
        """The node's setup task ended: `up`, or `unusable` with the error (only for the session it ran in)."""
        node = session.get(Node, event["node"])
        if node is None or node.session != event["session"]:
            return  # an older worker session's answer
        self._setup_sent.pop(node.id, None)
        node.setup_log = event.get("log_key")
        if node.state != NodeState.PREPARING:
            return
        ok = bool(event.get("ok"))
        node.state = NodeState.UP.value if ok else NodeState.UNUSABLE.value
        node.state_detail = None if ok else str(event.get("error") or "the setup task failed")[:500]
        session.add(
            Event(
                at=now,
                kind="node_setup",
                node_id=node.id,
                detail={"ok": ok, "exit_code": event.get("exit_code"), "error": node.state_detail},
            )
        )
        if not ok:
            log.warning("node %s is unusable: %s", node.id, node.state_detail)

    def leaving(self, session: Session, event: dict[str, Any]) -> None:
        """The worker shuts down: it takes no new work; once silent it is lost like any other."""
        node = session.get(Node, event["node"])
        if node is not None and node.session == event["session"] and node.state in (NodeState.UP, *UNREADY_NODE_STATES):
            node.state = NodeState.STOPPING.value

    def resend_setups(self, session: Session, effects: Effects) -> None:
        """Nodes still preparing get their setup message again every SETUP_RESEND_S."""
        now_s = self.clock()
        if now_s - self._setups_checked_at < SETUP_RESEND_S:
            return  # housekeeping runs every 0.5 s: the query need not
        self._setups_checked_at = now_s
        for node in session.scalars(select(Node).where(Node.state == NodeState.PREPARING.value)):
            if now_s - self._setup_sent.get(node.id, float("-inf")) < SETUP_RESEND_S:
                continue
            setup = pool_setup(session, node.pool)
            if setup is None:  # the pool's setup task was removed meanwhile
                node.state = NodeState.UP.value
                continue
            effects.setups.append(setup_message(node, setup))
            self._setup_sent[node.id] = now_s

    def heartbeat(self, session: Session, event: dict[str, Any], now: datetime, effects: Effects) -> None:
        node_id = event["node"]
        node = session.get(Node, node_id)
        if node is None or node.session != event["session"] or node.state == NodeState.LOST:
            if event.get("registration"):
                self.register(session, event["registration"], now, effects)
            node = session.get(Node, node_id)
            if node is None:
                return
        self.liveness.observe(node_id)
        if self._on_heartbeat is not None:
            self._on_heartbeat(event)
        running = [(str(j), int(a), int(r)) for j, a, r in event.get("running") or []]
        self.running[node_id] = (now, set(running))
        if self.clock() - self._written.get(node_id, float("-inf")) > HEARTBEAT_DB_WRITE_S:
            node.last_heartbeat_at = now
            self._written[node_id] = self.clock()
        stop_strays(session, node_id, running, effects)

    def check(self, session: Session, effects: Effects, now: datetime | None = None) -> list[str]:
        """Mark lost every node silent for `lost_after_s`; returns their ids."""
        now = now or utcnow()
        nodes = {n.id: n for n in session.scalars(select(Node).where(Node.state.in_(WATCHED_STATES)))}
        lost = self.liveness.lost(nodes)
        for node_id in lost:
            count = outcomes.mark_node_lost(session, nodes[node_id], now, effects)
            self.liveness.forget(node_id)
            log.warning("node %s lost (no heartbeat for %.0f s); requeued %d attempt(s)",
                        node_id, self.liveness.lost_after_s, count)  # fmt: skip
        return lost


def stop_strays(session: Session, node_id: str, running: list[tuple[str, int, int]], effects: Effects) -> None:
    """Processes of attempts the database no longer gives this node are killed (fencing)."""
    for job_id, attempt, rank in running:
        part = session.get(Part, (job_id, attempt, rank))
        if part is None or not part.active or part.node_id != node_id:
            effects.stops.append((node_id, job_id, attempt, "stale"))
