"""Reading job logs for the API: one cached segment reader per app, and `follow` until the tail is in.

A follow ends when the attempt has ended and the part's logs are complete (its node said every
byte is in the store), so a store outage at the end of a job delays the end of the follow
instead of cutting its tail. A part whose node never confirms (lost with its node) ends the
follow after the tail has been quiet for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trainyard import logstore
from trainyard.db.models import Attempt, Job, Part
from trainyard.storage_adapters import StorageError

log = logging.getLogger(__name__)

FOLLOW_POLL_S = 0.2
FOLLOW_STATE_CHECK_S = 0.5
# After the attempt ended: how long a quiet tail is awaited for a node that has not confirmed yet
# (its store may be down: it keeps retrying), and for a part lost with its node.
TAIL_WAIT_S = 600.0
LOST_TAIL_WAIT_S = 10.0
STORE_RETRY_S = 1.0
TERMINAL_JOB_STATES = ("succeeded", "failed", "cancelled")


def log_reader(app: FastAPI) -> logstore.LogReader:
    """The app's reader: it remembers segment boundaries across requests and follow polls."""
    reader: logstore.LogReader | None = getattr(app.state, "log_reader", None)
    if reader is None:
        reader = app.state.log_reader = logstore.LogReader(app.state.storage)
    return reader


def read(app: FastAPI, job_id: str, attempt: int, rank: int, stream: str, offset: int) -> bytes:
    return log_reader(app).read(logstore.stream_prefix(job_id, attempt, rank, stream), offset)


@dataclass
class _Progress:
    """What the follower last learned from the database about the attempt it follows."""

    number: int | None
    ended: bool = False
    complete: bool = False
    lost: bool = False
    job_over: bool = False
    quiet_since: float = 0.0

    def refresh(self, sessions: sessionmaker[Session], job_id: str, rank: int) -> None:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                self.job_over = True
                return
            self.job_over = job.state in TERMINAL_JOB_STATES
            row = _attempt(session, job_id, self.number)
            if row is None:
                return
            self.number = row.number
            was_ended, self.ended = self.ended, row.ended_at is not None
            part = session.get(Part, (job_id, row.number, rank))
            # A rank the attempt does not have has nothing more to come once the attempt ended.
            self.complete = part is None or part.logs_complete or row.logs_complete
            self.lost = part is not None and part.state == "lost"
        if self.ended and not was_ended:
            self.quiet_since = time.monotonic()

    def tail_expected(self) -> bool:
        """Whether more bytes may still arrive once nothing is left to read right now."""
        if not self.ended:
            return True
        if self.complete:
            return False
        wait_s = LOST_TAIL_WAIT_S if self.lost else TAIL_WAIT_S
        return time.monotonic() - self.quiet_since < wait_s


def _attempt(session: Session, job_id: str, number: int | None) -> Attempt | None:
    if number is not None:
        return session.get(Attempt, (job_id, number))
    return session.scalars(
        select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number.desc()).limit(1)
    ).first()


def follow(app: FastAPI, job_id: str, attempt: int | None, rank: int, stream: str, offset: int) -> Iterator[bytes]:
    """Stream bytes as they reach storage until the attempt has ended and every byte is read."""
    sessions: sessionmaker[Session] = app.state.sessions
    reader = log_reader(app)
    progress = _Progress(attempt)
    checked_at = 0.0
    while True:
        if time.monotonic() - checked_at > FOLLOW_STATE_CHECK_S:
            checked_at = time.monotonic()
            progress.refresh(sessions, job_id, rank)
        if progress.number is None:
            if progress.job_over:
                return
            time.sleep(FOLLOW_POLL_S)
            continue
        # Read after the state check: when it said "ended and complete", this read sees the end.
        try:
            data = reader.read(logstore.stream_prefix(job_id, progress.number, rank, stream), offset)
        except StorageError as exc:  # the store is away: the follower waits for it, as the nodes do
            log.warning("log read failed, retrying: %s", exc)
            time.sleep(STORE_RETRY_S)
            continue
        if data:
            offset += len(data)
            progress.quiet_since = time.monotonic()
            yield data
            continue
        if not progress.tail_expected():
            return
        time.sleep(FOLLOW_POLL_S)
