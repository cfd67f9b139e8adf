"""Dispatch: the part messages the scheduler pushes into node queues, and control messages.

A message goes out only after its attempt is committed; a scheduler that dies in between
re-sends on start-up (`reconcile`) the parts that were written but never marked dispatched.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard import transport
from trainyard.config import Settings
from trainyard.db.models import Job, Node, Part, Pool, utcnow
from trainyard.db.sweeps import fill_specs
from trainyard.scheduler.views import Placement
from trainyard.spec import PartState
from trainyard.sweeps import formatted

SECRETS_TTL_S = 7 * 24 * 3600
MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 12000  # 20000-31999: below Linux's ephemeral ports (32768+), which others may hold


def master_port(job_id: str, attempt: int) -> int:
    return MASTER_PORT_BASE + zlib.crc32(f"{job_id}.{attempt}".encode()) % MASTER_PORT_SPAN


def with_pool_volumes(spec: dict[str, Any], pool_volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec with its pool's volumes added; a job's own volume of the same name or mount path wins."""
    if not pool_volumes:
        return spec
    own = list(spec.get("volumes") or [])
    names = {str(v.get("name", "")).upper() for v in own}
    paths = {str(v.get("mount_path") or v.get("name", "")).rstrip("/") for v in own}
    added = [v for v in pool_volumes if str(v["name"]).upper() not in names
             and str(v.get("mount_path") or v["name"]).rstrip("/") not in paths]  # fmt: skip
    return {**spec, "volumes": added + own} if added else spec


@dataclass(frozen=True)
class PartFields:
    """What a part message says of its part (a Part row has the same attributes)."""

    attempt: int
    rank: int
    gpus: list[int]
    cpus: float


def part_message(job: Job, part: Part | PartFields, hosts: list[str], pool_volumes: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:  # fmt: skip
    """What a node needs to run its part: the spec (secrets removed: names only) with its pool's
    volumes, attempt, rank."""
    return {
        "job_id": job.id,
        "name": job.name,
        "attempt": part.attempt,
        "rank": part.rank,
        "num_nodes": job.nodes,
        "node_hosts": hosts,
        "gpus": list(part.gpus),
        "cpus": part.cpus,
        "master_port": master_port(job.id, part.attempt),
        "has_secrets": job.secrets_enc is not None,
        "spec": with_pool_volumes(job.spec, pool_volumes or []),
        "params": formatted(job.params or {}),  # a sweep point's values: TRAINYARD_PARAM_<NAME>
    }


def task_summary(message: dict[str, Any]) -> str:
    """What Flower shows as the task's arguments: which job, attempt and rank (never secrets)."""
    keys = ("job_id", "name", "attempt", "rank", "num_nodes", "gpus")
    return repr({key: message[key] for key in keys if key in message})


_parts = Part.__table__


def _stamp_where(*unstamped: Any) -> Any:
    return (
        update(_parts)  # type: ignore[arg-type]
        .where(_parts.c.job_id == bindparam("jid"), _parts.c.attempt == bindparam("num"), *unstamped)
        .values(dispatched_at=bindparam("now"))
    )


_STAMP = _stamp_where(_parts.c.dispatched_at.is_(None))  # built once: every pass stamps
_RESTAMP = _stamp_where(_parts.c.state == PartState.SCHEDULED.value)


@dataclass
class Outgoing:
    """Part messages built inside a transaction, to publish once it has committed."""

    messages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # node, task id, kwargs
    secrets: dict[str, str] = field(default_factory=dict)  # Redis key → encrypted secrets
    attempts: list[tuple[str, int]] = field(default_factory=list)


class Dispatcher:
    def __init__(self, settings: Settings, redis_client: redis.Redis):
        self.redis = redis_client
        # No task-sent events: Flower learns of each part from its worker; this halves send cost.
        self.celery = transport.make_celery(
            settings.redis_url.get_secret_value(),
            task_events=False,
            visibility_timeout_s=settings.broker_visibility_timeout_s,
        )

    def send_parts(self, session: Session, job_ids: Sequence[tuple[str, int]], resend: bool = False) -> None:
        """Send every part of the given (job, attempt)s now and stamp them dispatched (re-sends, recovery)."""
        outgoing = self.prepare(session, job_ids)
        self.publish(outgoing)
        self.stamp(session, outgoing.attempts, resend=resend)

    def prepare(self, session: Session, job_ids: Sequence[tuple[str, int]]) -> Outgoing:
        """Read what the part messages of these attempts need, in the transaction that placed them."""
        outgoing = Outgoing()
        if not job_ids:
            return outgoing
        wanted = set(job_ids)
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([j for j, _ in wanted])))}
        fill_specs(session, jobs.values())  # sweep jobs are stored compact: render their spec
        parts = session.scalars(select(Part).where(Part.job_id.in_(list(jobs)), Part.active.is_(True))).all()
        node_ids = {part.node_id for part in parts}
        addresses = dict(session.execute(select(Node.id, Node.address).where(Node.id.in_(node_ids))).all())
        pool_volumes = self._pool_volumes(session, {job.pool for job in jobs.values()})
        by_attempt: dict[tuple[str, int], list[Part]] = {}
        for part in parts:
            if (part.job_id, part.attempt) in wanted:
                by_attempt.setdefault((part.job_id, part.attempt), []).append(part)
        for (job_id, attempt), job_parts in by_attempt.items():
            job = jobs[job_id]
            if job.secrets_enc is not None:
                outgoing.secrets[transport.secrets_key(job_id, attempt)] = job.secrets_enc
            job_parts.sort(key=lambda p: p.rank)
            hosts = [addresses.get(p.node_id, "") for p in job_parts]
            for part in job_parts:
                task_id = f"{job_id}.{attempt}.{part.rank}"
                outgoing.messages.append(
                    (part.node_id, task_id, part_message(job, part, hosts, pool_volumes.get(job.pool)))
                )
            outgoing.attempts.append((job_id, attempt))
        return outgoing

    def prepare_placed(
        self, session: Session, placements: Sequence[Placement], attempts: dict[str, int], addresses: dict[str, str]
    ) -> Outgoing:
        """`prepare` for placements this transaction just wrote: their parts and the nodes' addresses
        are known already, so only the jobs (and their pools' volumes) are read."""
        outgoing = Outgoing()
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([p.job_id for p in placements])))}
        fill_specs(session, jobs.values())  # sweep jobs are stored compact: render their spec
        pool_volumes = self._pool_volumes(session, {job.pool for job in jobs.values()})
        for placement in placements:
            job, attempt = jobs[placement.job_id], attempts[placement.job_id]
            if job.secrets_enc is not None:
                outgoing.secrets[transport.secrets_key(job.id, attempt)] = job.secrets_enc
            ranked = sorted(placement.parts, key=lambda p: p.rank)
            hosts = [addresses.get(p.node_id, "") for p in ranked]
            for part in ranked:
                fields = PartFields(attempt=attempt, rank=part.rank, gpus=part.gpus, cpus=part.cpus)
                message = part_message(job, fields, hosts, pool_volumes.get(job.pool))
                outgoing.messages.append((part.node_id, f"{job.id}.{attempt}.{part.rank}", message))
            outgoing.attempts.append((job.id, attempt))
        return outgoing

    @staticmethod
    def _pool_volumes(session: Session, pools: set[str]) -> dict[str, list[dict[str, Any]]]:
        rows = session.execute(select(Pool.name, Pool.settings).where(Pool.name.in_(pools)))
        return {name: list((settings or {}).get("volumes") or []) for name, settings in rows}

    def publish(self, outgoing: Outgoing) -> None:
        """Secrets first (a node reads them at launch), then the part messages in one batch."""
        if outgoing.secrets:
            pipe = self.redis.pipeline(transaction=False)
            for key, value in outgoing.secrets.items():
                pipe.set(key, value, ex=SECRETS_TTL_S)
            pipe.execute()
        if outgoing.messages:
            self._publish(outgoing.messages)

    def stamp(self, session: Session, attempts: Sequence[tuple[str, int]], resend: bool = False) -> None:
        """Mark parts as dispatched. A re-send restarts the clock of the lost-message check; a first
        send stamps it once. Until stamped, a new leader re-sends them (`reconcile`)."""
        if not attempts:
            return
        now = utcnow()
        rows = [{"jid": job_id, "num": attempt, "now": now} for job_id, attempt in attempts]
        session.connection().execute(_RESTAMP if resend else _STAMP, rows)

    def _publish(self, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Send the part messages in one pipelined batch (kombu's Producer.batch).

        Flower shows `kwargsrepr`: a short summary (job id, name, attempt, rank) that is cheaper
        than Celery's own repr of the whole spec. Each node queue is declared once per batch.
        """
        declared: set[str] = set()
        with self.celery.producer_or_acquire() as producer, producer.batch():
            for node_id, task_id, message in messages:
                queue = transport.node_queue(node_id)
                options: dict[str, Any] = {} if queue not in declared else {"declare": []}
                declared.add(queue)
                self.celery.send_task(
                    transport.RUN_TASK, kwargs=message, queue=queue, task_id=task_id,
                    producer=producer, argsrepr="()", kwargsrepr=task_summary(message), **options,
                )  # fmt: skip

    def reconcile(self, sessions: sessionmaker[Session]) -> None:
        """Re-send parts that were placed but never marked dispatched (a scheduler died in between)."""
        with sessions.begin() as session:
            rows = session.execute(
                select(Part.job_id, Part.attempt).where(Part.active.is_(True), Part.dispatched_at.is_(None))
            ).all()
            self.send_parts(session, list({(job_id, attempt) for job_id, attempt in rows}))

    def send_stop(self, node_id: str, job_id: str, attempt: int, reason: str, grace_s: float = 10.0) -> None:
        payload = {"kind": "stop", "job_id": job_id, "attempt": attempt, "reason": reason, "grace_s": grace_s}
        self.send_control(node_id, payload)

    def send_control(self, node_id: str, payload: dict[str, Any]) -> None:
        """A control message onto the node's list (`stop`, `setup`: see wire.py)."""
        self.redis.rpush(transport.node_control_key(node_id), json.dumps(payload))

    def forget_secrets(self, attempts: Sequence[tuple[str, int]]) -> None:
        self.redis.delete(*[transport.secrets_key(job_id, attempt) for job_id, attempt in attempts])
