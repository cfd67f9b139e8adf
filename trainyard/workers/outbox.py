"""The node's outbox: events for the scheduler leave from one thread, in order, batched, retried.

A part's thread hands its event over and moves on; the outbox pipelines whatever has gathered
into one round trip and, while Redis is away, keeps the events and retries with backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import redis

from trainyard import retrying, transport

log = logging.getLogger(__name__)

BATCH_MAX = 500


class EventOutbox:
    def __init__(self, client: redis.Redis):
        self._client = client
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def put(self, payload: dict[str, Any]) -> None:
        self._idle.clear()
        self._queue.put(payload)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything put so far has reached Redis; False on timeout."""
        return self._idle.wait(timeout_s)

    def _take_batch(self) -> list[dict[str, Any]]:
        batch = [self._queue.get()]
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, batch: list[dict[str, Any]]) -> None:
        """One pipelined round trip for the batch; a RedisError is retried for as long as Redis is away,
        0.1 s, 0.2 s, … at most 5 s apart (retrying.EVENTS_BACKOFF). A retried batch may land twice:
        the scheduler's compare-and-set makes that harmless."""
        retrying.forever("event publish", redis.RedisError)(self._publish, batch)

    def _publish(self, batch: list[dict[str, Any]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for payload in batch:
            pipe.xadd(
                transport.EVENTS_STREAM,
                transport.encode(payload),
                maxlen=transport.EVENTS_STREAM_MAXLEN,
                approximate=True,
            )
        pipe.execute()

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            self._send(batch)
            if self._queue.empty():
                self._idle.set()
