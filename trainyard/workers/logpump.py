"""Log pump: job output goes to spool files on the node's disk first, then to blob storage as segments.

Reading a pipe never waits on the store: a slow or absent store only delays upload (retried with
backoff) and nothing is lost while the spool has room. The spool of a stream is a series of
files named by the offset they start at; a file is deleted once every byte of it is in the store,
so the node-wide budget (`SpoolBudget`) frees as uploads catch up. When the budget or the disk is
exhausted, output is dropped and the stream later says so in a marker line. Memory stays bounded:
pipes are read in 1 MiB chunks and segments uploaded at most 4 MiB at a time.

A part that prints nothing costs no disk and no thread: the spool directory (with the metadata
that lets a later worker ship it) is made, and the shipper started, when the first byte arrives,
before that byte is written. Both pipes of a part are read by one thread (`pump_pipes`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import selectors
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from trainyard import logstore
from trainyard.config import load_settings
from trainyard.lognotify import NOTICE_COMPLETE, NOTICE_SEGMENT, LogNotice
from trainyard.logstore import STREAMS, segment_key
from trainyard.storage_adapters import Storage

log = logging.getLogger(__name__)

# A 1 MiB pipe read in 1 MiB chunks: 16x fewer syscalls and wake-ups than the 64 KiB default.
READ_CHUNK_BYTES = 1024 * 1024
SEGMENT_MAX_BYTES = 4 * 1024 * 1024
SPOOL_FILE_BYTES = 8 * 1024 * 1024
FLUSH_PERIOD_S = 0.25
RETRY_MAX_S = 5.0
META_FILE = "meta.json"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Python < 3.10 lacks the name; Linux's value


def spool_max_bytes() -> int:
    """The node's spool budget: TRAINYARD_SPOOL_MAX_BYTES, else 4 GiB."""
    return load_settings().spool_max_bytes


def drop_marker(dropped: int, at_line_start: bool) -> bytes:
    """The line a stream gets where output was dropped because the spool was full."""
    text = f"[trainyard: {dropped} bytes dropped: spool full]\n"
    return (text if at_line_start else "\n" + text).encode()


class SpoolBudget:
    """Bytes every spool file of the node may hold together; shared by all parts of a node."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self._lock = threading.Lock()

    def try_reserve(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.max_bytes:
                return False
            self.used += size
            return True

    def force_reserve(self, size: int) -> None:
        with self._lock:
            self.used += size

    def release(self, size: int) -> None:
        with self._lock:
            self.used = max(0, self.used - size)


class SpooledStream:
    """One stream of one part: appended to spool files, shipped to storage from a byte offset."""

    def __init__(
        self,
        storage: Storage,
        spool_dir: Path,
        key_args: tuple[str, int, int, str],
        budget: SpoolBudget,
        on_first_file: Callable[[], None] | None = None,
    ):
        self.storage, self.spool_dir, self.budget = storage, spool_dir, budget
        self._key_args = key_args
        self.name = key_args[3]
        # Called before the stream's first spool file is made (PartLogs makes the directory then).
        self._on_first_file = on_first_file or (lambda: spool_dir.mkdir(parents=True, exist_ok=True))
        self.written = 0  # stream offset of the next byte accepted
        self.uploaded = 0  # every byte before this offset is in the store
        self.dropped_total = 0
        self._dropped = 0  # dropped since the last marker
        self._at_line_start = True
        self._files: list[tuple[int, Path]] = []  # (start offset, path), oldest first
        self._fd: int | None = None
        self._pending: tuple[int, int] | None = None  # a segment tried and not yet confirmed
        self._closed = False
        self._resync = False  # recovered from disk: learn from the store how far it got first
        self._lock = threading.Lock()

    @classmethod
    def recovered(
        cls, storage: Storage, spool_dir: Path, key_args: tuple[str, int, int, str], budget: SpoolBudget
    ) -> SpooledStream:
        """The stream as an earlier worker process left it on disk: closed, its spool files still to ship."""
        stream = cls(storage, spool_dir, key_args, budget)
        found = []
        for path in spool_dir.glob(f"{stream.name}.*.spool"):
            offset = path.name.split(".")[1]
            if offset.isdigit():
                found.append((int(offset), path))
        stream._files = sorted(found)
        if stream._files:
            start, last = stream._files[-1]
            stream.written = start + last.stat().st_size
            budget.force_reserve(stream.written - stream._files[0][0])
        stream._closed, stream._resync = True, True
        return stream

    def _resync_with_store(self) -> None:
        """Skip what already reached the store: segments are contiguous, so their end says how far."""
        stored = logstore.stream_end(self.storage, logstore.stream_prefix(*self._key_args))
        with self._lock:
            first = self._files[0][0] if self._files else stored
            if stored < first:
                log.error("%s: %d bytes before the spool are missing from the store", self.name, first - stored)
            self.uploaded = min(max(stored, first), self.written)
            if not self._files:
                self.written = self.uploaded
            self._resync = False
            self._delete_shipped_files()

    # -- writing (pump threads) --------------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Spool `data`; when the budget or the disk is full, drop it and remember how much."""
        if not data:
            return
        with self._lock:
            if self._closed:
                return
            payload = drop_marker(self._dropped, self._at_line_start) + data if self._dropped else data
            if not self.budget.try_reserve(len(payload)):
                self._count_dropped(len(data))
                return
            if not self._write(payload):
                self.budget.release(len(payload))
                self._count_dropped(len(data))
                return
            self._dropped = 0
            self._at_line_start = payload.endswith(b"\n")

    def _count_dropped(self, size: int) -> None:
        if not self._dropped:
            log.warning("spool full: dropping output of %s/%s", "/".join(map(str, self._key_args[:3])), self.name)
        self._dropped += size
        self.dropped_total += size

    def _write(self, payload: bytes) -> bool:
        """All or nothing: a write the disk refuses half-way is cut back (ENOSPC keeps the worker up)."""
        try:
            if self._fd is None:
                self._on_first_file()
                path = self.spool_dir / f"{self.name}.{self.written:016d}.spool"
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._files.append((self.written, path))
            view = memoryview(payload)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            log.warning("spool write failed for %s: %s", self.name, exc)
            self._cut_back()
            return False
        self.written += len(payload)
        if self.written - self._files[-1][0] >= SPOOL_FILE_BYTES:
            self._close_file()  # the next append starts a new file: old ones can go once shipped
        return True

    def _cut_back(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self.written - self._files[-1][0])
        except OSError:
            # Bytes past the accepted end stay in that file, unread: segments stop at the next
            # file's start, and the next append opens a new file at the accepted offset.
            self._close_file()

    def _close_file(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        start, path = self._files[-1]
        if start == self.written:  # nothing accepted in it: a new file may take its name
            self._files.pop()
            path.unlink(missing_ok=True)

    # -- shipping (the shipper thread) -------------------------------------------------------

    def pending_bytes(self) -> int:
        return 1 if self._resync else self.written - self.uploaded

    def _next_segment(self) -> tuple[int, int, int, Path] | None:
        """(offset, size, spool file start, spool file) of the segment to upload next, if any."""
        with self._lock:
            if self._pending is None:
                if self.uploaded >= self.written:
                    return None
                _start, file_end = self._file_span(self.uploaded)
                size = min(self.written, file_end, self.uploaded + SEGMENT_MAX_BYTES) - self.uploaded
                self._pending = (self.uploaded, size)
            offset, size = self._pending
            file_start, _end = self._file_span(offset)
            path = next(path for start, path in self._files if start == file_start)
            return offset, size, file_start, path

    def _file_span(self, offset: int) -> tuple[int, int]:
        for i, (start, _path) in enumerate(self._files):
            end = self._files[i + 1][0] if i + 1 < len(self._files) else self.written
            if start <= offset < end:
                return start, end
        raise RuntimeError(f"spool of {self.name} lost offset {offset}")

    def upload_some(self) -> bool:
        """Upload one segment of what is spooled; True when something was shipped.

        A failed upload is retried with exactly the same range, so a segment's key always names
        the same bytes (readers rely on it) even when the first try did reach the store.
        """
        if self._resync:
            self._resync_with_store()
        found = self._next_segment()
        if found is None:
            return False
        offset, size, file_start, path = found
        with path.open("rb") as source:
            source.seek(offset - file_start)
            data = source.read(size)
        if len(data) != size:
            raise RuntimeError(f"spool file {path} is short: wanted {size} bytes at {offset}")
        self.storage.put(segment_key(*self._key_args, offset=offset), data)
        with self._lock:
            self._pending = None
            self.uploaded = offset + size
            self._delete_shipped_files()
        return True

    def _delete_shipped_files(self) -> None:
        """Spool files wholly in the store go; so does the open one when everything is shipped."""
        if self._files and self.uploaded >= self.written:
            self._close_file()  # the next append opens a new file at the current offset
        while self._files:
            start, path = self._files[0]
            end = self._files[1][0] if len(self._files) > 1 else self.written
            if end > self.uploaded or (len(self._files) == 1 and self._fd is not None):
                break
            self._files.pop(0)
            path.unlink(missing_ok=True)
            self.budget.release(end - start)

    def close(self) -> None:
        """No more appends (a late write of an ended part is ignored); a pending drop marker is written."""
        with self._lock:
            if self._dropped:
                # The stream must say that it lost bytes even when nothing came after the loss:
                # a marker line is small enough to go over the budget.
                marker = drop_marker(self._dropped, self._at_line_start)
                self.budget.force_reserve(len(marker))
                if self._write(marker):
                    self._dropped = 0
                else:
                    self.budget.release(len(marker))
            self._closed = True
            self._close_file()


class PartLogs:
    """stdout and stderr of one part, with a background shipper thread that outlives the part if needed."""

    def __init__(
        self,
        storage: Storage,
        spool_dir: Path,
        job_id: str,
        attempt: int,
        rank: int,
        budget: SpoolBudget | None = None,
        recovering: bool = False,
        notify: Callable[[LogNotice], None] | None = None,
    ):
        self.spool_dir = spool_dir
        self._notify = notify  # wakes the API's followers (lognotify): a hint, never waited on
        self._notice_part = (job_id, attempt, rank)
        self.part = {"job_id": job_id, "attempt": attempt, "rank": rank}
        budget = budget or SpoolBudget(spool_max_bytes())
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._shipped = threading.Event()
        self._on_shipped: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._spool_lock = threading.Lock()  # making the spool and starting the shipper happen once
        self._shipper: threading.Thread | None = None
        if recovering:
            self.streams = {name: SpooledStream.recovered(storage, spool_dir, (job_id, attempt, rank, name), budget)
                            for name in STREAMS}  # fmt: skip
            self._start_shipper()
        else:
            self.streams = {name: SpooledStream(storage, spool_dir, (job_id, attempt, rank, name), budget,
                                                on_first_file=self._make_spool) for name in STREAMS}  # fmt: skip

    def _make_spool(self) -> None:
        """Before the first spool file: the directory and its metadata (a later worker ships it by
        them if this one dies), then the shipper. Runs under the appending stream's lock."""
        with self._spool_lock:
            if self._shipper is not None:
                return
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            (self.spool_dir / META_FILE).write_text(json.dumps(self.part))
            self._start_shipper()

    def _start_shipper(self) -> None:
        job_id, _attempt, rank = self._notice_part
        self._shipper = threading.Thread(target=self._ship_loop, name=f"logs-{job_id}-{rank}", daemon=True)
        self._shipper.start()

    @classmethod
    def recover(
        cls, storage: Storage, spool_dir: Path, budget: SpoolBudget, notify: Callable[[LogNotice], None] | None = None
    ) -> PartLogs | None:
        """Ship what a part's spool still holds after its worker process died; None if it is no spool."""
        try:
            meta = json.loads((spool_dir / META_FILE).read_text())
            job_id, attempt, rank = str(meta["job_id"]), int(meta["attempt"]), int(meta["rank"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        logs = cls(storage, spool_dir, job_id, attempt, rank, budget, recovering=True, notify=notify)
        logs.finish(wait_s=0)
        return logs

    def pump(self, fd: int, stream: str) -> threading.Thread:
        """Read a pipe to EOF into the stream, in a thread of its own."""
        target = self.streams[stream]
        with contextlib.suppress(OSError):  # Linux only, and capped by fs.pipe-max-size: an optimisation
            fcntl.fcntl(fd, F_SETPIPE_SZ, READ_CHUNK_BYTES)

        def read_loop() -> None:
            try:
                while chunk := os.read(fd, READ_CHUNK_BYTES):
                    target.append(chunk)
            finally:
                os.close(fd)

        thread = threading.Thread(target=read_loop, name=f"pump-{stream}", daemon=True)
        thread.start()
        return thread

    def pump_pipes(self, stdout_fd: int, stderr_fd: int) -> threading.Thread:
        """Read both pipes of a part to EOF into stdout and stderr, in one thread."""
        targets = {stdout_fd: self.streams["stdout"], stderr_fd: self.streams["stderr"]}
        for fd in targets:
            with contextlib.suppress(OSError):  # as in pump
                fcntl.fcntl(fd, F_SETPIPE_SZ, READ_CHUNK_BYTES)

        def read_loop() -> None:
            selector = selectors.DefaultSelector()
            try:
                for fd in targets:
                    selector.register(fd, selectors.EVENT_READ)
                while selector.get_map():
                    for key, _events in selector.select():
                        chunk = os.read(key.fd, READ_CHUNK_BYTES)
                        if chunk:
                            targets[key.fd].append(chunk)
                        else:  # EOF: the writer side closed
                            selector.unregister(key.fd)
            finally:
                selector.close()
                for fd in targets:
                    with contextlib.suppress(OSError):
                        os.close(fd)

        thread = threading.Thread(target=read_loop, name="pump", daemon=True)
        thread.start()
        return thread

    def _ship_once(self) -> None:
        for stream in self.streams.values():
            while stream.upload_some():
                self._announce(NOTICE_SEGMENT, stream.name, stream.uploaded)

    def _announce(self, kind: str, stream: str | None = None, end: int | None = None) -> None:
        if self._notify is not None:
            self._notify(LogNotice(kind, *self._notice_part, stream=stream, end=end))

    def _all_shipped(self) -> bool:
        return all(stream.pending_bytes() == 0 for stream in self.streams.values())

    def _ship_loop(self) -> None:
        backoff_s = FLUSH_PERIOD_S
        while True:
            self._wake.wait(backoff_s)
            self._wake.clear()
            closing = self._closing.is_set()  # read before shipping: nothing is appended after it
            try:
                self._ship_once()
                backoff_s = FLUSH_PERIOD_S
            except Exception as exc:  # the store is down or refusing: keep spooling, retry later
                log.warning("log upload failed, will retry: %s", exc)
                backoff_s = min(RETRY_MAX_S, backoff_s * 2)
                continue
            if closing and self._all_shipped():
                self._done()
                return

    def _done(self) -> None:
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self._announce(NOTICE_COMPLETE)
        with self._lock:
            self._shipped.set()
            callback = self._on_shipped
        if callback is not None:
            callback()

    def finish(self, wait_s: float = 5.0) -> bool:
        """No more output: ship the rest. True when every byte reached the store within `wait_s`.

        When False, the shipper keeps going in the background (retrying while the store is down);
        `notify_when_shipped` says when it is done.
        """
        for stream in self.streams.values():
            stream.close()  # no byte is spooled after this, so no shipper can start after it either
        self._closing.set()
        self._wake.set()
        with self._spool_lock:
            nothing_spooled = self._shipper is None
        if nothing_spooled:  # the part printed nothing: nothing to ship, no spool to remove
            self._done()
        return self._shipped.wait(wait_s)

    def notify_when_shipped(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every byte is in the store (at once if it already is)."""
        with self._lock:
            if not self._shipped.is_set():
                self._on_shipped = callback
                return
        callback()

    def dropped_bytes(self) -> int:
        return sum(stream.dropped_total for stream in self.streams.values())
