"""Moving files between a node's disk and a blob store: streamed, checksummed, retried, never escaping a root.

Every transfer streams in chunks (memory stays flat whatever the file size) and computes the
sha256 on the way. A store that is down is retried with backoff until a deadline. Walking a
directory never follows a symlink out of it: such links, and names no store can hold, are
refused and reported rather than uploaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from trainyard import retrying as retrying_policies
from trainyard.datarefs import safe_relpath
from trainyard.storage_adapters import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


class TransferFailed(Exception):
    """A transfer did not succeed before its deadline (or the object does not exist)."""


@dataclass(frozen=True)
class FileDigest:
    path: str  # relative, '/'-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Refused:
    path: str
    reason: str


def _store_down(error: BaseException) -> bool:
    return isinstance(error, StorageError) and not isinstance(error, ObjectNotFound)


def retrying(action: Callable[[], T], what: str, deadline: float) -> T:
    """Run `action`, retrying StorageError (the store is down; not ObjectNotFound, which propagates)
    with backoff 0.5 s, 1 s, 2 s, … at most 10 s apart (retrying.STORE_BACKOFF) until `deadline`
    (time.monotonic), where TransferFailed is raised; any other error propagates at once."""
    policy = retrying_policies.until_deadline(
        what, deadline, _store_down, give_up=lambda error: TransferFailed(f"{what}: {error}")
    )
    return policy(action)


def download(store: Storage, key: str, dest: Path, deadline: float) -> FileDigest:
    """Stream one object into `dest` (via a .partial file); returns its size and sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest, offset = hashlib.sha256(), 0
    try:
        with partial.open("wb") as sink:
            while True:
                chunk = retrying(_range_reader(store, key, offset), f"download {key}", deadline)
                sink.write(chunk)
                digest.update(chunk)
                offset += len(chunk)
                if len(chunk) < CHUNK_BYTES:
                    break
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(dest)
    return FileDigest(dest.name, offset, digest.hexdigest())


def _range_reader(store: Storage, key: str, start: int) -> Callable[[], bytes]:
    """A read of one chunk, bound to its offset: a retry asks for exactly the same range."""
    return lambda: store.get(key, start, start + CHUNK_BYTES)


def upload(source: Path, store: Storage, key: str, deadline: float) -> FileDigest:
    """Stream one local file (opened without following a final symlink) into `key`."""
    return retrying(lambda: _upload_once(source, store, key), f"upload {key}", deadline)


def _upload_once(source: Path, store: Storage, key: str) -> FileDigest:
    digest, size = hashlib.sha256(), 0
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as reader, store.writer(key) as writer:
        while chunk := reader.read(CHUNK_BYTES):
            writer.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(key, size, digest.hexdigest())


def file_digest(path: Path) -> FileDigest:
    digest, size = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(path.name, size, digest.hexdigest())


def tree_digest(files: list[FileDigest]) -> str:
    """One digest for a tree: sha256 of its `sha256sum`-style listing, sorted by path."""
    listing = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(listing.encode()).hexdigest()


def walk_files(root: Path) -> Iterator[tuple[str, Path] | Refused]:
    """(relative path, file to read) for every regular file under `root`, in path order.

    A symlink is read through only when it resolves to a regular file inside `root`; links that
    leave it, links to directories, special files and unstorable names come out as Refused.
    """
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        names = sorted(filenames + [d for d in dirnames if (here / d).is_symlink()])
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        for name in names:
            full = here / name
            rel = full.relative_to(root).as_posix()
            if not safe_relpath(rel):
                yield Refused(rel.encode("utf-8", "backslashreplace").decode(), "a name no store can hold")
                continue
            yield _classify(full, rel, real_root)


def _classify(full: Path, rel: str, real_root: Path) -> tuple[str, Path] | Refused:
    mode = full.lstat().st_mode
    if stat.S_ISREG(mode):
        return rel, full
    if not stat.S_ISLNK(mode):
        return Refused(rel, "not a regular file")
    target = full.resolve()
    if not target.is_relative_to(real_root):
        return Refused(rel, "a symlink pointing outside the directory")
    if not target.is_file():
        return Refused(rel, "a symlink to a directory or to nothing")
    return rel, target


def download_tree(store: Storage, prefix: str, dest: Path, deadline: float) -> list[FileDigest]:
    """Every object under `prefix` into `dest`, as a tree; refuses keys that would climb out."""
    listed = retrying(lambda: list(store.list(prefix)), f"list {prefix}", deadline)
    files = []
    for info in listed:
        rel = info.key[len(prefix) :]
        if rel.endswith("/") and info.size == 0:
            continue  # a "directory marker" some S3 tools create
        if not safe_relpath(rel):
            raise TransferFailed(f"refusing object {info.key!r}: its name would leave the directory")
        got = download(store, info.key, dest / rel, deadline)
        files.append(FileDigest(rel, got.size, got.sha256))
    return files
