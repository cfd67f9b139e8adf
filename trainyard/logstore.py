"""Where job logs live in blob storage, and how they are read back by byte offset.

Each (job, attempt, rank, stream) is a series of segment objects named by the byte offset at
which they start: `logs/<job>/<attempt>/<rank>/<stream>/<offset:016d>`. Segments are written in
order and never rewritten, so a reader at offset N lists and reads only what lies past N.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainyard.storage_adapters import ObjectNotFound, Storage

STREAMS = ("stdout", "stderr")
OFFSET_DIGITS = 16
MAX_READ_BYTES = 8 * 1024 * 1024


def stream_prefix(job_id: str, attempt: int, rank: int, stream: str) -> str:
    return f"logs/{job_id}/{attempt}/{rank}/{stream}/"


def segment_key(job_id: str, attempt: int, rank: int, stream: str, offset: int) -> str:
    return f"{stream_prefix(job_id, attempt, rank, stream)}{offset:0{OFFSET_DIGITS}d}"


@dataclass(frozen=True)
class Segment:
    key: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def list_segments(storage: Storage, prefix: str) -> list[Segment]:
    segments = []
    for info in storage.list(prefix):
        name = info.key[len(prefix) :]
        if name.isdigit() and len(name) == OFFSET_DIGITS:
            segments.append(Segment(info.key, int(name), info.size))
    return segments


def read_from(storage: Storage, prefix: str, offset: int, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """Bytes of the stream from `offset`, as far as is uploaded (at most max_bytes)."""
    out = bytearray()
    position = offset
    for segment in list_segments(storage, prefix):
        if segment.end <= position:
            continue
        if segment.offset > position:
            break  # a gap: a segment still uploading; stop at the contiguous part
        want_end = min(segment.end, position + max_bytes - len(out))
        try:
            out += storage.get(segment.key, position - segment.offset, want_end - segment.offset)
        except ObjectNotFound:
            break
        position = offset + len(out)
        if len(out) >= max_bytes:
            break
    return bytes(out)
