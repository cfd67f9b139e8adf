"""Volumes and checkpoint sync: blob-mount read throughput vs a direct SDK download, checkpoint sync lag.

- blob_read_<store>: one object of --size-mib read sequentially (8 MiB reads) through an rclone FUSE
  mount (a `blob` volume, cold: a fresh mount per run) vs the same object downloaded with the
  storage adapter (the SDK: boto3 / azure-storage-blob, 8 MiB ranged GETs, as staging does), on the
  same moto or Azurite server in the same run; median of --runs. ratio = mount / SDK.
- checkpoint_sync_lag: a job writes a new checkpoint (a 1 MiB file, then its step number, renamed
  into place) every 0.25 s while the part's checkpoint syncer runs at --interval-s against moto;
  lag = time from a step's write until the store's latest.json lists it. p50/p99 (goal p99 ≤ interval + 1 s).
JSON lines on stdout (harness.py), progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from harness import REPO_ROOT, emit, note, percentile

sys.path.insert(0, str(REPO_ROOT))

from tests.services import BlobServer
from trainyard.datarefs import checkpoint_prefix
from trainyard.storage_adapters import ObjectNotFound, Storage, open_storage
from trainyard.workers import checkpoint_sync, volumes
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.transfer import CHUNK_BYTES

SERVER_KIND = {"s3": "moto", "az": "azurite"}
WRITE_EVERY_S = 0.25


def _context(node: Path, spec: dict[str, object], job_id: str) -> LaunchContext:
    workdir = node / "work" / job_id
    workdir.mkdir(parents=True, exist_ok=True)
    return LaunchContext(
        job_id=job_id,
        name="bench",
        attempt=1,
        rank=0,
        num_nodes=1,
        node_hosts=["127.0.0.2"],
        node_address="127.0.0.2",
        spec=spec,
        gpus=[],
        workdir=workdir,
        checkpoint_dir=node / "checkpoints" / job_id,
        master_port=29500,
    )


def _read_through_mount(node: Path, root: str, key: str) -> float:
    job_id = f"read-{uuid.uuid4().hex[:6]}"
    ctx = _context(
        node, {"volumes": [{"name": "data", "kind": "blob", "uri": f"{root}/bench", "read_only": True}]}, job_id
    )
    volumes.mount_part(node, ctx)
    try:
        path = Path(ctx.data_env["TRAINYARD_VOLUME_DATA"]) / key.removeprefix("bench/")
        started, size = time.perf_counter(), 0
        with path.open("rb", buffering=0) as reader:
            while chunk := reader.read(CHUNK_BYTES):
                size += len(chunk)
        return size / (time.perf_counter() - started)
    finally:
        volumes.release_part(node, (job_id, 1, 0))


def _read_through_sdk(root: str, key: str) -> float:
    store = open_storage(root)
    started, offset = time.perf_counter(), 0
    while chunk := store.get(key, offset, offset + CHUNK_BYTES):
        offset += len(chunk)
        if len(chunk) < CHUNK_BYTES:
            break
    return offset / (time.perf_counter() - started)


def bench_blob_read(kind: str, tmp: Path, size_mib: int, runs: int) -> None:
    with BlobServer(SERVER_KIND[kind], tmp / f"{kind}-server") as server:
        os.environ.update(server.environment())
        root = server.create_root(f"bench-{uuid.uuid4().hex[:12]}")
        key = "bench/object.bin"
        open_storage(root).put(key, os.urandom(size_mib * 2**20))
        mount, sdk = [], []
        for run in range(runs):
            sdk.append(_read_through_sdk(root, key))
            mount.append(_read_through_mount(tmp / "node", root, key))
            note(f"{kind} run {run + 1}: mount {mount[-1] / 2**20:.0f} MiB/s, sdk {sdk[-1] / 2**20:.0f} MiB/s")
        emit(
            f"blob_read_{kind}",
            statistics.median(mount) / 2**20,
            "MiB/s",
            "ratio ≥ 0.5 of the SDK",
            baseline=statistics.median(sdk) / 2**20,
            size_mib=size_mib,
            runs=runs,
        )


def _writer(ckpt: Path, stop: threading.Event, written: dict[int, float]) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    step = 0
    while not stop.is_set():
        step += 1
        (ckpt / "weights.bin.new").write_bytes(os.urandom(2**20))
        os.replace(ckpt / "weights.bin.new", ckpt / "weights.bin")
        (ckpt / "step.new").write_text(str(step))
        os.replace(ckpt / "step.new", ckpt / "step")
        written[step] = time.monotonic()
        time.sleep(WRITE_EVERY_S)


def _synced_step(store: Storage, job_id: str) -> int | None:
    try:
        latest = json.loads(store.get(checkpoint_prefix(job_id, 0) + "latest.json"))
        entry = next(f for f in latest["files"] if f["path"] == "step")
        return int(store.get(checkpoint_prefix(job_id, 0) + "objects/" + entry["sha256"]))
    except (ObjectNotFound, StopIteration, ValueError):
        return None


def bench_checkpoint_lag(tmp: Path, interval_s: float, seconds: float) -> None:
    with BlobServer("moto", tmp / "lag-server") as server:
        os.environ.update(server.environment())
        root = server.create_root(f"ckpt-{uuid.uuid4().hex[:12]}")
        store = open_storage(root)
        job_id = f"lag-{uuid.uuid4().hex[:6]}"
        ctx = _context(tmp / "node", {"checkpoint_interval_s": interval_s}, job_id)
        written: dict[int, float] = {}
        seen: dict[int, float] = {}
        stop = threading.Event()
        writer = threading.Thread(target=_writer, args=(ctx.checkpoint_dir, stop, written), daemon=True)
        writer.start()
        syncer = checkpoint_sync.start(store, ctx)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            step = _synced_step(store, job_id)
            now = time.monotonic()
            for s in [s for s in written if s not in seen and step is not None and s <= step]:
                seen[s] = now
            time.sleep(0.02)
        stop.set()
        syncer.stop()
        writer.join()
        # A step overwritten before any sync saw it is never listed: its lag is until the next one that is.
        lags = []
        for s, at in written.items():
            later = [seen[t] for t in seen if t >= s]
            if later:
                lags.append(min(later) - at)
        emit(
            "checkpoint_sync_lag_p99",
            percentile(lags, 99),
            "s",
            f"≤ interval + 1 s ({interval_s + 1:g} s)",
            p50=percentile(lags, 50),
            interval_s=interval_s,
            steps=len(lags),
            syncs=len(syncer.saved_at),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="s3,az")
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--lag-seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-volumes-") as scratch:
        tmp = Path(scratch)
        for kind in args.stores.split(","):
            bench_blob_read(kind, tmp, args.size_mib, args.runs)
        bench_checkpoint_lag(tmp, args.interval_s, args.lag_seconds)
        volumes.clean_leftovers(tmp / "node")


if __name__ == "__main__":
    main()
