"""`memory://` storage for unit tests: a dict shared by every adapter of the same name in a process."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

from trainyard.storage_adapters.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StreamWriter,
    check_key,
    check_prefix,
)

_STORES: dict[str, dict[str, bytes]] = {}
_LOCK = threading.Lock()


class _MemoryWriter(StreamWriter):
    def __init__(self, store: dict[str, bytes], key: str):
        self._store, self._key, self._buffer = store, key, io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)  # a closed buffer raises ValueError, as every adapter does

    def close(self) -> None:
        if self._buffer.closed:
            return
        with _LOCK:
            self._store[self._key] = self._buffer.getvalue()
        self._buffer.close()

    def abort(self) -> None:
        self._buffer.close()


class MemoryStorage(Storage):
    def __init__(self, url: str):
        self.url = url
        with _LOCK:
            self._objects = _STORES.setdefault(url.removeprefix("memory://"), {})

    def __repr__(self) -> str:
        return f"MemoryStorage({self.url!r})"

    def put(self, key: str, data: bytes) -> None:
        with _LOCK:
            self._objects[check_key(key)] = bytes(data)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        with _LOCK:
            try:
                data = self._objects[check_key(key)]
            except KeyError:
                raise ObjectNotFound(key) from None
        return data[start:end]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with _LOCK:
            items = [ObjectInfo(k, len(v)) for k, v in self._objects.items() if k.startswith(prefix)]
        yield from sorted(items, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        with _LOCK:
            self._objects.pop(check_key(key), None)

    def writer(self, key: str) -> StreamWriter:
        return _MemoryWriter(self._objects, check_key(key))
