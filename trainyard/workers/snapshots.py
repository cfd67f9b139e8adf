"""Stable copies of a directory a running job is writing: what changed since the last scan, taken whole.

A file is copied aside (hashing on the way) and kept only if its size and mtime did not move
while the whole pass ran: what gets uploaded is then every file as it was at one moment, never
a file caught half-written by a write that overlapped the copy. Unchanged files are recognised
by (size, mtime) and not read again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainyard.workers.transfer import CHUNK_BYTES, Refused, walk_files


@dataclass(frozen=True)
class Known:
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class Scan:
    """One pass over the tree: every stable file's digest, copies of the changed ones, what moved meanwhile."""

    files: dict[str, Known] = field(default_factory=dict)
    copies: dict[str, Path] = field(default_factory=dict)  # rel → stable copy to upload (changed files only)
    busy: list[str] = field(default_factory=list)  # changed while copied: taken at a later pass
    removed: list[str] = field(default_factory=list)
    scratch: Path | None = None

    def discard(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _copy_hashing(source: Path, dest: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, dest.open("wb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


class TreeWatcher:
    """Remembers what was last taken from `root`, so each scan copies only what changed."""

    def __init__(self, root: Path, scratch_parent: Path):
        self.root, self.scratch_parent = root, scratch_parent
        self.known: dict[str, Known] = {}

    def remember(self, rel: str, known: Known) -> None:
        self.known[rel] = known

    def forget(self, rel: str) -> None:
        self.known.pop(rel, None)

    def scan(self) -> Scan:
        self.scratch_parent.mkdir(parents=True, exist_ok=True)
        scan = Scan(scratch=Path(tempfile.mkdtemp(dir=self.scratch_parent, prefix=".scan-")))
        seen: dict[str, tuple[Path, tuple[int, int]]] = {}
        for item in walk_files(self.root) if self.root.is_dir() else []:
            if isinstance(item, Refused):
                continue
            rel, path = item
            try:
                self._take(scan, rel, path, seen)
            except FileNotFoundError:
                scan.busy.append(rel)  # removed while we looked: the next pass sees it gone
        for rel, (path, before) in seen.items():  # a write during the pass moves mtime: not one moment
            try:
                moved = _stat_key(path) != before
            except FileNotFoundError:
                moved = True
            if moved and rel not in scan.busy:
                scan.busy.append(rel)
        for rel in scan.busy:
            scan.files.pop(rel, None)
            scan.copies.pop(rel, None)
        scan.removed = sorted(set(self.known) - set(seen) - set(scan.busy))
        return scan

    def _take(self, scan: Scan, rel: str, path: Path, seen: dict[str, tuple[Path, tuple[int, int]]]) -> None:
        before = _stat_key(path)
        seen[rel] = (path, before)
        known = self.known.get(rel)
        if known is not None and (known.size, known.mtime_ns) == before:
            scan.files[rel] = known
            return
        assert scan.scratch is not None
        copy = scan.scratch / str(len(scan.copies))
        sha = _copy_hashing(path, copy)
        if _stat_key(path) != before or os.path.getsize(copy) != before[0]:
            scan.busy.append(rel)
            return
        scan.files[rel] = Known(before[0], before[1], sha)
        if known is None or known.sha256 != sha:
            scan.copies[rel] = copy
