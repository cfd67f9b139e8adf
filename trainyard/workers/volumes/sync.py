"""`sync` volumes: a store prefix copied to the node at the start, changed files put back while the job runs.

Download at mount; then every `sync_interval_s` and at the end, files that changed are
uploaded whole (a stable copy, sha256-checked, one object per file: a reader of the store
never sees part of a file), and files the job deleted are deleted. Works on any store the
node can open (file://, s3://, az://) and needs no FUSE. A read-only volume is never uploaded.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from trainyard import datarefs
from trainyard.spec import DEFAULT_SYNC_INTERVAL_S, VolumeSpec
from trainyard.storage_adapters import ObjectNotFound, Storage, StorageError
from trainyard.workers.snapshots import Known, TreeWatcher
from trainyard.workers.transfer import TransferFailed, download_tree, retrying, upload
from trainyard.workers.volumes.base import MountFailed, PartRef, Say, VolumeMount

log = logging.getLogger(__name__)

DOWNLOAD_DEADLINE_S = 600.0
FINAL_UPLOAD_DEADLINE_S = 600.0


class SyncVolume(VolumeMount):
    def __init__(self, spec: VolumeSpec, part: PartRef):
        super().__init__(spec, part)
        root, path = datarefs.split_uri(str(spec.uri))
        self.store: Storage = datarefs.open_root(root)
        self.prefix = path.strip("/") + "/" if path.strip("/") else ""
        self.interval_s = spec.sync_interval_s or DEFAULT_SYNC_INTERVAL_S
        self.watcher = TreeWatcher(self.mount_point, part.root / f".sync-{spec.name}")
        self._lock = threading.Lock()  # one pass at a time: the periodic thread and the final sync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_sync_at: float | None = None

    def mount(self) -> Path:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        try:
            files = download_tree(self.store, self.prefix, self.mount_point, time.monotonic() + DOWNLOAD_DEADLINE_S)
        except (TransferFailed, ObjectNotFound, StorageError, OSError) as exc:
            raise MountFailed(self.spec.name, f"download of {self.spec.uri} failed: {exc}") from exc
        for got in files:
            st = (self.mount_point / got.path).stat()
            self.watcher.remember(got.path, Known(got.size, st.st_mtime_ns, got.sha256))
        if not self.spec.read_only:
            self._thread = threading.Thread(target=self._loop, name=f"sync-{self.spec.name}", daemon=True)
            self._thread.start()
        return self.mount_point

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            problems = self.sync_once(time.monotonic() + max(self.interval_s, 30.0))
            for problem in problems:
                log.warning("volume %s: %s (retried at the next sync)", self.spec.name, problem)

    def sync_once(self, deadline: float) -> list[str]:
        """Upload what changed since the last pass, delete what was removed; the problems met."""
        with self._lock:
            scan = self.watcher.scan()
            problems: list[str] = []
            try:
                for rel, known in scan.files.items():
                    copy = scan.copies.get(rel)
                    if copy is not None:
                        try:
                            got = upload(copy, self.store, self.prefix + rel, deadline)
                        except (TransferFailed, OSError) as exc:
                            problems.append(f"upload of {rel}: {exc}")
                            continue
                        if got.sha256 != known.sha256:
                            problems.append(f"upload of {rel}: checksum mismatch")
                            continue
                    self.watcher.remember(rel, known)
                for rel in scan.removed:
                    try:
                        retrying(lambda: self.store.delete(self.prefix + rel), f"delete {rel}", deadline)  # noqa: B023
                        self.watcher.forget(rel)
                    except ObjectNotFound:
                        self.watcher.forget(rel)
                    except TransferFailed as exc:
                        problems.append(f"delete of {rel}: {exc}")
            finally:
                scan.discard()
            self.last_sync_at = time.time()
            return problems

    def release(self, say: Say) -> list[str]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        problems: list[str] = []
        if not self.spec.read_only:
            problems = self.sync_once(time.monotonic() + FINAL_UPLOAD_DEADLINE_S)  # the job has ended: none busy
        shutil.rmtree(self.mount_point, ignore_errors=True)
        shutil.rmtree(self.watcher.scratch_parent, ignore_errors=True)
        return [f"volume {self.spec.name}: {p}" for p in problems]
