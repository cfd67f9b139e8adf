"""A Batch AI job's files and nodes: `POST …/jobs/{job}/listOutputFiles` and `…/listRemoteLoginInformation`.

Output directories are the job's declared `outputDirectories` (by `id`: the files its parts' manifests
list, once a part has ended; one on a mount is listed from the mount's storage, see mount_outputs.py)
and the pseudo-directory `stdouterr`: the job's live logs, `stdout.txt`
and `stderr.txt` of rank 0 of its latest attempt (`stdout-<rank>.txt` for the other ranks), there
while it runs. Every file comes with a signed `downloadUrl` (links.py) that expires after
`linkexpiryinminutes`.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from trainyard import datarefs, logstore
from trainyard.api.arm.common import (
    PageRequest,
    WorkspaceIds,
    api_version,
    arm_time,
    bad_request,
    list_result,
    not_found,
    page_request,
    remote_login,
    workspace_ids,
)
from trainyard.api.arm.experiments import experiment_name
from trainyard.api.arm.jobs import JOB_PATH, job_in, job_name
from trainyard.api.arm.links import FileRef, link_url, signing_secret
from trainyard.api.arm.mount_outputs import mount_output, mount_output_files
from trainyard.api.auth import Principal, require
from trainyard.db.models import Attempt, Job, Node, Part
from trainyard.storage_adapters import Storage, StorageError

router = APIRouter(dependencies=[Depends(api_version)])

STDOUTERR = "stdouterr"


@dataclass(frozen=True)
class Listed:
    """One entry of a directory listing: a file (with the reference its link names) or a subdirectory."""

    name: str
    ref: FileRef | None = None
    size: int = 0
    modified: datetime | None = None


def _latest_attempt(session: Session, job_id: str) -> Attempt | None:
    query = select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number.desc()).limit(1)
    return session.scalars(query).first()


def _log_files(session: Session, storage: Storage, job: Job) -> list[Listed]:
    attempt = _latest_attempt(session, job.id)
    if attempt is None:
        return []
    ranks = sorted(set(session.scalars(select(Part.rank).where(Part.job_id == job.id, Part.attempt == attempt.number))))
    found = []
    for rank in ranks or [0]:
        for stream in logstore.STREAMS:
            prefix = logstore.stream_prefix(job.id, attempt.number, rank, stream)
            name = f"{stream}.txt" if rank == 0 else f"{stream}-{rank}.txt"
            ref = FileRef(job.id, attempt.number, rank, stream)
            found.append(
                Listed(name, ref, logstore.stream_end(storage, prefix), attempt.ended_at or attempt.started_at)
            )
    return found


def _manifest_files(storage: Storage, job: Job, output_id: str) -> list[tuple[str, FileRef, datetime | None]]:
    """(path in the output directory, reference) of every file the job's manifests list for `output_id`."""
    prefix = datarefs.manifests_prefix(job.id)
    files: dict[str, FileRef] = {}
    for info in sorted(storage.list(prefix), key=lambda i: i.key):  # later attempts replace earlier ones' paths
        if not info.key.endswith(".json"):
            continue
        manifest = json.loads(storage.get(info.key))
        for output in manifest.get("outputs") or []:
            if output.get("id") != output_id:
                continue
            for item in output.get("files") or []:
                files[item["path"]] = FileRef(job.id, int(manifest["attempt"]), int(manifest["rank"]),
                                              output_uri=item["uri"], size=int(item["size"]))  # fmt: skip
    return [(path, ref, job.ended_at) for path, ref in files.items()]


def _in_directory(entries: list[tuple[str, FileRef, datetime | None]], directory: str) -> list[Listed]:
    """The files directly in `directory` and its immediate subdirectories."""
    base = "" if directory in ("", ".") else directory.strip("/") + "/"
    listed: dict[str, Listed] = {}
    for path, ref, modified in entries:
        if not path.startswith(base):
            continue
        head, _, rest = path[len(base) :].partition("/")
        if rest:
            listed.setdefault(head, Listed(head))
        else:
            listed[head] = Listed(head, ref, ref.size or 0, modified)
    return list(listed.values())


def _declared_output(job: Job, output_id: str) -> bool:
    return any(str(ref.get("id", "")).lower() == output_id.lower() for ref in (job.spec or {}).get("outputs") or [])


def _file_body(request: Request, key: str, item: Listed, expires_at: float) -> dict[str, Any]:
    if item.ref is None:
        return {"name": item.name, "fileType": "directory", "properties": {}}
    properties = {"lastModified": arm_time(item.modified), "contentLength": item.size}
    url = link_url(request, key, item.ref, expires_at)
    return {"name": item.name, "fileType": "file", "downloadUrl": url, "properties": properties}


@router.post(JOB_PATH + "/listOutputFiles", summary="A job's output files, with download links (Jobs_ListOutputFiles)")
def list_output_files(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    name: str = Depends(job_name),
    outputdirectoryid: str = Query(min_length=1, max_length=64, description="an output directory id, or stdouterr"),
    directory: str = Query(".", max_length=1000, description="a path in that directory"),
    linkexpiryinminutes: int = Query(60, ge=5, le=600),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    if directory not in ("", ".") and not datarefs.safe_relpath(directory.strip("/")):
        raise bad_request(f"The directory {directory!r} is not a relative path inside the output.", "directory")
    key = signing_secret(request)
    storage: Storage = request.app.state.storage
    with request.app.state.sessions() as session:
        _row, job = job_in(session, who, ids, experiment, name)
        try:
            if outputdirectoryid.lower() == STDOUTERR:
                items = _log_files(session, storage, job) if directory in ("", ".") else []
            elif _declared_output(job, outputdirectoryid):
                items = _in_directory(_manifest_files(storage, job, outputdirectoryid), posixpath.normpath(directory))
            elif (on_mount := mount_output(job, outputdirectoryid)) is not None:
                settings = request.app.state.settings
                files = mount_output_files(session, job, outputdirectoryid, on_mount, settings.arm_readable_paths,
                                           settings.storage_url)  # fmt: skip
                items = _in_directory(files, posixpath.normpath(directory))
            else:
                raise not_found("output directory", outputdirectoryid)
        except StorageError as exc:
            raise bad_request(f"The store is unavailable: {exc}", None, "ServiceUnavailable") from exc
    expires_at = time.time() + linkexpiryinminutes * 60
    return list_result(request, page, page.of(items, lambda i: i.name), lambda i: i.name,
                       lambda i: _file_body(request, key, i, expires_at))  # fmt: skip


@router.post(JOB_PATH + "/listRemoteLoginInformation",
             summary="The nodes a job's parts run on (Jobs_ListRemoteLoginInformation)")  # fmt: skip
def list_remote_login_information(
    request: Request,
    ids: WorkspaceIds = Depends(workspace_ids),
    experiment: str = Depends(experiment_name),
    name: str = Depends(job_name),
    page: PageRequest = Depends(page_request),
    who: Principal = require("viewer"),
) -> Any:
    with request.app.state.sessions() as session:
        _row, job = job_in(session, who, ids, experiment, name)
        attempt = _latest_attempt(session, job.id)
        number = attempt.number if attempt is not None else 0
        query = (
            select(Node.id, Node.address)
            .join(Part, Part.node_id == Node.id)
            .where(Part.job_id == job.id, Part.attempt == number, Part.active.is_(True))
            .distinct()
            .order_by(Node.id)
        )
        nodes = [(node_id, address) for node_id, address in session.execute(query).tuples()]
    return list_result(request, page, page.of(nodes, lambda pair: pair[0]), lambda pair: pair[0], remote_login)
