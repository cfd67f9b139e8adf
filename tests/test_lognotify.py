"""Log notices on real Redis: the node's notifier publishes, the API's hub wakes the watches they concern,
and a restarted Redis is subscribed to again (the watches are woken once it is)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import redis

from tests.services import free_port, wait_for_port
from trainyard.api.logwatch import LogHub
from trainyard.lognotify import NOTICE_COMPLETE, NOTICE_SEGMENT, LogNotice, LogNotifier
from trainyard.up import redis_server_args

SUBSCRIBED_WITHIN_S = 5.0
NOT_WOKEN_S = 0.5


def test_a_notice_round_trips_as_json_and_junk_is_ignored() -> None:
    notice = LogNotice(NOTICE_SEGMENT, "j1", 2, 0, "stdout", 4096)
    assert LogNotice.decode(notice.encode()) == notice
    assert LogNotice.decode(LogNotice(NOTICE_COMPLETE, "j1", 2, 1).encode()) == LogNotice(NOTICE_COMPLETE, "j1", 2, 1)
    junk = (b"", b"not json", b"[]", b'{"kind": "segment"}', b'{"kind": "x", "job_id": "j", "attempt": 1, "rank": 0}')
    for raw in junk:
        assert LogNotice.decode(raw) is None


async def _watch_sees_its_notices(redis_url: str) -> None:
    job_id = f"j{uuid.uuid4().hex[:12]}"
    notifier = LogNotifier(redis.Redis.from_url(redis_url))
    hub = LogHub(redis_url)
    async with hub.watch(job_id, 0, "stdout") as watch:
        assert await watch.wait(SUBSCRIBED_WITHIN_S), "woken once the subscription is live"
        watch.attempt = 2
        notifier.notify(LogNotice(NOTICE_SEGMENT, job_id, 2, 0, "stderr", 10))
        notifier.notify(LogNotice(NOTICE_SEGMENT, job_id, 1, 0, "stdout", 10))  # an older attempt's
        notifier.notify(LogNotice(NOTICE_SEGMENT, f"{job_id}x", 2, 0, "stdout", 10))  # another job's
        assert not await watch.wait(NOT_WOKEN_S)
        notifier.notify(LogNotice(NOTICE_SEGMENT, job_id, 2, 0, "stdout", 10))
        assert await watch.wait(SUBSCRIBED_WITHIN_S)
        assert not watch.take_state_hint()
        notifier.notify(LogNotice(NOTICE_COMPLETE, job_id, 2, 1))  # another rank's end may end the attempt
        assert await watch.wait(SUBSCRIBED_WITHIN_S)
        assert watch.take_state_hint()
    assert hub.followed_jobs() == 0


def test_a_watch_is_woken_by_its_streams_notices_and_by_any_part_completing(redis_server: str) -> None:
    asyncio.run(_watch_sees_its_notices(redis_server))


def _start_redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(redis_server_args(port, data_dir, appendonly=False),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for_port(port)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


async def _across_a_restart(tmp_path: Path) -> None:
    port, job_id = free_port(), f"j{uuid.uuid4().hex[:12]}"
    redis_url = f"redis://127.0.0.1:{port}/0"
    servers = [_start_redis(tmp_path / "before", port)]
    try:
        hub = LogHub(redis_url)
        notifier = LogNotifier(redis.Redis.from_url(redis_url))
        async with hub.watch(job_id, 0, "stdout") as watch:
            assert await watch.wait(SUBSCRIBED_WITHIN_S)
            _stop(servers[0])
            servers.append(await asyncio.to_thread(_start_redis, tmp_path / "after", port))
            assert await watch.wait(SUBSCRIBED_WITHIN_S * 3), "woken once subscribed to the new Redis"
            notifier.notify(LogNotice(NOTICE_SEGMENT, job_id, 1, 0, "stdout", 1))
            assert await watch.wait(SUBSCRIBED_WITHIN_S), "notices flow again"
    finally:
        for server in servers:
            if server.poll() is None:
                _stop(server)


def test_the_hub_subscribes_again_after_redis_restarts(tmp_path: Path) -> None:
    asyncio.run(_across_a_restart(tmp_path))
