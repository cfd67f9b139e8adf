"""Staging a part's data on its node: code in, inputs in, checkpoint in; outputs, checkpoint and provenance out.

Before start: the code archive is unpacked as the working directory (cached per node by digest),
each input is downloaded into the attempt's directory (`TRAINYARD_INPUT_<ID>`: the file, or the
directory of a tree), each output gets an empty directory (`TRAINYARD_OUTPUT_<ID>`), and the
last checkpoint is restored into `TRAINYARD_CHECKPOINT_DIR`. At the end, whatever the exit code,
outputs are uploaded to their URIs with sha256 checksums, the checkpoint is saved, and a
provenance manifest of the attempt is written beside the outputs and in the cluster's store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainyard import codepack, datarefs
from trainyard.storage_adapters import ObjectNotFound, Storage
from trainyard.workers import checkpoints
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.transfer import (
    FileDigest,
    Refused,
    TransferFailed,
    download,
    download_tree,
    retrying,
    tree_digest,
    upload,
    walk_files,
)

log = logging.getLogger(__name__)

# How long a transfer keeps retrying a store that is down before the part gives up on it.
TRANSFER_DEADLINE_S = 600.0
MANIFEST_DIR = ".trainyard"
MANIFEST_SYNC_S = 5.0
MANIFEST_LATE_S = 3600.0


class StagingError(Exception):
    """The part's data could not be put in place: the attempt fails before its command runs."""


@dataclass
class StagedPart:
    """What staging put in place, kept for the end of the part and its manifest."""

    attempt_dir: Path
    node_id: str
    started_at: str
    code: dict[str, str] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    checkpoint_restored: dict[str, Any] | None = None


def remove_tree(path: Path, empty_children: tuple[str, ...] = ()) -> None:
    """`shutil.rmtree(path, ignore_errors=True)`, cheap for what a short part leaves behind: an
    empty directory, or one holding only the named empty subdirectories, goes with a few rmdir
    calls; anything else (or a path that is not a directory) takes rmtree's way."""
    for name in empty_children:
        with contextlib.suppress(OSError):
            os.rmdir(path / name)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _deadline() -> float:
    return time.monotonic() + TRANSFER_DEADLINE_S


def _env_names(prefix: str, ident: str) -> list[str]:
    # As written and upper-cased: TRAINYARD_INPUT_<ID> reads naturally either way.
    return sorted({prefix + ident, prefix + ident.upper()})


# -- before start ----------------------------------------------------------------------------


def stage(cluster: Storage, node_dir: Path, node_id: str, ctx: LaunchContext) -> StagedPart:
    """Put code, inputs, output directories and the checkpoint in place; set the job's variables."""
    attempt_dir = node_dir / "attempts" / f"{ctx.job_id}-{ctx.attempt}-{ctx.rank}"
    remove_tree(attempt_dir)  # a redelivered part starts clean
    staged = StagedPart(attempt_dir, node_id, _now())
    try:
        if ctx.spec.get("code"):
            staged.code = _stage_code(cluster, node_dir, str(ctx.spec["code"]), ctx.workdir)
        env: dict[str, str] = {}
        for ref in ctx.spec.get("inputs") or []:
            _check_uri(ref["uri"], cluster)
            entry = _stage_input(ref["id"], ref["uri"], attempt_dir / "inputs" / ref["id"])
            staged.inputs.append(entry)
            env.update(dict.fromkeys(_env_names("TRAINYARD_INPUT_", ref["id"]), entry["local_path"]))
        for ref in ctx.spec.get("outputs") or []:
            out_dir = attempt_dir / "outputs" / ref["id"]
            out_dir.mkdir(parents=True)
            staged.outputs[ref["id"]] = out_dir
            env.update(dict.fromkeys(_env_names("TRAINYARD_OUTPUT_", ref["id"]), str(out_dir)))
        ctx.checkpoint_dir = attempt_dir / "checkpoint"
        if ctx.attempt > 1:
            staged.checkpoint_restored = checkpoints.restore(
                cluster, ctx.job_id, ctx.rank, ctx.checkpoint_dir, _deadline()
            )
        else:  # a first attempt has no checkpoint to find: no store listing for it
            ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    except (TransferFailed, ObjectNotFound, ValueError, OSError, tarfile.TarError) as exc:
        shutil.rmtree(attempt_dir, ignore_errors=True)
        raise StagingError(f"{type(exc).__name__}: {exc}") from exc
    ctx.data_env = env
    return staged


def _check_uri(uri: str, cluster: Storage) -> None:
    """The API refuses these at submit; a node checks again (sweeps render URIs, other nodes' stores)."""
    problem = datarefs.uri_problem(uri, cluster.url)
    if problem:
        raise ValueError(f"{uri}: {problem}")


def _stage_code(cluster: Storage, node_dir: Path, uri: str, workdir: Path) -> dict[str, str]:
    """Unpack the job's code as its working directory; archives from the cluster are cached by digest."""
    digest = datarefs.code_digest(uri)
    cache = node_dir / "code-cache"
    cache.mkdir(parents=True, exist_ok=True)
    if digest is not None:
        tree = cache / digest
        if not tree.is_dir():
            _fetch_code(cluster, datarefs.code_key(digest), tree, expected=digest)
    else:
        _check_uri(uri, cluster)
        root, path = datarefs.split_uri(uri)
        store = datarefs.open_root(root)
        if path.endswith("/") or not path:
            workdir.mkdir(parents=True, exist_ok=True)
            files = download_tree(store, path, workdir, _deadline())
            return {"uri": uri, "sha256": tree_digest(files)}
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            got = download(store, path, Path(scratch) / "code.tar.gz", _deadline())
            digest = got.sha256
            tree = cache / digest
            if not tree.is_dir():
                _unpack_into_cache(Path(scratch) / "code.tar.gz", tree)
    shutil.copytree(tree, workdir, symlinks=True, dirs_exist_ok=True)  # the job may change its copy
    return {"uri": uri, "sha256": digest}


def _fetch_code(cluster: Storage, key: str, tree: Path, expected: str) -> None:
    with tempfile.TemporaryDirectory(dir=tree.parent) as scratch:
        archive = Path(scratch) / "code.tar.gz"
        got = download(cluster, key, archive, _deadline())
        if got.sha256 != expected:
            raise StagingError(f"code archive {key} does not match its digest")
        _unpack_into_cache(archive, tree)


def _unpack_into_cache(archive: Path, tree: Path) -> None:
    """Unpack beside the cache entry, then rename: two parts unpacking at once both end with one tree."""
    staging_dir = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".unpack-"))
    try:
        codepack.unpack(archive, staging_dir)
        os.rename(staging_dir, tree)
    except OSError:
        if not tree.is_dir():
            raise
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)


def _stage_input(ident: str, uri: str, dest: Path) -> dict[str, Any]:
    """One object → a file in `dest`; a prefix (or a name with objects under it) → a tree in `dest`."""
    root, path = datarefs.split_uri(uri)
    store = datarefs.open_root(root)
    deadline = _deadline()
    if path and not path.endswith("/"):
        target = dest / path.rsplit("/", 1)[-1]
        try:
            got = download(store, path, target, deadline)
            return {
                "id": ident,
                "uri": uri,
                "local_path": str(target),
                "sha256": got.sha256,
                "files": 1,
                "bytes": got.size,
            }
        except ObjectNotFound:
            path += "/"  # not an object: maybe a "directory" of them
    dest.mkdir(parents=True, exist_ok=True)
    files = download_tree(store, path, dest, deadline)
    if not files:
        raise StagingError(f"input {ident}: nothing found at {uri}")
    return {
        "id": ident,
        "uri": uri,
        "local_path": str(dest),
        "sha256": tree_digest(files),
        "files": len(files),
        "bytes": sum(f.size for f in files),
    }


# -- after the end ---------------------------------------------------------------------------


def finish(
    cluster: Storage, ctx: LaunchContext, staged: StagedPart, exit_code: int, say: Callable[[bytes], None]
) -> int:
    """Upload outputs and the checkpoint, write the manifest, clean up; returns the part's exit code.

    An attempt whose command succeeded but whose outputs could not be uploaded fails (exit 1):
    its result did not reach the user. `say(bytes)` writes a line into the part's stderr log.
    """
    outputs, failures = [], []
    for ident, out_dir in staged.outputs.items():
        uri = _output_uri(ctx.spec, ident)
        try:
            _check_uri(uri, cluster)
            outputs.append(_upload_output(ctx, ident, uri, out_dir))
        except (TransferFailed, ValueError, OSError) as exc:
            failures.append(f"output {ident}: {exc}")
    checkpoint = None
    try:
        if staged.checkpoint_restored is not None or _has_files(ctx.checkpoint_dir):
            checkpoint = checkpoints.save(cluster, ctx.job_id, ctx.attempt, ctx.rank, ctx.checkpoint_dir, _deadline())
    except (TransferFailed, OSError) as exc:
        failures.append(f"checkpoint: {exc}")
    manifest = _manifest(ctx, staged, outputs, checkpoint, exit_code, failures)
    _write_manifest_soon(cluster, ctx, manifest, outputs)
    for failure in failures:
        say(f"trainyard: {failure}\n".encode())
    remove_tree(staged.attempt_dir, empty_children=(ctx.checkpoint_dir.name,))
    return 1 if failures and exit_code == 0 else exit_code


def _has_files(directory: Path) -> bool:
    """Whether a job left anything in a directory (a job without checkpoints needs no store at its end)."""
    return directory.is_dir() and any(directory.iterdir())


def _output_uri(spec: dict[str, Any], ident: str) -> str:
    return next(str(ref["uri"]) for ref in spec.get("outputs") or [] if ref["id"] == ident)


def _upload_output(ctx: LaunchContext, ident: str, uri: str, out_dir: Path) -> dict[str, Any]:
    root, path = datarefs.split_uri(uri)
    store = datarefs.open_root(root)
    base = path.rstrip("/")
    deadline = _deadline()
    files: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    for item in walk_files(out_dir):
        if isinstance(item, Refused):
            refused.append({"path": item.path, "reason": item.reason})
            continue
        rel, source = item
        got = upload(source, store, f"{base}/{rel}" if base else rel, deadline)
        files.append(
            {
                "path": rel,
                "size": got.size,
                "sha256": got.sha256,
                "uri": datarefs.join_uri(uri, rel),
                "key": datarefs.output_file_key(ctx.attempt, ctx.rank, ident, rel),
            }
        )
    digest = tree_digest([FileDigest(f["path"], f["size"], f["sha256"]) for f in files])
    return {"id": ident, "uri": uri, "sha256": digest, "files": files, "refused": refused}


def _manifest(
    ctx: LaunchContext,
    staged: StagedPart,
    outputs: list[dict[str, Any]],
    checkpoint: dict[str, Any] | None,
    exit_code: int,
    failures: list[str],
) -> dict[str, Any]:
    """The provenance of one part of one attempt (the stored spec already shows secrets as ***)."""
    return {
        "kind": "trainyard.provenance/v1",
        "job_id": ctx.job_id,
        "job_name": ctx.name,
        "attempt": ctx.attempt,
        "rank": ctx.rank,
        "node": staged.node_id,
        "node_address": ctx.node_address,
        "nodes": ctx.node_hosts,
        "num_nodes": ctx.num_nodes,
        "gpus": ctx.gpus,
        "spec": ctx.spec,
        "image": ctx.spec.get("image"),
        "launcher": ctx.spec.get("launcher", "process"),
        "code": staged.code,
        "inputs": [{k: v for k, v in entry.items() if k != "local_path"} for entry in staged.inputs],
        "outputs": outputs,
        "checkpoint": {"restored": staged.checkpoint_restored, "saved": checkpoint},
        "started_at": staged.started_at,
        "ended_at": _now(),
        "exit_code": exit_code,
        "problems": failures,
    }


def _write_manifest_soon(
    cluster: Storage, ctx: LaunchContext, manifest: dict[str, Any], outputs: list[dict[str, Any]]
) -> None:
    """Write the manifest now if the store answers; else keep trying in the background.

    Provenance must not hold up the exit report of a job without outputs while the store is down.
    """
    try:
        _write_manifest(cluster, ctx, manifest, outputs, time.monotonic() + MANIFEST_SYNC_S)
        return
    except (TransferFailed, ValueError) as exc:
        log.warning("manifest of %s/%d/%d not written yet: %s", ctx.job_id, ctx.attempt, ctx.rank, exc)

    def later() -> None:
        try:
            _write_manifest(cluster, ctx, manifest, outputs, time.monotonic() + MANIFEST_LATE_S)
        except (TransferFailed, ValueError) as exc:
            log.error("manifest of %s/%d/%d lost: %s", ctx.job_id, ctx.attempt, ctx.rank, exc)

    threading.Thread(target=later, name=f"manifest-{ctx.job_id}", daemon=True).start()


def _write_manifest(
    cluster: Storage, ctx: LaunchContext, manifest: dict[str, Any], outputs: list[dict[str, Any]], deadline: float
) -> None:
    body = json.dumps(manifest, sort_keys=True).encode()
    key = datarefs.manifest_key(ctx.job_id, ctx.attempt, ctx.rank)
    retrying(lambda: cluster.put(key, body), f"write {key}", deadline)
    for output in outputs:  # and beside each output, so the data carries its own provenance
        root, path = datarefs.split_uri(output["uri"])
        name = f"{MANIFEST_DIR}/manifest-{ctx.job_id}-{ctx.attempt}-{ctx.rank}.json"
        target = f"{path.rstrip('/')}/{name}" if path.strip("/") else name
        store = datarefs.open_root(root)
        retrying(lambda: store.put(target, body), f"write {output['uri']} manifest", deadline)  # noqa: B023
