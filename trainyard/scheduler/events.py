"""Reading the events stream: each scheduler reads as its own consumer of one consumer group.

Entries are acknowledged only after the transaction that applied them committed. What a
scheduler read but never acknowledged (it died, or was deposed and its transaction rolled back)
stays pending under its consumer name; the leader claims such entries once they have been idle
for a while (`claim_orphans`), so nothing read by a deposed leader is lost.

An acknowledgement travels with the next read, in one round trip (`ack` only notes the ids).
A scheduler that dies in between leaves that batch pending, and whoever claims it applies it a
second time: compare-and-set turns every write of it into a no-op or a counted stale write,
as for any event delivered twice (the nodes' outbox may send one twice too).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from trainyard import transport, wire

log = logging.getLogger(__name__)

EVENT_BATCH = 2000
ORPHAN_IDLE_MS = 2000
# Events the database refused to store (kept for an operator to read; the stream is capped).
PARKED_STREAM = transport.EVENTS_STREAM + ":parked"
PARKED_MAXLEN = 10_000


class StreamLost(Exception):
    """The stream or its group is gone (Redis was wiped or restarted without data)."""


class EventReader:
    def __init__(self, client: redis.Redis, consumer: str, batch: int = EVENT_BATCH):
        self.redis, self.consumer, self.batch = client, consumer, batch
        self.invalid = 0
        self.parked = 0
        self._unacked: list[bytes] = []  # applied and committed; acknowledged with the next read

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(transport.EVENTS_STREAM, transport.EVENTS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, *, pending: bool = False, block_ms: int | None = None) -> list[tuple[bytes, dict[str, Any]]]:
        """New entries (or, with pending=True, those this consumer read before and never acked).

        What `ack` noted is acknowledged first, in the same round trip."""
        acked = self._unacked
        pipe = self.redis.pipeline(transaction=False)
        if acked:
            pipe.xack(transport.EVENTS_STREAM, transport.EVENTS_GROUP, *acked)
        pipe.xreadgroup(
            transport.EVENTS_GROUP,
            self.consumer,
            {transport.EVENTS_STREAM: "0" if pending else ">"},
            count=self.batch,
            block=None if pending else block_ms,
        )
        try:
            replies: list[Any] = pipe.execute()
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._unacked = []  # the group is gone, and what it had pending with it
                raise StreamLost(str(exc)) from None
            raise
        self._unacked = []
        reply = replies[-1]
        entries = reply[0][1] if reply else []
        return self._parsed(entries)

    def claim_orphans(self, min_idle_ms: int = ORPHAN_IDLE_MS) -> list[tuple[bytes, dict[str, Any]]]:
        """Take over entries other consumers read and left unacknowledged for `min_idle_ms`."""
        claimed: list[Any] = []
        start = "0-0"
        try:
            self.flush_acks()
            while True:
                reply: Any = self.redis.xautoclaim(
                    transport.EVENTS_STREAM, transport.EVENTS_GROUP, self.consumer, min_idle_ms,
                    start_id=start, count=self.batch,
                )  # fmt: skip
                start, entries = reply[0], reply[1]
                claimed.extend(entries)
                if start in (b"0-0", "0-0") or not entries or len(claimed) >= self.batch:
                    break
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._unacked = []
                raise StreamLost(str(exc)) from None
            raise
        if claimed:
            log.info("claimed %d event(s) another scheduler read and never applied", len(claimed))
        return self._parsed(claimed)

    def ack(self, entry_ids: list[bytes]) -> None:
        """Note entries as applied (their transaction committed): acknowledged with the next read."""
        self._unacked.extend(entry_ids)

    def flush_acks(self) -> None:
        """Acknowledge what `ack` noted now (before claiming, and at shutdown)."""
        if self._unacked:
            self.redis.xack(transport.EVENTS_STREAM, transport.EVENTS_GROUP, *self._unacked)
            self._unacked = []

    def park(self, entry_id: bytes, event: dict[str, Any], reason: str) -> None:
        """Set aside an event the database refuses, so that it cannot stop every event after it."""
        self.parked += 1
        log.error("parking event %s (%s) the database refused: %s", entry_id, event.get("kind"), reason)
        record = {"entry": entry_id, "error": reason[:2000], "data": json.dumps(event, default=str)}
        self.redis.xadd(PARKED_STREAM, record, maxlen=PARKED_MAXLEN, approximate=True)  # type: ignore[arg-type]
        self.ack([entry_id])

    def _parsed(self, entries: list[Any]) -> list[tuple[bytes, dict[str, Any]]]:
        """Validate each entry against the wire contract; what fails is logged, counted and acked."""
        good: list[tuple[bytes, dict[str, Any]]] = []
        bad: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:
                bad.append(entry_id)  # trimmed away while pending
                continue
            try:
                payload = transport.decode(fields)
                if b"\\u0000" in fields.get(b"data", b""):
                    payload = _without_nul(payload)  # PostgreSQL stores no NUL in text
                event = wire.parse_event(payload)
            except (wire.InvalidMessage, ValueError, KeyError) as exc:
                self.invalid += 1
                log.warning("dropping an invalid event %s: %s", entry_id, exc)
                bad.append(entry_id)
                continue
            good.append((entry_id, event.model_dump()))
        self.ack(bad)
        return good


def _without_nul(value: Any) -> Any:
    """The value with every NUL character in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value
