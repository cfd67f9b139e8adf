"""The storage interface: a handful of primitives every blob store provides; the rest builds on them."""

from __future__ import annotations

import abc
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

COPY_CHUNK_BYTES = 8 * 1024 * 1024


class StorageError(Exception):
    """The store could not do what was asked (unreachable, refused); callers may retry."""


class ObjectNotFound(StorageError, KeyError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated and never climb out of the adapter's root."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A list prefix may end mid-name or with '/', but may not climb out of the root either."""
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"invalid storage prefix {prefix!r}")
    if any(part in (".", "..") for part in prefix.split("/")[:-1]):
        raise ValueError(f"invalid storage prefix {prefix!r}")
    return prefix


class StreamWriter(abc.ABC):
    """Writes one object in chunks; nothing is visible under the key until close()."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def abort(self) -> None:
        """Drop what was written so far; the key keeps its previous object (if any)."""
        return None  # the default suits writers that publish nothing before close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        # A with-block that raised must not publish half an object, nor leave parts behind.
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Storage(abc.ABC):
    """A blob store rooted at one URL (bucket/container plus prefix)."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing what was there."""

    @abc.abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the object (end=None: to the end). Raises ObjectNotFound."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error when it is absent."""

    @abc.abstractmethod
    def writer(self, key: str) -> StreamWriter:
        """A streaming writer for large objects."""

    # Everything below is built on the primitives.

    def list_after(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Like list(prefix), but only keys sorting after `start_after`; adapters may do it natively."""
        for info in self.list(prefix):
            if start_after is None or info.key > start_after:
                yield info

    def exists(self, key: str) -> bool:
        try:
            self.get(key, 0, 0)
        except ObjectNotFound:
            return False
        return True

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as source, self.writer(key) as sink:
            while chunk := source.read(COPY_CHUNK_BYTES):
                sink.write(chunk)

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        offset = 0
        try:
            with tmp.open("wb") as sink:
                while True:
                    chunk = self.get(key, offset, offset + COPY_CHUNK_BYTES)
                    sink.write(chunk)
                    offset += len(chunk)
                    if len(chunk) < COPY_CHUNK_BYTES:
                        break
        except BaseException:
            # A missing object or a dropped connection must not leave a half file behind.
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(path)

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)
