"""`file://` storage: a directory tree on a local or shared filesystem."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainyard.storage_adapters.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StreamWriter,
    check_key,
    check_prefix,
)

# Upload temp files live beside their target (so the final rename stays on one filesystem);
# list() hides them.
UPLOAD_TEMP_PREFIX = ".upload-"


class _FileWriter(StreamWriter):
    def __init__(self, target: Path):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=UPLOAD_TEMP_PREFIX)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc}") from exc
        self._target = target
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write {self._target}: {exc}") from exc

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.close()
            # Rename is atomic: readers see the whole object or none of it.
            self._tmp.replace(self._target)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {self._target}: {exc}") from exc

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage(Storage):
    def __init__(self, url: str):
        self.url = url
        self.root = Path(url.removeprefix("file://")).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

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
        check_prefix(prefix)
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        found = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(UPLOAD_TEMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(ObjectInfo(key, full.stat().st_size))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return  # a directory (or a path through a file) is no object: nothing to delete
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    def writer(self, key: str) -> StreamWriter:
        return _FileWriter(self._path(key))
