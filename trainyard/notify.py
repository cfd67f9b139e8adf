"""Webhook notifications: what a body holds, how it is signed and verified, and how tries back off.

Shared by the database layer (which records an outbox row when a job or sweep ends) and the
notifier (which sends it). A body is built from an allow-list of fields of the job object, so
that nothing of the spec (its env, its secrets' names or values) can reach a receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from tenacity import RetryCallState, Retrying

from trainyard.retrying import Backoff

SIGNATURE_HEADER = "X-Trainyard-Signature"
EVENT_HEADER = "X-Trainyard-Event"
DELIVERY_HEADER = "X-Trainyard-Delivery"
TIMESTAMP_HEADER = "X-Trainyard-Timestamp"
# A receiver refuses a body signed longer ago than this (replay of a captured request).
REPLAY_TOLERANCE_S = 300
# Between tries of one delivery: 2 s, 4 s, 8 s, … at most 5 min (connection errors, 408, 429, 5xx).
DELIVERY_BACKOFF = Backoff(first_s=2.0, max_s=300.0)
DEFAULT_MAX_TRIES = 6

# The job object's fields a body carries (SPEC §4), nothing else.
_JOB_FIELDS = ("id", "name", "state", "reason", "exit_code", "workspace", "experiment", "pool", "sweep_id",
               "attempt", "rerun_of", "submitted_at", "ended_at")  # fmt: skip
_ATTEMPT_FIELDS = ("number", "state", "reason", "exit_codes", "started_at", "ended_at")


def new_delivery_id() -> str:
    return "d" + secrets.token_hex(12)


def job_payload(job: Mapping[str, Any], event: str, delivery_id: str) -> dict[str, Any]:
    """The body for an ended job, from its job object (load_job_dict): an allow-list of fields."""
    attempts: Sequence[Mapping[str, Any]] = job.get("attempts") or []
    last = attempts[-1] if attempts else {}
    body: dict[str, Any] = {"event": event, "delivery": delivery_id, "kind": "job"}
    body["job"] = {key: job.get(key) for key in _JOB_FIELDS}
    body["job"]["exit_codes"] = list(last.get("exit_codes") or [])
    body["job"]["started_at"] = attempts[0].get("started_at") if attempts else None
    body["job"]["attempts"] = [{key: a.get(key) for key in _ATTEMPT_FIELDS} for a in attempts]
    body["job"]["attempt_count"] = len(attempts)
    return body


def sweep_payload(sweep: Mapping[str, Any], event: str, delivery_id: str) -> dict[str, Any]:
    """The body for an ended sweep: its id, name, state and counts of points by state."""
    fields = ("id", "name", "workspace", "experiment", "state", "total", "counts", "created_at")
    return {"event": event, "delivery": delivery_id, "kind": "sweep", "sweep": {k: sweep.get(k) for k in fields}}


def encode(body: Mapping[str, Any]) -> bytes:
    """The raw bytes sent and signed: compact, keys sorted, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def workspace_key(workspace: str, secret_key: str) -> bytes:
    """A workspace's signing key when no admin set one: derived from TRAINYARD_SECRET_KEY, so every
    API replica signs alike and nothing more is stored. Receivers use its text (hex) as the key."""
    mac = hmac.new(secret_key.encode(), f"trainyard-notify:{workspace}".encode(), hashlib.sha256)
    return mac.hexdigest().encode()


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<raw body>` (the timestamp is signed too)."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(key: bytes, timestamp: int, body: bytes, event: str, delivery_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "trainyard-notifier",
        SIGNATURE_HEADER: signature(key, timestamp, body),
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
    }


def verify(key: bytes, body: bytes, received: Mapping[str, str], now_s: float) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature (compared in constant time)."""
    lowered = {k.lower(): v for k, v in received.items()}
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return False
    if abs(now_s - timestamp) > REPLAY_TOLERANCE_S:
        return False
    expected = signature(key, timestamp, body)
    return hmac.compare_digest(expected, lowered.get(SIGNATURE_HEADER.lower(), ""))


def retry_delay_s(tries: int, backoff: Backoff = DELIVERY_BACKOFF) -> float:
    """Seconds to wait after the `tries`-th failed try (tenacity's exponential wait)."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(1, tries)
    return float(backoff.wait()(state))


def retryable_status(status_code: int) -> bool:
    """Whether an answer may be worth another try: server errors, timeouts and rate limits."""
    return status_code >= 500 or status_code in (408, 429)
