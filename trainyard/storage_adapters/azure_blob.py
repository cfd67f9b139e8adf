"""`az://container/prefix` storage on Azure Blob Storage (or Azurite), via azure-storage-blob."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobServiceClient,
    ContainerClient,
    LinearRetry,
    StorageErrorCode,
)

from trainyard.storage_adapters.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StreamWriter,
    check_key,
    check_prefix,
)

# A block blob holds at most 50,000 blocks of at most 4,000 MiB. Doubling the block size every
# 5,000 blocks keeps memory small for logs yet lets one stream grow to tens of TiB.
BLOCK_SIZE_BYTES = 8 * 1024 * 1024
BLOCKS_PER_SIZE_STEP = 5000
MAX_BLOCK_SIZE_BYTES = 4000 * 1024 * 1024

# The SDK's default retry waits 15 s and more between tries; callers (the log pump) spool and
# retry themselves, so give up within seconds when the store is down.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60


def _retry_policy() -> LinearRetry:
    # Two retries 0-2 s apart, like botocore's standard mode on the S3 side.
    return LinearRetry(backoff=1, retry_total=2, random_jitter_range=1)


def _service_client() -> BlobServiceClient:
    """A client from the Azure ecosystem's own variables (connection string, else account name + key)."""
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection_string:
        return BlobServiceClient.from_connection_string(
            connection_string,
            retry_policy=_retry_policy(),
            connection_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
        )
    name = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
    if not (name and key):
        raise ValueError(
            "az:// storage needs AZURE_STORAGE_CONNECTION_STRING, "
            "or AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY"
        )
    endpoint = os.environ.get("AZURE_STORAGE_BLOB_ENDPOINT") or f"https://{name}.blob.core.windows.net"
    return BlobServiceClient(
        endpoint,
        credential=AzureNamedKeyCredential(name, key),
        retry_policy=_retry_policy(),
        connection_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )


def _storage_error(exc: AzureError, key: str) -> StorageError:
    """The trainyard error for an SDK failure: missing blob → ObjectNotFound, the rest StorageError."""
    # A missing container is also a 404, but it is a set-up problem, not a missing object.
    code = getattr(exc, "error_code", None)
    if isinstance(exc, ResourceNotFoundError) and code == StorageErrorCode.BLOB_NOT_FOUND:
        return ObjectNotFound(key)
    first_line = exc.message.splitlines()[0] if exc.message else ""
    return StorageError(f"Azure Blob failed for {key!r}: {type(exc).__name__}: {first_line} ({code})")


def _is_unsatisfiable_range(exc: AzureError) -> bool:
    # 416 means the blob exists but the range starts at or past its end (or it is empty).
    return isinstance(exc, HttpResponseError) and exc.status_code == 416


class _AzureBlockWriter(StreamWriter):
    """Stages one block at a time and commits the list at close; a small object is a single PUT."""

    def __init__(self, blob: BlobClient, key: str):
        self._blob, self._key = blob, key
        self._buffer = bytearray()
        self._block_ids: list[str] = []
        # Two writers of one key stage blocks on the same blob: distinct ids keep them apart.
        self._writer_id = uuid.uuid4().hex
        self._closed = False

    def _block_size_bytes(self) -> int:
        size = BLOCK_SIZE_BYTES << (len(self._block_ids) // BLOCKS_PER_SIZE_STEP)
        return min(size, MAX_BLOCK_SIZE_BYTES)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError(f"writer for {self._key!r} is closed")
        self._buffer += data
        while len(self._buffer) >= (size := self._block_size_bytes()):
            self._stage(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _stage(self, data: bytes) -> None:
        # Azure wants every block id of a blob to have the same length: fixed-width fields.
        raw_id = f"{self._writer_id}-{len(self._block_ids):06d}"
        block_id = base64.b64encode(raw_id.encode()).decode()
        try:
            self._blob.stage_block(block_id, data, length=len(data))
        except AzureError as exc:
            raise _storage_error(exc, self._key) from exc
        self._block_ids.append(block_id)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._block_ids:
                self._blob.upload_blob(bytes(self._buffer), overwrite=True)
                return
            if self._buffer:
                self._stage(bytes(self._buffer))
            self._blob.commit_block_list([BlobBlock(block_id) for block_id in self._block_ids])
        except AzureError as exc:
            raise _storage_error(exc, self._key) from exc
        finally:
            self._buffer = bytearray()

    def abort(self) -> None:
        # Uncommitted blocks are invisible and Azure drops them after a week: nothing to undo.
        self._closed = True
        self._buffer = bytearray()


class AzureBlobStorage(Storage):
    """Blobs under `prefix/` in one container; credentials from the AZURE_STORAGE_* variables."""

    list_page_size = 5000  # Azure's largest page; tests lower it to cross page boundaries cheaply

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "az" or not parts.netloc:
            raise ValueError(f"not an Azure Blob URL (az://container/prefix): {url!r}")
        self.url = url
        prefix = parts.path.strip("/")
        # The trailing '/' keeps az://c/run1 from listing the blobs of az://c/run10.
        self.root = f"{prefix}/" if prefix else ""
        self._container: ContainerClient = _service_client().get_container_client(parts.netloc)

    def __repr__(self) -> str:
        return f"AzureBlobStorage({self.url!r})"

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(self.root + check_key(key))

    def put(self, key: str, data: bytes) -> None:
        try:
            self._blob(key).upload_blob(bytes(data), overwrite=True)
        except AzureError as exc:
            raise _storage_error(exc, key) from exc

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        blob = self._blob(key)
        try:
            if end is not None and end <= start:
                blob.get_blob_properties()  # HTTP has no empty range; this proves the blob exists
                return b""
            if start == 0 and end is None:
                # A ranged read of an empty blob is refused (416): read it whole instead.
                return blob.download_blob().readall()
            length = None if end is None else end - start
            return blob.download_blob(offset=start, length=length).readall()
        except AzureError as exc:
            if _is_unsatisfiable_range(exc):
                return b""
            raise _storage_error(exc, key) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        try:
            found = [
                ObjectInfo(blob.name[len(self.root) :], blob.size)
                for blob in self._container.list_blobs(
                    name_starts_with=self.root + prefix, results_per_page=self.list_page_size
                )
            ]
        except AzureError as exc:
            raise _storage_error(exc, prefix) from exc
        # The service's order is not code point order for every character (Azurite compares
        # UTF-16 code units, which puts U+F8FF after U+1F600): sort so all adapters agree.
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete_blob(delete_snapshots="include")
        except AzureError as exc:
            error = _storage_error(exc, key)
            if not isinstance(error, ObjectNotFound):  # deleting what is gone is not an error
                raise error from exc

    def writer(self, key: str) -> StreamWriter:
        return _AzureBlockWriter(self._blob(key), key)
