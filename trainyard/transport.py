"""The Celery app, task names and every Redis key trainyard uses, in one place.

Celery carries delivery hints only (SPEC §2 invariant 1): the database stays the system of
record. Messages are JSON (invariant 10); tasks are acknowledged on receipt so that redelivery
never hangs on the broker's visibility timeout (invariant 7) — the scheduler redispatches.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from celery import Celery

from trainyard import broker
from trainyard.config import BROKER_VISIBILITY_TIMEOUT_S

RUN_TASK = "trainyard.run"
KEY_PREFIX = "trainyard:"
EVENTS_STREAM = KEY_PREFIX + "events"
EVENTS_GROUP = "scheduler"
EVENTS_STREAM_MAXLEN = 1_000_000
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def node_queue(node_id: str) -> str:
    return f"node.{node_id}"


def node_control_key(node_id: str) -> str:
    """A list the node agent pops control messages (cancel, kill stale) from."""
    return f"{KEY_PREFIX}node:{node_id}:control"


def secrets_key(job_id: str, attempt: int) -> str:
    """Encrypted secrets of one attempt, fetched by the node at launch (never in the message)."""
    return f"{KEY_PREFIX}secrets:{job_id}:{attempt}"


def spawn_requests_key(job_id: str, attempt: int, rank: int) -> str:
    """A list of spawn requests (MPI's rsh agent) for one part of a gang, popped by its node agent."""
    return f"{KEY_PREFIX}spawn:{job_id}:{attempt}:{rank}"


def spawn_reply_key(job_id: str, attempt: int, spawn_id: str) -> str:
    """Where the target node answers one spawn request with the spawned command's exit code."""
    return f"{KEY_PREFIX}spawn:{job_id}:{attempt}:reply:{spawn_id}"


def log_notices_channel(job_id: str) -> str:
    """Pub/sub channel where nodes announce a job's new log segments and completed parts (lognotify)."""
    return f"{KEY_PREFIX}logs:{job_id}"


def scheduler_metrics_key() -> str:
    """A hash of the scheduler's own figures (pass time, start latency, log lag) that /metrics reads."""
    return f"{KEY_PREFIX}metrics:scheduler"


def redis_ssl_options(redis_url: str) -> dict[str, Any] | None:
    """TLS settings of a `rediss://` URL, from the `ssl_*` query parameters redis-py also reads.

    Certificates are verified unless the URL says `ssl_cert_reqs=none`.
    """
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {reqs!r}")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in query:
            options[key] = query[key]
    return options


def make_celery(
    redis_url: str,
    *,
    task_events: bool = True,
    visibility_timeout_s: int = BROKER_VISIBILITY_TIMEOUT_S,
    lean_transport: bool = True,
) -> Celery:
    """Our Celery app: JSON only, early ack, prefetch 1, one queue per node.

    visibility_timeout_s is Settings.broker_visibility_timeout_s (TRAINYARD_BROKER_VISIBILITY_TIMEOUT_S).
    lean_transport: kombu's Redis transport with fewer round trips and clients (broker.py); Flower
    takes the stock one, because it tells the broker's kind by the transport's name.
    """
    app = Celery("trainyard", broker=redis_url, set_as_current=False)
    app.conf.update(
        broker_transport=broker.TRANSPORT if lean_transport else None,
        task_serializer="json",
        result_serializer="json",
        # JSON only, everywhere (SPEC §2 invariant 10): a pickled message is refused, not loaded.
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        broker_use_ssl=redis_ssl_options(redis_url),
        # Flower shows a part as STARTED while it runs, then SUCCESS or FAILURE.
        task_track_started=True,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        task_default_queue="trainyard.default",
        worker_send_task_events=task_events,
        task_send_sent_event=task_events,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Tasks are acknowledged on receipt, so this never triggers a redelivery; it only bounds how
        # long a message prefetched by a worker that then died stays invisible (the scheduler
        # re-sends such parts itself).
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=True,
    )
    return app


def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15)


def encode(payload: dict[str, Any]) -> dict[Any, Any]:
    """One stream entry: the payload as a single JSON field."""
    return {"data": json.dumps(payload, separators=(",", ":"))}


def decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fields[b"data"])
    return value


def publish_event(client: redis.Redis, payload: dict[str, Any]) -> None:
    """Append an event for the scheduler (worker → scheduler, API → scheduler wake-ups)."""
    client.xadd(EVENTS_STREAM, encode(payload), maxlen=EVENTS_STREAM_MAXLEN, approximate=True)


def wake_scheduler(client: redis.Redis) -> None:
    """Nudge the scheduler after a submission or cancel. Best effort: it also wakes on a timer,
    and what was stored is in the database either way."""
    with contextlib.suppress(redis.RedisError):
        publish_event(client, {"kind": "wake"})
