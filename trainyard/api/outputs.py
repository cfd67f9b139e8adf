"""Data routes: a job's output files by opaque key, its provenance manifests, and code upload.

Output files are served only by the opaque keys the job's manifests list (`[0-9a-f]{32}`): a
client never names a path, so `..`, absolute paths, encoded variants or backslashes have
nothing to act on. A listed file is also served only from under the output URI the job's
spec declares, so a forged manifest cannot point the API anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from trainyard import datarefs
from trainyard.api.auth import Principal, require
from trainyard.api.schemas import plausible_id
from trainyard.codepack import MAX_CODE_BYTES
from trainyard.db.jobs import load_job_dict
from trainyard.db.models import Job
from trainyard.storage_adapters import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")

DOWNLOAD_CHUNK_BYTES = 4 * 1024 * 1024
_MANIFEST_NAME = re.compile(r"^(\d+)/manifest-(\d+)\.json$")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job in your workspace, or no such file"}}


def _job_spec(request: Request, job_id: str, who: Principal) -> dict[str, Any]:
    with request.app.state.sessions() as session:
        job = session.get(Job, job_id) if plausible_id(job_id) else None
        if job is None or not who.sees(job.workspace):
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        data = load_job_dict(session, job_id) or {}
    spec: dict[str, Any] = data.get("spec") or {}
    return spec


def _manifests(storage: Storage, job_id: str, attempt: int | None) -> list[dict[str, Any]]:
    """The provenance manifests the job's nodes wrote, by attempt then rank."""
    prefix = datarefs.manifests_prefix(job_id)
    found = []
    try:
        for info in storage.list(prefix if attempt is None else f"{prefix}{attempt}/"):
            match = _MANIFEST_NAME.match(info.key[len(prefix) :])
            if match:
                found.append((int(match.group(1)), int(match.group(2)), info.key))
        manifests = [json.loads(storage.get(key)) for _, _, key in sorted(found)]
    except StorageError as exc:
        raise HTTPException(status_code=503, detail=f"the store is unavailable: {exc}") from None
    return manifests


def _files(manifests: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for manifest in manifests:
        for output in manifest.get("outputs") or []:
            for item in output.get("files") or []:
                yield {
                    "key": item["key"],
                    "attempt": manifest["attempt"],
                    "rank": manifest["rank"],
                    "output": output["id"],
                    "path": item["path"],
                    "size": item["size"],
                    "sha256": item["sha256"],
                    "uri": item["uri"],
                }


@router.get(
    "/jobs/{job_id}/outputs", summary="A job's output files: opaque keys, paths, sizes, sha256", responses=_NOT_FOUND
)
def list_outputs(
    request: Request,
    job_id: str,
    attempt: int | None = Query(None, ge=1, le=2**31 - 1),
    who: Principal = require("viewer"),
) -> Any:
    _job_spec(request, job_id, who)
    manifests = _manifests(request.app.state.storage, job_id, attempt)
    refused = [
        {"attempt": m["attempt"], "rank": m["rank"], "output": o["id"], **r}
        for m in manifests
        for o in m.get("outputs") or []
        for r in o.get("refused") or []
    ]
    return {"outputs": list(_files(manifests)), "refused": refused}


@router.get(
    "/jobs/{job_id}/manifests", summary="The provenance manifest of each part of each attempt", responses=_NOT_FOUND
)
def list_manifests(
    request: Request,
    job_id: str,
    attempt: int | None = Query(None, ge=1, le=2**31 - 1),
    who: Principal = require("viewer"),
) -> Any:
    _job_spec(request, job_id, who)
    return {"manifests": _manifests(request.app.state.storage, job_id, attempt)}


def _declared(spec: dict[str, Any], output_id: str, uri: str) -> bool:
    """Whether `uri` lies under the output URI the job's spec declares for `output_id`."""
    for ref in spec.get("outputs") or []:
        if ref.get("id") == output_id:
            base = str(ref.get("uri", "")).rstrip("/") + "/"
            rest = uri[len(base) :]
            return uri.startswith(base) and datarefs.safe_relpath(rest)
    return False


def _chunks(store: Storage, key: str, size: int) -> Iterator[bytes]:
    for start in range(0, size, DOWNLOAD_CHUNK_BYTES):
        yield store.get(key, start, min(size, start + DOWNLOAD_CHUNK_BYTES))


@router.get(
    "/jobs/{job_id}/outputs/{key}",
    summary="One output file's bytes, by its opaque key",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 400: {"description": "not a key"}, **_NOT_FOUND},
)
def download_output(request: Request, job_id: str, key: str, who: Principal = require("viewer")) -> Any:
    if not datarefs.is_output_key(key):
        raise HTTPException(status_code=400, detail="not an output key (see GET /v1/jobs/{id}/outputs)")
    spec = _job_spec(request, job_id, who)
    found = next((f for f in _files(_manifests(request.app.state.storage, job_id, None)) if f["key"] == key), None)
    if found is None or not _declared(spec, found["output"], found["uri"]):
        raise HTTPException(status_code=404, detail=f"job {job_id} has no output file {key}")
    root, path = datarefs.split_uri(found["uri"])
    store = datarefs.open_root(root)
    try:
        store.get(path, 0, 0)  # fail with a status now rather than in the middle of the body
    except ObjectNotFound:
        raise HTTPException(status_code=404, detail=f"output file {key} is no longer in its store") from None
    except StorageError as exc:
        raise HTTPException(status_code=503, detail=f"the store is unavailable: {exc}") from None
    headers = {"Content-Length": str(found["size"]), "X-Checksum-Sha256": found["sha256"]}
    return StreamingResponse(
        _chunks(store, path, int(found["size"])), media_type="application/octet-stream", headers=headers
    )


@router.post(
    "/code",
    status_code=201,
    summary="Upload a code archive (tar.gz); stored content-addressed",
    responses={413: {"description": "larger than the API accepts"}},
)
async def upload_code(request: Request, who: Principal = require("user")) -> Any:
    """The body is the archive's bytes; the reply's `code` URI goes into a spec's `code` field."""
    digest, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(prefix="trainyard-code-") as spool:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_CODE_BYTES:
                raise HTTPException(status_code=413, detail=f"code archives are limited to {MAX_CODE_BYTES} bytes")
            digest.update(chunk)
            spool.write(chunk)
        spool.flush()
        hexdigest = digest.hexdigest()
        storage: Storage = request.app.state.storage
        key = datarefs.code_key(hexdigest)
        try:
            if not await run_in_threadpool(storage.exists, key):  # content-addressed: the same bytes once
                await run_in_threadpool(storage.put_file, key, Path(spool.name))
        except StorageError as exc:
            raise HTTPException(status_code=503, detail=f"the store is unavailable: {exc}") from None
    log.info("code %s uploaded by %s (%d bytes)", hexdigest, who.name, size)
    return {"code": datarefs.code_uri(hexdigest), "sha256": hexdigest, "size": size}
