"""Log pump: job output goes to a spool file on the node's disk first, then to blob storage as segments.

Reading a pipe never waits on the store: a slow or absent store only delays upload (retried with
backoff) and nothing is lost while the spool has room. Memory stays bounded: pipes are read and
segments uploaded in fixed-size chunks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from trainyard.logstore import STREAMS, segment_key
from trainyard.storage_adapters import Storage

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024
SEGMENT_MAX_BYTES = 4 * 1024 * 1024
FLUSH_PERIOD_S = 0.25
RETRY_MAX_S = 5.0


class SpooledStream:
    """One stream of one part: appended to a spool file, shipped to storage from a byte offset."""

    def __init__(self, storage: Storage, spool_path: Path, job_id: str, attempt: int, rank: int, stream: str):
        self.storage, self.spool_path = storage, spool_path
        self._key_args = (job_id, attempt, rank, stream)
        spool_path.parent.mkdir(parents=True, exist_ok=True)
        self._spool = spool_path.open("ab")
        self.written = self._spool.tell()
        self.uploaded = 0
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        with self._lock:
            self._spool.write(data)
            self._spool.flush()
            self.written += len(data)

    def pending_bytes(self) -> int:
        return self.written - self.uploaded

    def upload_some(self) -> bool:
        """Upload one segment of what is spooled; True when something was shipped."""
        if self.uploaded >= self.written:
            return False
        size = min(self.written - self.uploaded, SEGMENT_MAX_BYTES)
        with self.spool_path.open("rb") as source:
            source.seek(self.uploaded)
            data = source.read(size)
        self.storage.put(segment_key(*self._key_args, offset=self.uploaded), data)
        self.uploaded += len(data)
        return True

    def close(self) -> None:
        self._spool.close()


class PartLogs:
    """stdout and stderr of one part, with a background shipper thread."""

    def __init__(self, storage: Storage, spool_dir: Path, job_id: str, attempt: int, rank: int):
        self.streams = {
            name: SpooledStream(storage, spool_dir / f"{name}.log", job_id, attempt, rank, name)
            for name in STREAMS
        }
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._shipper = threading.Thread(target=self._ship_loop, name=f"logs-{job_id}", daemon=True)
        self._shipper.start()

    def pump(self, fd: int, stream: str) -> threading.Thread:
        """Read a pipe to EOF into the stream, in a thread of its own."""
        target = self.streams[stream]

        def read_loop() -> None:
            while chunk := os.read(fd, READ_CHUNK_BYTES):
                target.append(chunk)
            os.close(fd)

        thread = threading.Thread(target=read_loop, name=f"pump-{stream}", daemon=True)
        thread.start()
        return thread

    def _ship_once(self) -> None:
        for stream in self.streams.values():
            while stream.upload_some():
                pass

    def _ship_loop(self) -> None:
        backoff_s = FLUSH_PERIOD_S
        while not self._stop.is_set():
            self._wake.wait(backoff_s)
            self._wake.clear()
            try:
                self._ship_once()
                backoff_s = FLUSH_PERIOD_S
            except Exception as exc:  # the store is down or refusing: keep spooling, retry later
                log.warning("log upload failed, will retry: %s", exc)
                backoff_s = min(RETRY_MAX_S, backoff_s * 2)

    def finish(self, timeout_s: float = 30.0) -> bool:
        """Stop the shipper and upload the rest; True when every byte reached the store."""
        self._stop.set()
        self._wake.set()
        self._shipper.join()
        deadline = time.monotonic() + timeout_s
        delay_s = 0.2
        while True:
            try:
                self._ship_once()
                break
            except Exception as exc:
                if time.monotonic() + delay_s > deadline:
                    log.warning("log upload incomplete at finish: %s", exc)
                    break
                time.sleep(delay_s)
                delay_s = min(RETRY_MAX_S, delay_s * 2)
        for stream in self.streams.values():
            stream.close()
        return all(stream.pending_bytes() == 0 for stream in self.streams.values())
