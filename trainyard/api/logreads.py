"""Reading job logs for the API: one cached segment reader per app, and `follow` until the tail is in.

A follow ends when the attempt has ended and the part's logs are complete (its node said every
byte is in the store), so a store outage at the end of a job delays the end of the follow
instead of cutting its tail. A part whose node never confirms (lost with its node) ends the
follow after the tail has been quiet for a while.

A follow is an asyncio generator that sleeps on its job's log notices (api/logwatch.py): an idle
follower holds no thread. Its database and store reads run in threads, at most
`FOLLOW_THREADS` at a time for all followers together, so followers never take the threads the
other (sync) routes run in. Without notices (Redis away, one lost) it still polls every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trainyard import logstore
from trainyard.api.logwatch import Watch, log_hub
from trainyard.db.models import Attempt, Job, Part
from trainyard.storage_adapters import StorageError

log = logging.getLogger(__name__)

# Without a notice, a follower looks at the database and the store this often (± 20 %, so that a
# thousand followers do not poll in step); a notice wakes it at once.
FALLBACK_POLL_S = 4.0
FALLBACK_JITTER = 0.2
# After a part's logs completed, its attempt is about to end (once the scheduler has applied the
# node's report): the database is looked at this often, for this long.
STATE_CHECK_S = 0.5
STATE_HINT_WINDOW_S = 10.0
# After the attempt ended: how long a quiet tail is awaited for a node that has not confirmed yet
# (its store may be down: it keeps retrying), and for a part lost with its node.
TAIL_WAIT_S = 600.0
LOST_TAIL_WAIT_S = 10.0
STORE_RETRY_S = 1.0
# Threads that every follower of this process shares for its reads (AnyIO's default pool has 40).
FOLLOW_THREADS = 8
SHARED_SNAPSHOTS_MAX = 4096
TERMINAL_JOB_STATES = ("succeeded", "failed", "cancelled")

T = TypeVar("T")


def log_reader(app: FastAPI) -> logstore.LogReader:
    """The app's reader: it remembers segment boundaries across requests and follow polls."""
    reader: logstore.LogReader | None = getattr(app.state, "log_reader", None)
    if reader is None:
        reader = app.state.log_reader = logstore.LogReader(app.state.storage)
    return reader


def read(app: FastAPI, job_id: str, attempt: int, rank: int, stream: str, offset: int) -> bytes:
    return log_reader(app).read(logstore.stream_prefix(job_id, attempt, rank, stream), offset)


@dataclass(frozen=True)
class _Snapshot:
    """What the database says, at one moment, about the attempt a follower reads."""

    job_found: bool
    job_over: bool
    number: int | None = None
    ended: bool = False
    complete: bool = False
    lost: bool = False


def _snapshot(sessions: sessionmaker[Session], job_id: str, number: int | None, rank: int) -> _Snapshot:
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return _Snapshot(job_found=False, job_over=True)
        job_over = job.state in TERMINAL_JOB_STATES
        row = _attempt(session, job_id, number)
        if row is None:
            return _Snapshot(job_found=True, job_over=job_over)
        part = session.get(Part, (job_id, row.number, rank))
        # A rank the attempt does not have has nothing more to come once the attempt ended.
        return _Snapshot(job_found=True, job_over=job_over, number=row.number, ended=row.ended_at is not None,
                         complete=part is None or part.logs_complete or row.logs_complete,
                         lost=part is not None and part.state == "lost")  # fmt: skip


@dataclass
class _Progress:
    """What the follower last learned from the database about the attempt it follows."""

    number: int | None
    ended: bool = False
    complete: bool = False
    lost: bool = False
    job_over: bool = False
    quiet_since: float = 0.0

    def apply(self, snapshot: _Snapshot) -> None:
        self.job_over = snapshot.job_over
        if snapshot.number is None:
            return
        self.number = snapshot.number
        was_ended = self.ended
        self.ended, self.complete, self.lost = snapshot.ended, snapshot.complete, snapshot.lost
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


_StateKey = tuple[str, int | None, int]


class _SharedSnapshots:
    """Followers of one stream share their database reads: one read per key and STATE_CHECK_S.

    Used from the event loop only (no lock): a follower that finds a read in flight or younger
    than STATE_CHECK_S awaits that one. A snapshot older than the caller is still safe to act on:
    "ended and complete" never turns back, so a store read after it sees every byte.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._reads: dict[_StateKey, tuple[float, asyncio.Future[_Snapshot]]] = {}

    async def get(self, key: _StateKey, read: Callable[[], Awaitable[_Snapshot]]) -> _Snapshot:
        now = time.monotonic()
        found = self._reads.get(key)
        if found is None or now - found[0] > STATE_CHECK_S:
            if len(self._reads) >= SHARED_SNAPSHOTS_MAX:
                self._forget_older_than(now - STATE_CHECK_S)
            found = self._reads[key] = (now, asyncio.ensure_future(read()))
        return await asyncio.shield(found[1])

    def _forget_older_than(self, moment: float) -> None:
        for key in [key for key, (at, future) in self._reads.items() if at < moment and future.done()]:
            del self._reads[key]


def _attempt(session: Session, job_id: str, number: int | None) -> Attempt | None:
    if number is not None:
        return session.get(Attempt, (job_id, number))
    return session.scalars(
        select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number.desc()).limit(1)
    ).first()


@dataclass(frozen=True)
class _LoopShares:
    """What every follower on one event loop shares: its threads, its database reads."""

    loop: asyncio.AbstractEventLoop
    limiter: anyio.CapacityLimiter
    snapshots: _SharedSnapshots


def _shares(app: FastAPI) -> _LoopShares:
    """The running loop's shares (like the hub: a test client may run the app on several loops)."""
    loop = asyncio.get_running_loop()
    found: _LoopShares | None = getattr(app.state, "follow_shares", None)
    if found is None or found.loop is not loop:
        found = app.state.follow_shares = _LoopShares(loop, anyio.CapacityLimiter(FOLLOW_THREADS),
                                                      _SharedSnapshots(loop))  # fmt: skip
    return found


class _Follower:
    """One follow's loop state: where it reads, when it next looks at the database."""

    def __init__(self, request: Request, job_id: str, attempt: int | None, rank: int, stream: str, offset: int):
        app = request.app
        self.request, self.job_id, self.rank, self.stream, self.offset = request, job_id, rank, stream, offset
        self.sessions: sessionmaker[Session] = app.state.sessions
        self.reader = log_reader(app)
        shares = _shares(app)
        self.limiter, self.snapshots = shares.limiter, shares.snapshots
        self.progress = _Progress(attempt)
        self.check_at = 0.0  # monotonic time of the next database check (0: at once)
        self.hinted_until = 0.0

    async def _blocking(self, function: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)

    async def refresh_if_due(self, watch: Watch) -> None:
        now = time.monotonic()
        if watch.take_state_hint():
            self.hinted_until = now + STATE_HINT_WINDOW_S
            self.check_at = min(self.check_at, now + STATE_CHECK_S)
        if self.progress.number is not None and now < self.check_at:
            return
        key = (self.job_id, self.progress.number, self.rank)
        snapshot = await self.snapshots.get(
            key, lambda: self._blocking(_snapshot, self.sessions, self.job_id, self.progress.number, self.rank)
        )
        self.progress.apply(snapshot)
        watch.attempt = self.progress.number
        now = time.monotonic()
        if now < self.hinted_until:
            self.check_at = now + STATE_CHECK_S
        else:
            self.check_at = now + FALLBACK_POLL_S * random.uniform(1 - FALLBACK_JITTER, 1 + FALLBACK_JITTER)

    async def read(self) -> bytes:
        assert self.progress.number is not None
        prefix = logstore.stream_prefix(self.job_id, self.progress.number, self.rank, self.stream)
        data = await self._blocking(self.reader.read, prefix, self.offset)
        self.offset += len(data)
        return data

    async def idle(self, watch: Watch) -> bool:
        """Wait for a notice or the next database check; False when the client has gone."""
        if not await watch.wait(self.check_at - time.monotonic()):
            return not await self.request.is_disconnected()
        return True


async def follow(
    request: Request, job_id: str, attempt: int | None, rank: int, stream: str, offset: int
) -> AsyncIterator[bytes]:
    """Stream bytes as they reach storage until the attempt has ended and every byte is read."""
    follower = _Follower(request, job_id, attempt, rank, stream, offset)
    progress = follower.progress
    async with log_hub(request.app).watch(job_id, rank, stream) as watch:
        while True:
            await follower.refresh_if_due(watch)
            if progress.number is None:
                if progress.job_over or not await follower.idle(watch):
                    return
                continue
            # Read after the state check: when it said "ended and complete", this read sees the end.
            try:
                data = await follower.read()
            except StorageError as exc:  # the store is away: the follower waits for it, as the nodes do
                log.warning("log read failed, retrying: %s", exc)
                await watch.wait(STORE_RETRY_S)
                continue
            if data:
                progress.quiet_since = time.monotonic()
                yield data
                continue
            if not progress.tail_expected() or not await follower.idle(watch):
                return
