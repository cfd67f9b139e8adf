"""The housekeeping step of DELETE under /arm: once a deleted job's retention has passed
(TRAINYARD_ARM_DELETE_RETENTION_S) and it has ended, remove its logs, its output files and manifests,
then its rows. A thread of the API runs it every PURGE_PERIOD_S; several API processes may run it at
once, as every removal is idempotent (a file already gone, rows already deleted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from trainyard import datarefs
from trainyard.db import arm
from trainyard.db.models import utcnow
from trainyard.storage_adapters import ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)

PURGE_PERIOD_S = 30.0
PURGE_BATCH = 100


def _output_uris(storage: Storage, job_id: str) -> list[str]:
    uris = []
    for info in storage.list(datarefs.manifests_prefix(job_id)):
        manifest: dict[str, Any] = json.loads(storage.get(info.key))
        uris += [item["uri"] for output in manifest.get("outputs") or [] for item in output.get("files") or []]
    return uris


def remove_files(storage: Storage, job_id: str) -> None:
    """The job's output files (by its manifests), then its manifests and logs."""
    for uri in _output_uris(storage, job_id):
        root, path = datarefs.split_uri(uri)
        with contextlib.suppress(ObjectNotFound):
            datarefs.open_root(root).delete(path)
    for prefix in (datarefs.manifests_prefix(job_id), f"logs/{job_id}/"):
        for info in list(storage.list(prefix)):
            with contextlib.suppress(ObjectNotFound):
                storage.delete(info.key)


def purge_once(sessions: sessionmaker[Session], storage: Storage) -> int:
    """Remove the jobs that are due; how many."""
    with sessions() as session:
        due = arm.due_purges(session, utcnow(), PURGE_BATCH)
    removed = []
    for job_id in due:
        try:
            remove_files(storage, job_id)
        except StorageError as exc:  # kept for the next turn: its rows go only once its files have
            log.warning("could not remove the files of deleted job %s: %s", job_id, exc)
            continue
        removed.append(job_id)
    if removed:
        with sessions.begin() as session:
            arm.forget_purged(session, removed)
    return len(removed)


class Purger:
    """A thread running `purge_once` every PURGE_PERIOD_S until stopped."""

    def __init__(self, sessions: sessionmaker[Session], storage: Storage, period_s: float = PURGE_PERIOD_S):
        self.sessions, self.storage, self.period_s = sessions, storage, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainyard-arm-purger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                purge_once(self.sessions, self.storage)
            except Exception:  # the database may be away for a while: the next turn tries again
                log.exception("purging deleted Batch AI jobs failed")
