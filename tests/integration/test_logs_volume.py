"""A job that writes 2 GB of output in small lines does not exhaust its node's memory (bounded buffers).

The worker process (Celery worker + node agent + log pump) is watched with psutil while 2 GB
pass through its pipes, spool and uploads; every byte must be in the store, in order. Through the
local file store this takes about 10 s here (bench/logs.py measures the rate on each store).
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.store_clusters import store_cluster
from trainyard import logstore
from trainyard.workers.logpump import SEGMENT_MAX_BYTES

pytestmark = pytest.mark.integration

TOTAL_BYTES = 2_000_000_000
LINE = b"step 000042 loss=0.123456 lr=0.001 grad_norm=1.2345 tokens/s=98765\n"  # 68 bytes
RSS_GROWTH_LIMIT_BYTES = 100 * 1024 * 1024


def _expected_sha256() -> str:
    digest = hashlib.sha256()
    block = LINE * (1024 * 1024 // len(LINE) + 1)
    block = block[: len(LINE) * (len(block) // len(LINE))]
    left = TOTAL_BYTES
    while left:
        piece = block[: min(left, len(block))]
        digest.update(piece)
        left -= len(piece)
    return digest.hexdigest()


class RssWatch(threading.Thread):
    """Peak resident memory of one process, sampled every 50 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.start_rss = self.peak_rss = self.process.memory_info().rss
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)


def test_two_gigabytes_of_small_lines_pass_with_flat_memory(tmp_path: Path) -> None:
    with store_cluster("file", tmp_path) as on_store:
        worker = next(process for name, process in on_store.cluster.processes if name == "node-1")
        watch = RssWatch(worker.pid)
        watch.start()
        line = LINE.decode().rstrip("\n")
        job = on_store.client.submit({"name": "two-gb", "command": f"yes '{line}' | head -c {TOTAL_BYTES}"})
        assert job.wait(timeout=240) == "succeeded"
        # The part exits after draining its pump for at most a few seconds: on a loaded machine the
        # last segments follow it, and the attempt says `logs_complete` once every byte is stored.
        deadline = time.monotonic() + 180
        while not job.refresh().data["attempts"][0]["logs_complete"]:
            assert time.monotonic() < deadline, "the attempt's logs never completed"
            time.sleep(0.5)
        watch.stop_event.set()
        watch.join()
        growth = watch.peak_rss - watch.start_rss
        assert growth < RSS_GROWTH_LIMIT_BYTES, f"worker RSS grew by {growth / 2**20:.0f} MiB"

        storage = on_store.storage()
        prefix = logstore.stream_prefix(job.id, 1, 0, "stdout")
        segments = logstore.list_segments(storage, prefix)
        assert sum(s.size for s in segments) == TOTAL_BYTES
        assert all(a.end == b.offset for a, b in itertools.pairwise(segments)), "contiguous"
        assert max(s.size for s in segments) <= SEGMENT_MAX_BYTES
        digest = hashlib.sha256()
        for segment in segments:
            digest.update(storage.get(segment.key))
        assert digest.hexdigest() == _expected_sha256()
        middle = TOTAL_BYTES // 2 // len(LINE) * len(LINE) + 5
        chunk = next(on_store.client.log_chunks(job.id, offset=middle))
        assert chunk[: len(LINE)] == LINE[5:] + LINE[:5]
        assert not (on_store.cluster.home / "nodes" / "node-1" / "spool" / f"{job.id}-1-0").exists()
        shutil.rmtree(on_store.storage_url.removeprefix("file://"), ignore_errors=True)  # 2 GB of /tmp back
        print(
            f"\nworker RSS {watch.start_rss / 2**20:.0f} MiB → peak {watch.peak_rss / 2**20:.0f} MiB; "
            f"job {job.data['attempts'][0]['started_at']} → {job.data['attempts'][0]['ended_at']}"
        )
