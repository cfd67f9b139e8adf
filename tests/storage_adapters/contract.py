"""The contract every storage adapter passes: subclass StorageContract and provide `root_url`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainyard.storage_adapters import ObjectInfo, ObjectNotFound, Storage, open_storage
from trainyard.storage_adapters.base import COPY_CHUNK_BYTES

MIB = 1024 * 1024
DIGITS = b"0123456789"

INVALID_KEYS = ["", "/abs", "../up", "a/../b", "a/./b", "./a", "a//b", "a/", "a\\b", "nul\x00byte", ".."]
INVALID_PREFIXES = ["/abs", "../", "a/../", "./", "a\\", "nul\x00"]
UNICODE_KEYS = [
    "données/été.txt",
    "日本語/ファイル.log",
    "emoji/😀.log",
    "emoji/\uf8ff.log",  # private use: above every UTF-16 surrogate, below the emoji in code points
    "space dir/a b.txt",
    "query?hash#percent%20plus+amp&eq=.txt",
]


class StorageContract:
    """Tests shared by every adapter. Each test gets a fresh, empty root from `root_url`."""

    adapter_class: type[Storage]

    @pytest.fixture
    def root_url(self) -> str:
        raise NotImplementedError("subclasses provide a fresh root URL per test")

    @pytest.fixture
    def storage(self, root_url: str) -> Storage:
        return open_storage(f"{root_url}/main")

    @pytest.fixture
    def sibling(self, root_url: str) -> Storage:
        # Its root begins with the same characters as `storage`'s root ("main" / "main-sibling").
        return open_storage(f"{root_url}/main-sibling")

    def test_open_storage_picks_the_adapter_for_the_scheme(self, storage: Storage) -> None:
        assert isinstance(storage, self.adapter_class)
        assert storage.url in repr(storage)

    def test_put_then_get_returns_the_same_bytes(self, storage: Storage) -> None:
        storage.put("a/b/hello.txt", b"hello world\n")
        assert storage.get("a/b/hello.txt") == b"hello world\n"

    def test_binary_objects_round_trip_byte_exact(self, storage: Storage) -> None:
        data = bytes(range(256)) * 3 + b"\xff\xfe\x00\x80\r\n\r" + os.urandom(4096)
        storage.put("blob.bin", data)
        assert storage.get("blob.bin") == data

    def test_empty_object_round_trips(self, storage: Storage) -> None:
        storage.put("empty", b"")
        assert storage.get("empty") == b""
        assert storage.exists("empty")
        assert list(storage.list()) == [ObjectInfo("empty", 0)]

    @pytest.mark.parametrize(
        ("start", "end", "expected"),
        [
            (0, None, DIGITS),
            (0, 10, DIGITS),
            (2, 5, b"234"),
            (9, 10, b"9"),
            (8, None, b"89"),
            (8, 100, b"89"),
            (0, 0, b""),
            (5, 5, b""),
            (7, 3, b""),
            (10, None, b""),
            (15, None, b""),
            (15, 20, b""),
        ],
    )
    def test_range_reads(self, storage: Storage, start: int, end: int | None, expected: bytes) -> None:
        storage.put("digits", DIGITS)
        assert storage.get("digits", start, end) == expected

    @pytest.mark.parametrize(("start", "end"), [(0, None), (0, 0), (0, 5), (3, None), (3, 8)])
    def test_range_reads_of_an_empty_object_are_empty(self, storage: Storage, start: int, end: int | None) -> None:
        storage.put("empty", b"")
        assert storage.get("empty", start, end) == b""

    @pytest.mark.parametrize(("start", "end"), [(0, None), (0, 0), (2, 5), (7, None)])
    def test_get_of_a_missing_key_raises_object_not_found(self, storage: Storage, start: int, end: int | None) -> None:
        with pytest.raises(ObjectNotFound):
            storage.get("no/such/key", start, end)
        with pytest.raises(KeyError):  # ObjectNotFound is a KeyError too, for dict-like callers
            storage.get("no/such/key", start, end)

    def test_exists_tells_present_from_missing(self, storage: Storage) -> None:
        storage.put("here", b"x")
        assert storage.exists("here")
        assert not storage.exists("gone")
        assert not storage.exists("here/below")

    def test_list_by_prefix_is_sorted_with_sizes(self, storage: Storage) -> None:
        for key, size in [("logs/rank1", 3), ("logs/rank10", 10), ("logs/rank0", 0), ("other/x", 1)]:
            storage.put(key, b"x" * size)
        storage.put("logs/sub/deep.txt", b"deep")
        assert list(storage.list("logs/")) == [
            ObjectInfo("logs/rank0", 0),
            ObjectInfo("logs/rank1", 3),
            ObjectInfo("logs/rank10", 10),
            ObjectInfo("logs/sub/deep.txt", 4),
        ]
        assert [info.key for info in storage.list("logs/rank1")] == ["logs/rank1", "logs/rank10"]
        assert [info.key for info in storage.list()] == [
            "logs/rank0",
            "logs/rank1",
            "logs/rank10",
            "logs/sub/deep.txt",
            "other/x",
        ]

    def test_list_of_an_unknown_prefix_is_empty(self, storage: Storage) -> None:
        storage.put("a/b", b"1")
        assert list(storage.list("zzz/")) == []
        assert list(storage.list("a/b/")) == []

    def test_list_does_not_return_keys_of_other_roots(self, storage: Storage, sibling: Storage) -> None:
        storage.put("mine", b"1")
        sibling.put("theirs", b"22")
        assert list(storage.list()) == [ObjectInfo("mine", 1)]
        assert list(sibling.list()) == [ObjectInfo("theirs", 2)]
        with pytest.raises(ObjectNotFound):
            storage.get("theirs")

    def test_delete_removes_the_object_and_is_idempotent(self, storage: Storage) -> None:
        storage.put("doomed", b"x")
        storage.put("kept", b"y")
        storage.delete("doomed")
        storage.delete("doomed")
        storage.delete("never/existed")
        assert not storage.exists("doomed")
        assert [info.key for info in storage.list()] == ["kept"]

    def test_put_overwrites_the_previous_object(self, storage: Storage) -> None:
        storage.put("key", b"first version, longer")
        storage.put("key", b"second")
        assert storage.get("key") == b"second"
        assert list(storage.list()) == [ObjectInfo("key", 6)]

    def test_writer_streams_a_large_object_invisible_until_close(self, storage: Storage) -> None:
        chunks = [os.urandom(MIB) for _ in range(12)]
        writer = storage.writer("big/object.bin")
        for chunk in chunks[:10]:  # past the first 8 MiB part or block
            writer.write(chunk)
        assert not storage.exists("big/object.bin")
        assert list(storage.list()) == []
        for chunk in chunks[10:]:
            writer.write(chunk)
        writer.close()
        data = b"".join(chunks)
        assert storage.get("big/object.bin") == data
        assert list(storage.list()) == [ObjectInfo("big/object.bin", 12 * MIB)]
        boundary = 8 * MIB
        assert storage.get("big/object.bin", boundary - 5, boundary + 5) == data[boundary - 5 : boundary + 5]

    def test_writer_replaces_the_old_object_only_at_close(self, storage: Storage) -> None:
        storage.put("ckpt", b"old")
        with storage.writer("ckpt") as writer:
            writer.write(b"new ")
            writer.write(b"bytes")
            assert storage.get("ckpt") == b"old"
        assert storage.get("ckpt") == b"new bytes"

    def test_writer_that_raises_publishes_nothing(self, storage: Storage) -> None:
        storage.put("ckpt", b"old")
        with pytest.raises(RuntimeError), storage.writer("ckpt") as writer:
            writer.write(os.urandom(9 * MIB))
            raise RuntimeError("the job died mid-upload")
        with pytest.raises(RuntimeError), storage.writer("fresh") as writer:
            writer.write(b"partial")
            raise RuntimeError("the job died mid-upload")
        assert storage.get("ckpt") == b"old"
        assert list(storage.list()) == [ObjectInfo("ckpt", 3)]

    def test_writer_of_nothing_creates_an_empty_object(self, storage: Storage) -> None:
        with storage.writer("nothing"):
            pass
        assert storage.get("nothing") == b""

    def test_writer_refuses_writes_after_close(self, storage: Storage) -> None:
        writer = storage.writer("closed")
        writer.write(b"x")
        writer.close()
        writer.close()  # closing twice is harmless
        with pytest.raises(ValueError):
            writer.write(b"y")
        assert storage.get("closed") == b"x"

    @pytest.mark.parametrize("size", [0, 1000, COPY_CHUNK_BYTES, COPY_CHUNK_BYTES + 1])
    def test_put_file_and_get_file_round_trip(self, storage: Storage, tmp_path: Path, size: int) -> None:
        source = tmp_path / "source.bin"
        source.write_bytes(os.urandom(size))
        storage.put_file("files/source.bin", source)
        target = tmp_path / "out" / "nested" / "copy.bin"
        storage.get_file("files/source.bin", target)
        assert target.read_bytes() == source.read_bytes()
        assert list(target.parent.iterdir()) == [target]  # no partial file left beside it

    def test_get_file_of_a_missing_key_leaves_no_file(self, storage: Storage, tmp_path: Path) -> None:
        downloads = tmp_path / "downloads"
        with pytest.raises(ObjectNotFound):
            storage.get_file("missing", downloads / "copy.bin")
        assert list(downloads.iterdir()) == []

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_refused(self, storage: Storage, key: str) -> None:
        with pytest.raises(ValueError):
            storage.put(key, b"x")
        with pytest.raises(ValueError):
            storage.get(key)
        with pytest.raises(ValueError):
            storage.delete(key)
        with pytest.raises(ValueError):
            storage.writer(key)

    @pytest.mark.parametrize("prefix", INVALID_PREFIXES)
    def test_list_prefixes_that_climb_out_are_refused(self, storage: Storage, prefix: str) -> None:
        with pytest.raises(ValueError):
            list(storage.list(prefix))

    def test_unicode_and_url_special_keys_round_trip(self, storage: Storage) -> None:
        for number, key in enumerate(UNICODE_KEYS):
            storage.put(key, key.encode() * (number + 1))
        for number, key in enumerate(UNICODE_KEYS):
            assert storage.get(key) == key.encode() * (number + 1)
        assert [info.key for info in storage.list()] == sorted(UNICODE_KEYS)
        assert [info.key for info in storage.list("emoji/")] == ["emoji/\uf8ff.log", "emoji/😀.log"]
        storage.delete("emoji/😀.log")
        assert not storage.exists("emoji/😀.log")
