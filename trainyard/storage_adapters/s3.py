"""`s3://bucket/prefix` storage on Amazon S3 or any S3-compatible server (MinIO, Ceph, moto), via boto3."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from trainyard.storage_adapters.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StreamWriter,
    check_key,
    check_prefix,
)

# S3 wants parts of at least 5 MiB (except the last) and at most 10,000 of them; doubling the
# part size every 1,000 parts keeps memory small for logs yet reaches S3's 5 TB object limit.
PART_SIZE_BYTES = 8 * 1024 * 1024
PARTS_PER_SIZE_STEP = 1000

# Fail within seconds when the store is down: callers (the log pump) spool and retry themselves.
CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 3},
)

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _storage_error(exc: Exception, key: str) -> StorageError:
    """The trainyard error for a boto3 failure: missing key → ObjectNotFound, the rest StorageError."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(key)
        return StorageError(f"S3 refused {key!r}: {code}: {exc}")
    return StorageError(f"S3 unreachable for {key!r}: {exc}")


def _is_unsatisfiable_range(exc: Exception) -> bool:
    # 416 means the object exists but the range starts at or past its end (or it is empty).
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvalidRange"


class _S3MultipartWriter(StreamWriter):
    """Buffers one part at a time; an object smaller than one part goes up in a single PUT."""

    def __init__(self, client: Any, bucket: str, name: str, key: str):
        self._client, self._bucket, self._name, self._key = client, bucket, name, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._closed = False

    def _part_size_bytes(self) -> int:
        return PART_SIZE_BYTES << (len(self._parts) // PARTS_PER_SIZE_STEP)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError(f"writer for {self._key!r} is closed")
        self._buffer += data
        while len(self._buffer) >= (size := self._part_size_bytes()):
            self._upload_part(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _upload_part(self, data: bytes) -> None:
        try:
            if self._upload_id is None:
                created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._name)
                self._upload_id = str(created["UploadId"])
            number = len(self._parts) + 1
            uploaded = self._client.upload_part(
                Bucket=self._bucket, Key=self._name, UploadId=self._upload_id, PartNumber=number, Body=data
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, self._key) from exc
        self._parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._upload_id is None:
                self._client.put_object(Bucket=self._bucket, Key=self._name, Body=bytes(self._buffer))
                return
            if self._buffer:
                self._upload_part(bytes(self._buffer))
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._name,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise _storage_error(exc, self._key) from exc
        except StorageError:
            self.abort()
            raise
        finally:
            self._buffer = bytearray()

    def abort(self) -> None:
        self._closed = True
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        # Best effort: a bucket lifecycle rule for incomplete uploads is the backstop.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._name, UploadId=upload_id)


class S3Storage(Storage):
    """Objects under `prefix/` in one bucket. Endpoint: `?endpoint=` in the URL, else AWS_ENDPOINT_URL."""

    list_page_size = 1000  # S3's largest page; tests lower it to cross page boundaries cheaply

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an S3 URL (s3://bucket/prefix): {url!r}")
        self.url = url
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        # The trailing '/' keeps s3://b/run1 from listing the objects of s3://b/run10.
        self.root = f"{prefix}/" if prefix else ""
        endpoint = (
            parse_qs(parts.query).get("endpoint", [None])[0]
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        # S3-compatible servers on an address (moto, MinIO) cannot serve bucket.host names.
        config = CLIENT_CONFIG.merge(Config(s3={"addressing_style": "path"})) if endpoint else CLIENT_CONFIG
        # A session per adapter: boto3's default session is not safe to share across threads.
        self._client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    def _name(self, key: str) -> str:
        return self.root + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=bytes(data))
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key) from exc

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        if end is not None and end <= start:
            # HTTP has no empty range; reading one byte still proves the object exists.
            self._read(key, "bytes=0-0")
            return b""
        if start == 0 and end is None:
            return self._read(key, None)
        return self._read(key, f"bytes={start}-{'' if end is None else end - 1}")

    def _read(self, key: str, byte_range: str | None) -> bytes:
        request = {"Bucket": self.bucket, "Key": self._name(key)}
        if byte_range is not None:
            request["Range"] = byte_range
        try:
            response = self._client.get_object(**request)
            data: bytes = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            if _is_unsatisfiable_range(exc):
                return b""
            raise _storage_error(exc, key) from exc
        return data

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.list_after(prefix, None)

    def list_after(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        # S3 lists in UTF-8 byte order, which is code point order: the same as sorted(keys).
        # StartAfter lets the server skip what a reader already knows (log followers).
        extra = {"StartAfter": self.root + start_after} if start_after else {}
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self.root + check_prefix(prefix),
            PaginationConfig={"PageSize": self.list_page_size},
            **extra,
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(str(item["Key"])[len(self.root) :], int(item["Size"]))
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, prefix) from exc

    def delete(self, key: str) -> None:
        try:
            # S3 answers 204 for a key that is not there: deleting twice is fine.
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key) from exc

    def writer(self, key: str) -> StreamWriter:
        return _S3MultipartWriter(self._client, self.bucket, self._name(key), key)
