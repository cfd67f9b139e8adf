"""The blob store stopped for 60 s while a job prints: afterwards the full output is there, byte-exact, in order.

Azurite keeps its blobs on disk (--location), so it is stopped and started again on the same
port. The job ends while the store is still down: its node reports the exit with
`logs_complete=false`, keeps shipping from its spool, and says `logs_done` once the store is back;
a follower started before the outage must get every byte and end only then.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.integration.store_clusters import store_cluster
from tests.services import BlobServer
from trainyard.client import Client

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0
JOB_S = 40.0
LINES = 2000
SCRIPT = f"""
import time
start = time.monotonic()
for i in range({LINES}):
    print(f"{{i:06d}} " + "abcdefghij" * 8)
    time.sleep(max(0.0, start + (i + 1) * {JOB_S / LINES} - time.monotonic()))
"""
EXPECTED = b"".join(f"{i:06d} ".encode() + b"abcdefghij" * 8 + b"\n" for i in range(LINES))


class Follower(threading.Thread):
    """`job logs --follow` in a thread: every byte it got, and when the follow ended."""

    def __init__(self, client: Client, job_id: str):
        super().__init__(daemon=True)
        self.client, self.job_id = client, job_id
        self.received = bytearray()
        self.ended_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for chunk in self.client.log_chunks(self.job_id, follow=True):
                self.received += chunk
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.ended_at = time.monotonic()


def _logs_complete(client: Client, job_id: str) -> bool:
    response = client._http.get(f"/v1/jobs/{job_id}/logs", params={"offset": len(EXPECTED)})
    return response.headers.get("X-Logs-Complete") == "true"


def test_a_minute_without_the_store_loses_no_byte(tmp_path: Path) -> None:
    server = BlobServer("azurite", tmp_path / "azurite")
    server.start()
    try:
        with store_cluster("az", tmp_path, server=server) as on_store:
            client = on_store.client
            job = client.submit({"name": "outage", "command": ["python3", "-u", "-c", SCRIPT]})
            follower = Follower(client, job.id)
            follower.start()
            deadline = time.monotonic() + 30
            while len(follower.received) < 10 * len(EXPECTED) // LINES and time.monotonic() < deadline:
                time.sleep(0.05)
            assert follower.received, "the follower saw the first lines before the outage"

            server.stop()
            stopped_at = time.monotonic()
            assert job.wait(timeout=JOB_S + 15) == "succeeded", "the job ends while the store is still down"
            spool = on_store.cluster.home / "nodes" / "node-1" / "spool" / f"{job.id}-1-0"
            assert spool.is_dir(), "the node keeps the unshipped tail in its spool"
            assert follower.ended_at is None, "the follow waits for the tail instead of ending with the job"
            time.sleep(max(0.0, stopped_at + OUTAGE_S - time.monotonic()))

            server.start()
            follower.join(timeout=60)
            assert follower.error is None, follower.error
            assert follower.ended_at is not None, "the follow ended once the tail was in"
            assert bytes(follower.received) == EXPECTED
            assert job.log_bytes() == EXPECTED
            assert _logs_complete(client, job.id), "the node's logs_done reached the scheduler"
            assert not spool.exists(), "the spool of a shipped part is deleted"
    finally:
        server.stop()
