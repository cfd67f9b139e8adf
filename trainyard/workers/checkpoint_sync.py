"""Periodic checkpoint saves while a part runs: TRAINYARD_CHECKPOINT_DIR reaches the store every checkpoint_interval_s.

Without it a checkpoint is saved only when the part ends on a live node; a node that dies
(kill -9, power loss, a spot VM taken back) would lose everything since the attempt began.
The part's end still saves once more (workers/staging.py) after the job has stopped writing.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from trainyard.spec import DEFAULT_CHECKPOINT_INTERVAL_S
from trainyard.storage_adapters import Storage, StorageError
from trainyard.workers import checkpoints
from trainyard.workers.deadlines import NODE_DEADLINES, Deadline, Deadlines
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.snapshots import TreeWatcher
from trainyard.workers.transfer import TransferFailed

log = logging.getLogger(__name__)

BUSY_RETRY_S = 0.5  # a file was being written during the pass: look again soon rather than a whole interval later


class CheckpointSyncer:
    """Saves the part's checkpoint directory every `interval_s`; `stop()` before the final save.

    Its thread starts when the first interval is over (a node deadline until then): the many
    parts shorter than one interval never start one.
    """

    def __init__(self, cluster: Storage, ctx: LaunchContext, interval_s: float, deadlines: Deadlines = NODE_DEADLINES):
        self.cluster, self.ctx, self.interval_s = cluster, ctx, interval_s
        scratch = Path(str(ctx.checkpoint_dir) + ".snapshots")
        self.watcher = TreeWatcher(ctx.checkpoint_dir, scratch)
        self.saved_at: list[float] = []  # when each save completed (monotonic), for lag measurements
        self._stop = threading.Event()
        self._deadlines = deadlines
        self._first: Deadline | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> CheckpointSyncer:
        self._first = self._deadlines.call_later(self.interval_s, self._begin)
        return self

    def _begin(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name=f"checkpoint-{self.ctx.job_id}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        wait_s = 0.0  # the first interval is over already
        while not self._stop.wait(wait_s):
            wait_s = self.interval_s if self.sync_once() else min(BUSY_RETRY_S, self.interval_s)

    def sync_once(self) -> bool:
        """One save; False when it should be tried again soon (a file moved meanwhile, the store is down)."""
        deadline = time.monotonic() + max(self.interval_s, 10.0)
        try:
            summary = checkpoints.save_snapshot(
                self.cluster, self.ctx.job_id, self.ctx.attempt, self.ctx.rank, self.watcher, deadline
            )
        except checkpoints.Superseded as exc:  # a zombie of an older attempt: stop syncing for good
            log.warning("checkpoint sync stops: %s", exc)
            self._stop.set()
            return True
        except (TransferFailed, StorageError, OSError) as exc:
            log.warning("checkpoint of %s not synced yet: %s", self.ctx.job_id, exc)
            return False
        if summary is not None:
            self.saved_at.append(time.monotonic())
        return summary is not None or not self.watcher.root.is_dir() or not any(self.watcher.root.iterdir())

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            if self._first is not None:
                self._first.cancel()
            thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join()
        shutil.rmtree(self.watcher.scratch_parent, ignore_errors=True)


def start(cluster: Storage, ctx: LaunchContext) -> CheckpointSyncer:
    """Start syncing the part's checkpoint directory at the spec's checkpoint_interval_s (default 60 s)."""
    interval_s = float(ctx.spec.get("checkpoint_interval_s") or DEFAULT_CHECKPOINT_INTERVAL_S)
    return CheckpointSyncer(cluster, ctx, interval_s).start()
