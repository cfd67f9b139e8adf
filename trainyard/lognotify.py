"""Log notices: a node says on Redis pub/sub that a log segment is in the store, or a part's logs are complete.

They are hints that wake the API's log followers, never the record: the store holds the bytes and
the database the attempt's state. A lost notice (Redis restarting, a publish that failed) delays a
follower until its next fallback poll, nothing more. One channel per job
(`transport.log_notices_channel`); each message is one small JSON object (SPEC §2.10).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from trainyard import transport

log = logging.getLogger(__name__)

NOTICE_SEGMENT = "segment"  # a stream's bytes up to `end` are in the store
NOTICE_COMPLETE = "complete"  # every byte of the part is in the store: its attempt may be ending
NOTICE_KINDS = (NOTICE_SEGMENT, NOTICE_COMPLETE)
# Notices waiting to be published: one per stream at most (a newer segment replaces an older
# one), so this bounds memory only if a node had thousands of parts at once.
PENDING_MAX = 10_000
PUBLISH_RETRY_S = 1.0


@dataclass(frozen=True)
class LogNotice:
    kind: str
    job_id: str
    attempt: int
    rank: int
    stream: str | None = None
    end: int | None = None

    def encode(self) -> str:
        fields = {key: value for key, value in asdict(self).items() if value is not None}
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> LogNotice | None:
        """The notice in a pub/sub message; None for anything malformed (it only costs a wake-up)."""
        try:
            data: dict[str, Any] = json.loads(raw)
            notice = cls(kind=str(data["kind"]), job_id=str(data["job_id"]), attempt=int(data["attempt"]),
                         rank=int(data["rank"]), stream=data.get("stream"), end=data.get("end"))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None
        return notice if notice.kind in NOTICE_KINDS else None


class LogNotifier:
    """Publishes notices from a thread of its own, so a slow or absent Redis never holds up a log upload."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._pending: dict[tuple[str, str, int, int, str | None], LogNotice] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def notify(self, notice: LogNotice) -> None:
        """Queue `notice` for publishing; never blocks on Redis."""
        key = (notice.kind, notice.job_id, notice.attempt, notice.rank, notice.stream)
        with self._wake:
            self._pending.pop(key, None)  # re-inserted last: the oldest entry is the one dropped
            self._pending[key] = notice
            while len(self._pending) > PENDING_MAX:
                self._pending.pop(next(iter(self._pending)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._publish_loop, name="log-notices", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _publish_loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                batch = list(self._pending.values())
                self._pending.clear()
            try:
                pipe = self.client.pipeline(transaction=False)  # one round trip for the whole batch
                for notice in batch:
                    pipe.publish(transport.log_notices_channel(notice.job_id), notice.encode())
                pipe.execute()
            except redis.RedisError as exc:
                # Dropped, not retried: followers catch up by polling, and a stale notice is worthless.
                log.debug("could not publish %d log notices: %s", len(batch), exc)
                time.sleep(PUBLISH_RETRY_S)
