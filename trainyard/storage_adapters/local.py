"""`file://` storage: a directory tree on a local or shared filesystem."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainyard.storage_adapters.base import ObjectInfo, ObjectNotFound, Storage, StreamWriter, check_key


class _FileWriter(StreamWriter):
    def __init__(self, target: Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()
        # Rename is atomic: readers see the whole object or none of it.
        self._tmp.replace(self._target)


class LocalStorage(Storage):
    def __init__(self, url: str):
        self.url = url
        self.root = Path(url.removeprefix("file://")).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        with self.writer(key) as sink:
            sink.write(data)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with self._path(key).open("rb") as source:
                source.seek(start)
                return source.read() if end is None else source.read(max(0, end - start))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, not the whole tree.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        found = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".upload-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, full.stat().st_size))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def writer(self, key: str) -> StreamWriter:
        return _FileWriter(self._path(key))
