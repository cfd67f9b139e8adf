"""TRAINYARD_CHECKPOINT_DIR: saved to the cluster's store while the job runs and at its end, restored before the next.

Layout per job and rank: `checkpoints/<job>/<rank>/objects/<sha256>` holds file contents (a
file unchanged since the last save is not sent again) and `latest.json` lists path → sha256.
`latest.json` is written last, in one PUT, so a save cut short leaves the previous checkpoint
whole. A save from an older attempt than the one recorded is refused: a zombie cannot roll
the checkpoint back. While the job runs, `save_snapshot` saves stable copies (workers/snapshots.py)
every `checkpoint_interval_s`, so a node that dies loses at most that much work.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainyard.datarefs import checkpoint_prefix, safe_relpath
from trainyard.storage_adapters import ObjectNotFound, Storage
from trainyard.workers.snapshots import TreeWatcher
from trainyard.workers.transfer import (
    FileDigest,
    Refused,
    TransferFailed,
    download,
    file_digest,
    retrying,
    upload,
    walk_files,
)

log = logging.getLogger(__name__)

LATEST = "latest.json"


class Superseded(Exception):
    """A later attempt saved this job's checkpoint: this attempt's saves would roll it back."""


def _latest(cluster: Storage, job_id: str, rank: int, deadline: float) -> dict[str, Any] | None:
    key = checkpoint_prefix(job_id, rank) + LATEST
    try:
        raw = retrying(lambda: cluster.get(key), f"read {key}", deadline)
    except ObjectNotFound:
        return None
    data: dict[str, Any] = json.loads(raw)
    return data


def restore(cluster: Storage, job_id: str, rank: int, dest: Path, deadline: float) -> dict[str, Any] | None:
    """Fill `dest` with the job's last saved checkpoint for this rank; its summary, or None if none."""
    dest.mkdir(parents=True, exist_ok=True)
    latest = _latest(cluster, job_id, rank, deadline)
    if latest is None:
        return None
    objects = checkpoint_prefix(job_id, rank) + "objects/"
    for entry in latest["files"]:
        if not safe_relpath(entry["path"]):
            raise TransferFailed(f"checkpoint lists an unsafe path {entry['path']!r}")
        got = download(cluster, objects + entry["sha256"], dest / entry["path"], deadline)
        if got.sha256 != entry["sha256"]:
            raise TransferFailed(f"checkpoint file {entry['path']} does not match its checksum")
    return _summary(latest)


def _summary(latest: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt": latest["attempt"],
        "files": len(latest["files"]),
        "bytes": sum(int(f["size"]) for f in latest["files"]),
        "saved_at": latest["saved_at"],
    }


def save(cluster: Storage, job_id: str, attempt: int, rank: int, src: Path, deadline: float) -> dict[str, Any] | None:
    """Upload `src` as the job's latest checkpoint for this rank; its summary, or None if nothing was saved."""
    prefix = checkpoint_prefix(job_id, rank)
    previous = _latest(cluster, job_id, rank, deadline)
    if previous is not None and int(previous["attempt"]) > attempt:
        log.warning(
            "not saving the checkpoint of %s attempt %d: attempt %s saved one", job_id, attempt, previous["attempt"]
        )
        return None
    found = list(walk_files(src)) if src.is_dir() else []
    if not found and previous is None:
        return None
    stored = {f["sha256"] for f in previous["files"]} if previous else set()
    files: list[FileDigest] = []
    for item in found:
        if isinstance(item, Refused):
            log.warning("checkpoint of %s: %s is %s; not saved", job_id, item.path, item.reason)
            continue
        rel, path = item
        digest = file_digest(path)
        if digest.sha256 not in stored:
            upload(path, cluster, prefix + "objects/" + digest.sha256, deadline)
            stored.add(digest.sha256)
        files.append(FileDigest(rel, digest.size, digest.sha256))
    latest = {
        "attempt": attempt,
        "rank": rank,
        "saved_at": datetime.now(UTC).isoformat(),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }
    body = json.dumps(latest, indent=1).encode()
    retrying(lambda: cluster.put(prefix + LATEST, body), f"write {prefix}{LATEST}", deadline)
    _forget_unreferenced(cluster, prefix, {f.sha256 for f in files}, deadline)
    return _summary(latest)


def save_snapshot(
    cluster: Storage, job_id: str, attempt: int, rank: int, watcher: TreeWatcher, deadline: float
) -> dict[str, Any] | None:
    """Save what the running job has in its checkpoint directory, as it was at one moment.

    None (nothing saved, the previous checkpoint stays whole) when the directory is empty or when
    a file moved while it was copied (the next pass takes it); Superseded when a later attempt saved.
    """
    prefix = checkpoint_prefix(job_id, rank)
    scan = watcher.scan()
    try:
        if scan.busy or not scan.files:
            return None
        previous = _latest(cluster, job_id, rank, deadline)
        if previous is not None and int(previous["attempt"]) > attempt:
            raise Superseded(f"attempt {previous['attempt']} saved the checkpoint of {job_id}")
        stored = {f["sha256"] for f in previous["files"]} if previous else set()
        for rel, known in scan.files.items():
            copy = scan.copies.get(rel)
            if known.sha256 not in stored:
                if copy is None:  # digest known from an earlier pass but never stored (another attempt's GC)
                    watcher.forget(rel)
                    return None
                upload(copy, cluster, prefix + "objects/" + known.sha256, deadline)
                stored.add(known.sha256)
        latest = {
            "attempt": attempt,
            "rank": rank,
            "saved_at": datetime.now(UTC).isoformat(),
            "files": [{"path": rel, "size": k.size, "sha256": k.sha256} for rel, k in sorted(scan.files.items())],
        }
        body = json.dumps(latest, indent=1).encode()
        retrying(lambda: cluster.put(prefix + LATEST, body), f"write {prefix}{LATEST}", deadline)
        for rel, known in scan.files.items():
            watcher.remember(rel, known)
        _forget_unreferenced(cluster, prefix, {k.sha256 for k in scan.files.values()}, deadline)
        return _summary(latest)
    finally:
        scan.discard()


def _forget_unreferenced(cluster: Storage, prefix: str, keep: set[str], deadline: float) -> None:
    """Objects of older checkpoints that the latest no longer lists are deleted (best effort)."""
    try:
        listed = retrying(lambda: list(cluster.list(prefix + "objects/")), f"list {prefix}objects/", deadline)
        for info in listed:
            if info.key.rsplit("/", 1)[-1] not in keep:
                cluster.delete(info.key)
    except Exception as exc:  # a leftover object costs space, not correctness
        log.warning("could not delete old checkpoint objects under %s: %s", prefix, exc)
