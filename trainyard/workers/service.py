"""`trainyard worker`: a Celery worker consuming `node.<id>`, with the node agent beside it."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from kombu.entity import Exchange, Queue

from trainyard import transport, wire
from trainyard.config import Settings
from trainyard.workers.agent import NodeAgent, NodeConfig

log = logging.getLogger(__name__)

# Thread slots beyond the node's CPU slots: parts with fractional cpus may share a slot.
EXTRA_TASK_THREADS = 8


class PartFailed(Exception):
    """A part ended with a non-zero exit code (so Flower shows the task as failed)."""


def register_run_task(app: Celery, agent: NodeAgent) -> None:
    @app.task(name=transport.RUN_TASK, bind=True, throws=(PartFailed,), acks_late=False, ignore_result=True)
    def run(self: Any, **message: Any) -> dict[str, Any]:
        try:
            wire.parse_part(message)
        except wire.InvalidMessage as exc:
            log.error("refusing a part message that breaks the wire contract: %s", exc)
            return {"refused": str(exc)}
        if not agent.admit(message):
            return {
                "job_id": message["job_id"],
                "attempt": message["attempt"],
                "rank": message["rank"],
                "stopped": True,
            }
        try:
            exit_code = agent.run_part(message)
        except Exception as exc:
            # Never leave a part hanging as "scheduled": the scheduler hears it failed.
            log.exception("part %s.%s.%s crashed", message.get("job_id"), message.get("attempt"), message.get("rank"))
            agent.abort_part(message, exc)
            raise
        finally:
            agent.release(message)
        if exit_code != 0:
            raise PartFailed(
                f"job {message['job_id']} attempt {message['attempt']} rank {message['rank']} exited with {exit_code}"
            )
        return {
            "job_id": message["job_id"],
            "attempt": message["attempt"],
            "rank": message["rank"],
            "exit_code": exit_code,
        }


def run_worker(settings: Settings, node: NodeConfig, loglevel: str = "WARNING") -> None:
    agent = NodeAgent(settings, node)
    app = transport.make_celery(
        settings.redis_url.get_secret_value(), visibility_timeout_s=settings.broker_visibility_timeout_s
    )
    register_run_task(app, agent)
    # Consumed without acknowledgements: a part is acknowledged on receipt anyway (invariant 7),
    # and one lost between Redis and this worker is re-sent by the scheduler (lost-message check),
    # so kombu's unacked bookkeeping (two Redis round trips per part) buys nothing here.
    name = transport.node_queue(node.node_id)
    app.conf.task_queues = [Queue(name, Exchange(name), routing_key=name, no_ack=True)]

    @worker_shutting_down.connect
    def _stop_parts(**_: Any) -> None:
        agent.shutdown()

    agent.start()
    worker = app.Worker(
        hostname=f"{node.node_id}@{node.address}",
        queues=[name],
        pool="threads",
        # Running parts and some spare threads (a part whose slot is still being released waits).
        concurrency=node.slots + EXTRA_TASK_THREADS,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
    worker.start()
    agent.outbox.flush(timeout_s=10.0)  # the exits of parts stopped at shutdown reach the scheduler
