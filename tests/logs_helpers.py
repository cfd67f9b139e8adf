"""Test helpers for the log pipeline: a store that can be taken down, and one that counts requests.

Both wrap the real `memory://` adapter (the project's stub store), so what they store and return
is what the adapter does; only availability and bookkeeping are added.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

from trainyard.storage_adapters import ObjectInfo, Storage, StorageError, StreamWriter, open_storage


class SwitchableStorage(Storage):
    """A memory store with an off switch: while `down`, every call raises StorageError."""

    def __init__(self, inner: Storage | None = None):
        self.inner = inner or open_storage(f"memory://{uuid.uuid4().hex}")
        self.url = self.inner.url
        self.down = threading.Event()
        self.puts: list[tuple[str, int]] = []
        self.calls = {"put": 0, "get": 0, "list": 0}

    def _check(self, kind: str) -> None:
        self.calls[kind] += 1
        if self.down.is_set():
            raise StorageError("store is down (test switch)")

    def put(self, key: str, data: bytes) -> None:
        self._check("put")
        self.inner.put(key, data)
        self.puts.append((key, len(data)))

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self._check("get")
        return self.inner.get(key, start, end)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._check("list")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._check("put")
        self.inner.delete(key)

    def writer(self, key: str) -> StreamWriter:
        self._check("put")
        self.puts.append((key, -1))  # a streamed upload: its size is not known here
        return self.inner.writer(key)
