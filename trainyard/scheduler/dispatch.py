"""Dispatch: the part messages the scheduler pushes into node queues, and control messages.

A message goes out only after its attempt is committed; a scheduler that dies in between
re-sends on start-up (`reconcile`) the parts that were written but never marked dispatched.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import redis
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard import transport
from trainyard.config import Settings
from trainyard.db.models import Job, Node, Part, utcnow
from trainyard.db.sweeps import fill_specs
from trainyard.sweeps import formatted

SECRETS_TTL_S = 7 * 24 * 3600
MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 12000  # 20000-31999: below Linux's ephemeral ports (32768+), which others may hold


def master_port(job_id: str, attempt: int) -> int:
    return MASTER_PORT_BASE + zlib.crc32(f"{job_id}.{attempt}".encode()) % MASTER_PORT_SPAN


def part_message(job: Job, part: Part, hosts: list[str]) -> dict[str, Any]:
    """What a node needs to run its part: the spec (secrets removed: names only), attempt, rank."""
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
        "spec": job.spec,
        "params": formatted(job.params or {}),  # a sweep point's values: TRAINYARD_PARAM_<NAME>
    }


def task_summary(message: dict[str, Any]) -> str:
    """What Flower shows as the task's arguments: which job, attempt and rank (never secrets)."""
    keys = ("job_id", "name", "attempt", "rank", "num_nodes", "gpus")
    return repr({key: message[key] for key in keys if key in message})


class Dispatcher:
    def __init__(self, settings: Settings, redis_client: redis.Redis):
        self.redis = redis_client
        # No task-sent events: Flower learns of each part from its worker; this halves send cost.
        self.celery = transport.make_celery(settings.redis_url, task_events=False)

    def send_parts(self, session: Session, job_ids: Sequence[tuple[str, int]], resend: bool = False) -> None:
        """Send every part of the given (job, attempt)s; secrets go to a key the node reads at launch."""
        if not job_ids:
            return
        wanted = set(job_ids)
        jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([j for j, _ in wanted])))}
        fill_specs(session, jobs.values())  # sweep jobs are stored compact: render their spec
        parts = session.scalars(select(Part).where(Part.job_id.in_(list(jobs)), Part.active.is_(True))).all()
        addresses = dict(session.execute(select(Node.id, Node.address)).tuples().all())
        by_attempt: dict[tuple[str, int], list[Part]] = {}
        for part in parts:
            if (part.job_id, part.attempt) in wanted:
                by_attempt.setdefault((part.job_id, part.attempt), []).append(part)
        pipe = self.redis.pipeline(transaction=False)
        for job_id, attempt in by_attempt:
            job = jobs[job_id]
            if job.secrets_enc is not None:
                pipe.set(transport.secrets_key(job_id, attempt), job.secrets_enc, ex=SECRETS_TTL_S)
        pipe.execute()
        self._publish(jobs, by_attempt, addresses)
        # One statement for the whole batch. A re-send restarts the clock of the lost-message
        # check; a first send stamps it once.
        if not by_attempt:
            return
        table = Part.__table__
        unstamped = table.c.dispatched_at.is_(None) if not resend else table.c.state == "scheduled"
        session.connection().execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.job_id == bindparam("jid"), table.c.attempt == bindparam("num"), unstamped)
            .values(dispatched_at=utcnow()),
            [{"jid": job_id, "num": attempt} for job_id, attempt in by_attempt],
        )

    def _publish(self, jobs: dict[str, Job], by_attempt: dict[tuple[str, int], list[Part]],
                 addresses: dict[str, str]) -> None:
        """Send the part messages in one pipelined batch (kombu's Producer.batch).

        Flower shows `kwargsrepr`: a short summary (job id, name, attempt, rank) that is cheaper
        than Celery's own repr of the whole spec. Each node queue is declared once per batch.
        """
        declared: set[str] = set()
        with self.celery.producer_or_acquire() as producer, producer.batch():
            for (job_id, attempt), job_parts in by_attempt.items():
                job_parts.sort(key=lambda p: p.rank)
                hosts = [addresses.get(p.node_id, "") for p in job_parts]
                for part in job_parts:
                    queue = transport.node_queue(part.node_id)
                    message = part_message(jobs[job_id], part, hosts)
                    options: dict[str, Any] = {} if queue not in declared else {"declare": []}
                    declared.add(queue)
                    self.celery.send_task(
                        transport.RUN_TASK, kwargs=message, queue=queue, task_id=f"{job_id}.{attempt}.{part.rank}",
                        producer=producer, argsrepr="()", kwargsrepr=task_summary(message), **options,
                    )  # fmt: skip

    def reconcile(self, sessions: sessionmaker[Session]) -> None:
        """Re-send parts that were placed but never marked dispatched (a scheduler died in between)."""
        with sessions.begin() as session:
            rows = (
                session.execute(
                    select(Part.job_id, Part.attempt).where(Part.active.is_(True), Part.dispatched_at.is_(None))
                )
                .tuples()
                .all()
            )
            self.send_parts(session, list(set(rows)))

    def send_stop(self, node_id: str, job_id: str, attempt: int, reason: str, grace_s: float = 10.0) -> None:
        payload = {"kind": "stop", "job_id": job_id, "attempt": attempt, "reason": reason, "grace_s": grace_s}
        self.redis.rpush(transport.node_control_key(node_id), json.dumps(payload))

    def forget_secrets(self, attempts: Sequence[tuple[str, int]]) -> None:
        self.redis.delete(*[transport.secrets_key(job_id, attempt) for job_id, attempt in attempts])
