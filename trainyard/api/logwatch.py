"""One Redis pub/sub subscription per API process that wakes the log followers whose job's logs moved.

Each follower registers a `Watch` (an asyncio.Event) for its job; the hub's single task keeps the
connection subscribed to the channels of the jobs someone follows and sets the events of the
watches a notice concerns (lognotify). Followers cost no connection and no thread while they wait.

Notices are hints: when Redis is away the hub reconnects in the background and the followers
poll slowly meanwhile. Each (re)subscription wakes the job's watches once it is confirmed, so a
follower reads the store after the subscription is live: nothing announced before it is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from fastapi import FastAPI
from redis.exceptions import RedisError

from trainyard import transport
from trainyard.config import secret
from trainyard.lognotify import NOTICE_COMPLETE, NOTICE_SEGMENT, LogNotice

log = logging.getLogger(__name__)

# How long the hub's task waits for a message before it looks for followers that came or went.
LISTEN_TIMEOUT_S = 0.05
RECONNECT_S = 1.0
CHANNEL_PREFIX = transport.log_notices_channel("")


class Watch:
    """One follower's wake-up call: its job's notices for its stream, and every part's completion."""

    def __init__(self, job_id: str, rank: int, stream: str):
        self.job_id, self.rank, self.stream = job_id, rank, stream
        self.attempt: int | None = None  # set by the follower once it knows which attempt it reads
        self.state_hint = False  # a part's logs completed: its attempt may be ending
        self._event = asyncio.Event()

    def offer(self, notice: LogNotice) -> None:
        if self.attempt is not None and notice.attempt != self.attempt:
            return
        if notice.kind == NOTICE_COMPLETE:
            # Any rank's: the attempt (and so this follow) ends when its last part does.
            self.state_hint = True
            self._event.set()
        elif notice.kind == NOTICE_SEGMENT and (
            self.attempt is None or (notice.rank, notice.stream) == (self.rank, self.stream)
        ):
            self._event.set()

    def wake(self) -> None:
        self._event.set()

    def take_state_hint(self) -> bool:
        hint, self.state_hint = self.state_hint, False
        return hint

    async def wait(self, timeout_s: float) -> bool:
        """Until woken or `timeout_s` passed; True when woken. Wake-ups before the call count."""
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            # Cleared before the follower reads again: a notice after this point wakes it anew.
            self._event.clear()
        return True


class LogHub:
    """The process's one subscription: channels of followed jobs only, dispatched to their watches."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.loop = asyncio.get_running_loop()
        self._watches: dict[str, set[Watch]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str, rank: int, stream: str) -> AsyncIterator[Watch]:
        watch = Watch(job_id, rank, stream)
        self._watches.setdefault(job_id, set()).add(watch)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="log-notices")
        try:
            yield watch
        finally:
            watches = self._watches.get(job_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[job_id]
                    self._changed.set()

    def followed_jobs(self) -> int:
        return len(self._watches)

    async def _run(self) -> None:
        client = redis.asyncio.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=10,
                                              health_check_interval=15)  # fmt: skip
        try:
            while True:
                try:
                    await self._listen(client)
                except (RedisError, OSError) as exc:
                    log.warning("log notices: subscription lost, followers poll until it is back: %s", exc)
                    await asyncio.sleep(RECONNECT_S)
        finally:
            await client.aclose()

    async def _listen(self, client: redis.asyncio.Redis) -> None:
        pubsub = client.pubsub()
        subscribed: set[str] = set()
        try:
            while True:
                await self._sync(pubsub, subscribed)
                if not subscribed:
                    await self._changed.wait()
                    continue
                message = await pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                if message is not None:
                    self._dispatch(message)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _sync(self, pubsub: Any, subscribed: set[str]) -> None:
        """Subscribe to newly followed jobs, unsubscribe from those no one follows any more."""
        self._changed.clear()
        wanted = set(self._watches)
        new, gone = wanted - subscribed, subscribed - wanted
        if new:
            await pubsub.subscribe(*(transport.log_notices_channel(job_id) for job_id in new))
            subscribed |= new
        if gone:
            await pubsub.unsubscribe(*(transport.log_notices_channel(job_id) for job_id in gone))
            subscribed -= gone

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        job_id = channel.decode()[len(CHANNEL_PREFIX) :]
        watches = list(self._watches.get(job_id, ()))
        if message.get("type") == "subscribe":  # live from now on: read what came before it
            for watch in watches:
                watch.wake()
        elif message.get("type") == "message":
            notice = LogNotice.decode(message.get("data") or b"")
            if notice is not None and notice.job_id == job_id:
                for watch in watches:
                    watch.offer(notice)


def log_hub(app: FastAPI) -> LogHub:
    """The app's hub on the running event loop (a test client may run the app on several loops)."""
    hub: LogHub | None = getattr(app.state, "log_hub", None)
    if hub is None or hub.loop is not asyncio.get_running_loop():
        hub = app.state.log_hub = LogHub(secret(app.state.settings.redis_url) or "")
    return hub
