"""Where job logs live in blob storage, and how they are read back by byte offset.

Each (job, attempt, rank, stream) is a series of segment objects named by the byte offset at
which they start: `logs/<job>/<attempt>/<rank>/<stream>/<offset:016d>`. Segments are written in
order, each starting where the previous one ended, and never rewritten (a retried upload sends
the same range again). So a reader that knows where the stream ends so far finds the next
segment by its name alone: following costs one request per poll, not a listing.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from trainyard.storage_adapters import ObjectNotFound, Storage

STREAMS = ("stdout", "stderr")
OFFSET_DIGITS = 16
MAX_READ_BYTES = 8 * 1024 * 1024
READER_CACHE_STREAMS = 1024


def stream_prefix(job_id: str, attempt: int, rank: int, stream: str) -> str:
    return f"logs/{job_id}/{attempt}/{rank}/{stream}/"


def segment_key(job_id: str, attempt: int, rank: int, stream: str, offset: int) -> str:
    return f"{stream_prefix(job_id, attempt, rank, stream)}{offset:0{OFFSET_DIGITS}d}"


def key_at(prefix: str, offset: int) -> str:
    return f"{prefix}{offset:0{OFFSET_DIGITS}d}"


@dataclass(frozen=True)
class Segment:
    key: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def list_segments(storage: Storage, prefix: str, start_after: str | None = None) -> list[Segment]:
    segments = []
    for info in storage.list_after(prefix, start_after):
        name = info.key[len(prefix) :]
        if name.isdigit() and len(name) == OFFSET_DIGITS:
            segments.append(Segment(info.key, int(name), info.size))
    return segments


class SegmentIndex:
    """What a reader knows of one stream: where its segments start, and where the known part ends."""

    def __init__(self) -> None:
        self.starts = array("q")  # 8 bytes per segment: a week of output stays a few MiB
        self.end = 0
        self.lock = threading.Lock()

    def add(self, start: int, size: int) -> None:
        """Record the segment that begins at the known end (a concurrent reader may have done it)."""
        with self.lock:
            if start == self.end and size > 0:
                self.starts.append(start)
                self.end = start + size

    def span(self, offset: int) -> tuple[int, int] | None:
        """(start, end) of the known segment holding `offset`, or None past the known end."""
        with self.lock:
            if offset >= self.end or not self.starts:
                return None
            i = bisect.bisect_right(self.starts, offset) - 1
            start = self.starts[i]
            end = self.starts[i + 1] if i + 1 < len(self.starts) else self.end
            return start, end

    def last_key(self, prefix: str) -> str | None:
        with self.lock:
            return key_at(prefix, self.starts[-1]) if self.starts else None


class LogReader:
    """Reads streams by offset; remembers segment boundaries per stream (LRU) so polls stay O(1)."""

    def __init__(self, storage: Storage, cache_streams: int = READER_CACHE_STREAMS):
        self.storage = storage
        self._indexes: OrderedDict[str, SegmentIndex] = OrderedDict()
        self._cache_streams = cache_streams
        self._lock = threading.Lock()

    def _index(self, prefix: str) -> SegmentIndex:
        with self._lock:
            index = self._indexes.get(prefix)
            if index is None:
                index = self._indexes[prefix] = SegmentIndex()
                while len(self._indexes) > self._cache_streams:
                    self._indexes.popitem(last=False)
            else:
                self._indexes.move_to_end(prefix)
            return index

    def _forget(self, prefix: str) -> None:
        with self._lock:
            self._indexes.pop(prefix, None)

    def read(self, prefix: str, offset: int, max_bytes: int = MAX_READ_BYTES) -> bytes:
        """Bytes of the stream from `offset`, as far as is uploaded (at most max_bytes)."""
        index = self._index(prefix)
        if offset > index.end:
            self._extend_by_listing(prefix, index)  # a reader jumping ahead: learn what lies between
        out = bytearray()
        position = offset
        while len(out) < max_bytes:
            try:
                chunk = self._read_at(prefix, index, position, max_bytes - len(out))
            except ObjectNotFound:
                self._forget(prefix)  # the stream was deleted under us: start afresh next time
                break
            if not chunk:
                break
            out += chunk
            position += len(chunk)
        return bytes(out)

    def _read_at(self, prefix: str, index: SegmentIndex, position: int, want: int) -> bytes:
        span = index.span(position)
        if span is not None:
            start, end = span
            return self.storage.get(key_at(prefix, start), position - start, min(end, position + want) - start)
        if position != index.end:
            return b""
        # The next segment, if uploaded, starts exactly at the known end: fetch it by name.
        try:
            data = self.storage.get(key_at(prefix, position))
        except ObjectNotFound:
            return b""
        index.add(position, len(data))
        return data[:want]

    def _extend_by_listing(self, prefix: str, index: SegmentIndex) -> None:
        for segment in list_segments(self.storage, prefix, start_after=index.last_key(prefix)):
            if segment.offset != index.end:
                break  # a gap would be a segment still uploading: the contiguous part is what counts
            index.add(segment.offset, segment.size)


def read_from(storage: Storage, prefix: str, offset: int, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """Bytes of the stream from `offset`, with a reader of its own (callers that poll keep a LogReader)."""
    return LogReader(storage, cache_streams=1).read(prefix, offset, max_bytes)


def stream_end(storage: Storage, prefix: str) -> int:
    """How many contiguous bytes of the stream are in the store (the end of its last segment)."""
    reader = LogReader(storage, cache_streams=1)
    index = reader._index(prefix)
    reader._extend_by_listing(prefix, index)
    return index.end
