"""Live logs on each store: write→readable lag (p50/p99) and sustained log throughput vs. the raw adapter.

For each store (local directory, moto S3, Azurite) one run starts a private cluster of one node on
it and measures:
- log_lag_p50/p99_<store>: a job prints its clock every 100 ms; a follower reads the stream through
  the API (SDK, follow=True) and notes when each line arrives. Goal p99 ≤ 2 s (SPEC §2.8).
- log_throughput_<store>: a job writes N MB of 68-byte lines (`yes | head -c N`); rate = N / (time
  from the part's start until every byte is in the store). Baseline: the raw adapter in this
  process putting the same bytes as 4 MiB objects one after another (what the pump does), on the
  same server, in the same run.
JSON lines on stdout (harness.py); a table on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from harness import REPO_ROOT, emit, note, percentile
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(REPO_ROOT))  # the blob servers and store clusters of the test suite

from tests.integration.store_clusters import STORES, StoreCluster, store_cluster
from trainyard import logstore
from trainyard.workers.logpump import SEGMENT_MAX_BYTES

LINE = "step 000042 loss=0.123456 lr=0.001 grad_norm=1.2345 tokens/s=98765"  # 67 bytes + newline
LAG_SCRIPT = (
    "import time\nend = time.time() + {seconds}\n"
    "while time.time() < end:\n    print(f'{{time.time():.6f}}')\n    time.sleep(0.1)\n"
)
POLL_S = 0.02


@dataclass
class StoreResult:
    store: str
    lags_s: list[float] = field(default_factory=list)
    ours_mb_s: float = 0.0
    raw_mb_s: float = 0.0


def measure_lag(on_store: StoreCluster, seconds: float) -> list[float]:
    job = on_store.client.submit({"name": "lag", "command": ["python3", "-c", LAG_SCRIPT.format(seconds=seconds)]})
    lags = []
    for line in job.logs(follow=True):
        lags.append(time.time() - float(line))
    return lags


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _logs_complete(on_store: StoreCluster, job_id: str) -> bool:
    reply = on_store.client._http.get(f"/v1/jobs/{job_id}/logs", params={"offset": 1 << 40})
    return reply.headers.get("X-Logs-Complete") == "true"


def measure_throughput(on_store: StoreCluster, total_bytes: int) -> float:
    """MB/s from the part's start until every byte of its stdout is in the store.

    The node reports the part's exit once its last segment is stored (unless the store lags by
    more than the exit report's wait, then the logs-complete flag comes later): so the attempt's
    start and end times bracket the transfer, and nothing reads the store back meanwhile.
    """
    job = on_store.client.submit({"name": "throughput", "command": f"yes '{LINE}' | head -c {total_bytes}"})
    assert job.wait(timeout=3600) == "succeeded"
    attempt = job.data["attempts"][0]
    done_at = _timestamp(attempt["ended_at"])
    while not _logs_complete(on_store, job.id):
        time.sleep(POLL_S)
        done_at = time.time()
    stored = logstore.stream_end(on_store.storage(), logstore.stream_prefix(job.id, 1, 0, "stdout"))
    assert stored == total_bytes, f"{stored} of {total_bytes} bytes stored"
    return total_bytes / 1e6 / (done_at - _timestamp(attempt["started_at"]))


def measure_raw(on_store: StoreCluster, total_bytes: int) -> float:
    """MB/s of the bare adapter: the same bytes as 4 MiB PUTs in a row."""
    storage = on_store.storage()
    block = (LINE + "\n").encode() * (SEGMENT_MAX_BYTES // (len(LINE) + 1))
    started, sent, index = time.perf_counter(), 0, 0
    while sent < total_bytes:
        piece = block[: min(len(block), total_bytes - sent)]
        storage.put(f"bench/raw/{sent:016d}", piece)
        sent += len(piece)
        index += 1
    elapsed = time.perf_counter() - started
    for i in range(0, sent, len(block)):
        storage.delete(f"bench/raw/{i:016d}")
    return total_bytes / 1e6 / elapsed


def run_store(store: str, lag_seconds: float, total_bytes: int) -> StoreResult:
    result = StoreResult(store)
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-logs-{store}-") as tmp,
        store_cluster(store, Path(tmp), workers=1, slots=4) as on_store,
    ):
        note(f"{store}: lag ({lag_seconds:.0f} s of lines every 100 ms)")
        result.lags_s = measure_lag(on_store, lag_seconds)
        note(f"{store}: throughput ({total_bytes / 1e6:.0f} MB), then the raw adapter")
        result.ours_mb_s = measure_throughput(on_store, total_bytes)
        result.raw_mb_s = measure_raw(on_store, total_bytes)
        note(f"{store}: ours {result.ours_mb_s:.1f} MB/s, raw adapter {result.raw_mb_s:.1f} MB/s")
    return result


def report(results: list[StoreResult]) -> None:
    table = Table("store", "lag p50 ms", "lag p99 ms", "samples", "ours MB/s", "raw adapter MB/s", "ratio")
    for r in results:
        p50, p99 = percentile(r.lags_s, 50) * 1000, percentile(r.lags_s, 99) * 1000
        emit(f"log_lag_p50_{r.store}", p50, "ms", "<= 1000", samples=len(r.lags_s))
        emit(f"log_lag_p99_{r.store}", p99, "ms", "<= 2000", samples=len(r.lags_s))
        emit(f"log_throughput_{r.store}", r.ours_mb_s, "MB/s", "ratio >= 0.5", baseline=r.raw_mb_s)
        table.add_row(
            r.store,
            f"{p50:.0f}",
            f"{p99:.0f}",
            str(len(r.lags_s)),
            f"{r.ours_mb_s:.1f}",
            f"{r.raw_mb_s:.1f}",
            f"{r.ours_mb_s / r.raw_mb_s:.2f}",
        )
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default=",".join(STORES), help="comma list of file, s3, az")
    parser.add_argument("--lag-seconds", type=float, default=None, help="how long the lag job prints (30)")
    parser.add_argument("--megabytes", type=int, default=None, help="throughput job size (file 1000, s3/az 300)")
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("TRAINYARD_BENCH_QUICK") == "1"
    lag_seconds = args.lag_seconds or (5.0 if quick else 30.0)
    results = []
    for store in args.stores.split(","):
        default_mb = (100 if quick else 1000) if store == "file" else (30 if quick else 300)
        megabytes = args.megabytes or default_mb
        results.append(run_store(store, lag_seconds, megabytes * 1_000_000))
    report(results)


if __name__ == "__main__":
    main()
