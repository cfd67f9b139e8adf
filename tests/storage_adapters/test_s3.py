"""The storage contract for `s3://` against a real moto server, plus what is particular to S3."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from tests.storage_adapters.conftest import HOST
from tests.storage_adapters.contract import MIB, StorageContract
from trainyard.storage_adapters import ObjectInfo, ObjectNotFound, StorageError, open_storage
from trainyard.storage_adapters.s3 import S3Storage


def _s3_client() -> Any:
    return boto3.session.Session().client("s3")


class TestS3Storage(StorageContract):
    adapter_class = S3Storage

    @pytest.fixture
    def root_url(self, s3_bucket: str) -> str:
        return f"s3://{s3_bucket}/runs"


def test_a_bucket_without_prefix_is_a_root(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}")
    storage.put("top.txt", b"1")
    assert list(storage.list()) == [ObjectInfo("top.txt", 1)]
    assert _s3_client().get_object(Bucket=s3_bucket, Key="top.txt")["Body"].read() == b"1"


def test_keys_live_under_the_url_prefix(s3_bucket: str) -> None:
    open_storage(f"s3://{s3_bucket}/a/b/").put("c.txt", b"x")
    listed = _s3_client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["a/b/c.txt"]


def test_a_large_writer_uploads_in_parts(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/p")
    with storage.writer("big") as writer:
        for _ in range(12):
            writer.write(b"\x01" * MIB)
    etag = _s3_client().head_object(Bucket=s3_bucket, Key="p/big")["ETag"]
    assert etag.strip('"').endswith("-2")  # a multipart ETag names its part count


def test_an_aborted_writer_leaves_no_multipart_upload(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/p")
    writer = storage.writer("big")
    writer.write(b"\x01" * 9 * MIB)
    assert len(_s3_client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])) == 1
    writer.abort()
    assert _s3_client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not storage.exists("big")


def test_listing_follows_every_page(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/many")
    assert isinstance(storage, S3Storage)
    storage.list_page_size = 7
    keys = [f"k{number:03d}" for number in range(50)]
    # Several threads share one adapter, as the log pump's do.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda key: storage.put(key, b"x"), keys))
    assert list(storage.list()) == [ObjectInfo(key, 1) for key in keys]
    assert [info.key for info in storage.list("k04")] == keys[40:50]


def test_a_missing_bucket_is_a_storage_error_not_a_missing_key(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}-absent/x")
    for call in (lambda: storage.get("k"), lambda: storage.put("k", b"1"), lambda: list(storage.list())):
        with pytest.raises(StorageError) as raised:
            call()
        assert not isinstance(raised.value, ObjectNotFound)


def test_the_endpoint_in_the_url_wins_over_the_environment(
    s3_bucket: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{HOST}:9")  # nothing listens on the discard port
    storage = open_storage(f"s3://{s3_bucket}/q?endpoint={moto_endpoint}")
    storage.put("k", b"v")
    assert storage.get("k") == b"v"


def test_an_unreachable_endpoint_is_a_storage_error_within_seconds(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/q?endpoint=http://{HOST}:9")
    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        storage.get("k")
    assert not isinstance(raised.value, ObjectNotFound)
    with pytest.raises(StorageError):
        storage.put("k", b"v")
    assert time.monotonic() - started < 20


def test_urls_that_are_not_s3_are_refused() -> None:
    with pytest.raises(ValueError):
        S3Storage("s3:///no-bucket")
