"""The storage contract for `file://`, plus what is particular to a directory tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage_adapters.contract import StorageContract
from trainyard.storage_adapters import StorageError, open_storage
from trainyard.storage_adapters.local import UPLOAD_TEMP_PREFIX, LocalStorage


class TestLocalStorage(StorageContract):
    adapter_class = LocalStorage

    @pytest.fixture
    def root_url(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}"


def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    open_storage(f"file://{tmp_path}").put("a/b.txt", b"hi")
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"hi"


def test_an_unfinished_writer_is_a_hidden_temp_file(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    writer = storage.writer("a/b.txt")
    writer.write(b"partial")
    assert [path.name[: len(UPLOAD_TEMP_PREFIX)] for path in (tmp_path / "a").iterdir()] == [UPLOAD_TEMP_PREFIX]
    assert list(storage.list()) == []
    writer.abort()
    assert list((tmp_path / "a").iterdir()) == []


def test_writing_through_an_existing_file_is_a_storage_error(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}")
    storage.put("a", b"a file, not a directory")
    with pytest.raises(StorageError):
        storage.put("a/b", b"x")
