"""Signed download links of job files (listOutputFiles' `downloadUrl`): `GET /arm/files/{token}`.

A link is fetched with no Authorization header (as `az batchai job file stream` and Azure Storage SAS
URLs are), so the token itself is the credential: `<payload>.<signature>`, both base64url, the
payload naming one file (a job's log stream, or an output file by its opaque key) and an expiry,
the signature an HMAC-SHA256 under a key derived from TRAINYARD_SECRET_KEY. A tampered, foreign or
expired link is 403. `Range: bytes=…` (one range) is answered 206, an unsatisfiable one 416. The
route takes no api-version: a link is opaque, used as given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from trainyard import datarefs, logstore
from trainyard.api import logreads
from trainyard.api.arm.common import PREFIX, CloudError
from trainyard.config import secret
from trainyard.storage_adapters import ObjectNotFound, StorageError

router = APIRouter()

FILES_PATH = "/files"
CHUNK_BYTES = 4 * 1024 * 1024
_KEY_CONTEXT = b"trainyard arm download links v1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class FileRef:
    """One file a link may name: a log stream (`stream` set) or an output file (`output_uri` set)."""

    job_id: str
    attempt: int = 0
    rank: int = 0
    stream: str | None = None
    output_uri: str | None = None
    size: int | None = None  # an output file's (a log's grows while the job runs: read when fetched)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret_key: str, ref: FileRef, expires_at: float) -> str:
    """The token of a link to `ref` valid until `expires_at` (seconds since the epoch)."""
    payload = json.dumps({**ref.as_dict(), "exp": int(expires_at)}, separators=(",", ":"), sort_keys=True).encode()
    signature = hmac.new(_key(secret_key), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify(secret_key: str, token: str, now: float) -> FileRef:
    """The file a token names, if its signature holds and it has not expired; else CloudError 403."""
    forbidden = CloudError(403, "AuthorizationFailed", "The download link is invalid or has expired.")
    encoded, _, given = token.partition(".")
    try:
        payload, signature = _unb64(encoded), _unb64(given)
    except (binascii.Error, ValueError):
        raise forbidden from None
    if not hmac.compare_digest(signature, hmac.new(_key(secret_key), payload, hashlib.sha256).digest()):
        raise forbidden
    fields = json.loads(payload)
    if not isinstance(fields, dict) or fields.pop("exp", 0) <= now:
        raise forbidden
    return FileRef(**fields)


def link_url(request: Request, secret_key: str, ref: FileRef, expires_at: float) -> str:
    """The absolute download URL of `ref`, on this request's scheme, host and base path."""
    return str(request.url_for("download_file", token=sign(secret_key, ref, expires_at)))


def signing_secret(request: Request) -> str:
    key = secret(request.app.state.settings.secret_key)
    if not key:
        raise CloudError(503, "ServiceUnavailable", "The server has no TRAINYARD_SECRET_KEY to sign download links.")
    return key


# ---- serving -----------------------------------------------------------------------------------


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a `Range: bytes=` header; None without one; CloudError 416 if it cannot be met."""
    if not header:
        return None
    unsatisfiable = CloudError(416, "InvalidRange", f"The range {header!r} is not within the file's {size} bytes.",
                               headers={"Content-Range": f"bytes */{size}"})  # fmt: skip
    match = _RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        raise unsatisfiable
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        raise unsatisfiable
    return start, end


def _log_reader(request: Request, ref: FileRef) -> tuple[int, Callable[[int, int], bytes]]:
    assert ref.stream is not None
    prefix = logstore.stream_prefix(ref.job_id, ref.attempt, ref.rank, ref.stream)
    storage = request.app.state.storage
    size = logstore.stream_end(storage, prefix)

    def read(start: int, end: int) -> bytes:
        return logreads.read(request.app, ref.job_id, ref.attempt, ref.rank, ref.stream or "", start)[: end - start]

    return size, read


def _output_reader(ref: FileRef) -> tuple[int, Callable[[int, int], bytes]]:
    assert ref.output_uri is not None and ref.size is not None
    root, path = datarefs.split_uri(ref.output_uri)
    store = datarefs.open_root(root)
    store.get(path, 0, 0)  # fail with a status now rather than in the middle of the body
    return ref.size, lambda start, end: store.get(path, start, end)


def _chunks(read: Callable[[int, int], bytes], start: int, end: int) -> Iterator[bytes]:
    position = start
    while position < end:
        data = read(position, min(end, position + CHUNK_BYTES))
        if not data:
            return
        position += len(data)
        yield data


@router.get(FILES_PATH + "/{token}", name="download_file", summary="A job file by signed link (no auth)")
def download_file(request: Request, token: str) -> StreamingResponse:
    ref = verify(signing_secret(request), token, time.time())
    try:
        size, read = _output_reader(ref) if ref.output_uri is not None else _log_reader(request, ref)
    except ObjectNotFound:
        raise CloudError(404, "ResourceNotFound", "The file is no longer in its store.") from None
    except StorageError as exc:
        raise CloudError(503, "ServiceUnavailable", f"The store is unavailable: {exc}") from None
    wanted = byte_range(request.headers.get("range"), size)
    start, end = wanted or (0, size)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(_chunks(read, start, end), status_code=206 if wanted else 200,
                             media_type="application/octet-stream", headers=headers)  # fmt: skip


__all__ = ["FILES_PATH", "PREFIX", "FileRef", "byte_range", "link_url", "router", "sign", "verify"]
