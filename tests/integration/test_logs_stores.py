"""Live logs on every kind of store: a job's stdout is readable within 2 s while it runs (SPEC §2.8)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.store_clusters import STORES, StoreCluster, store_cluster

pytestmark = pytest.mark.integration

LIVE_LAG_LIMIT_S = 2.0


@pytest.fixture(scope="module", params=STORES)
def on_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreCluster]:
    with store_cluster(request.param, tmp_path_factory.mktemp(f"logs-{request.param}")) as started:
        yield started


def test_stdout_is_readable_within_two_seconds_while_the_job_runs(on_store: StoreCluster) -> None:
    # Each line carries the time it was printed; the follower notes when it arrived.
    script = "import time\nfor i in range(25):\n    print(f'{i} {time.time():.6f}')\n    time.sleep(0.2)\n"
    job = on_store.client.submit({"name": f"live-{on_store.store}", "command": ["python3", "-c", script]})
    lags, lines = [], []
    for line in job.logs(follow=True):
        arrived = time.time()
        number, printed = line.split()
        lines.append(int(number))
        lags.append(arrived - float(printed))
    assert lines == list(range(25))
    assert job.wait(timeout=60) == "succeeded"
    assert max(lags) < LIVE_LAG_LIMIT_S, f"{on_store.store}: lags {sorted(lags)[-3:]}"


def test_every_attempt_and_rank_keeps_its_own_streams(on_store: StoreCluster) -> None:
    job = on_store.client.submit({
        "name": f"attempts-{on_store.store}", "max_retries": 1,
        "command": 'echo "out $TRAINYARD_ATTEMPT"; echo "err $TRAINYARD_ATTEMPT" >&2; test "$TRAINYARD_ATTEMPT" = 2',
    })
    assert job.wait(timeout=90) == "succeeded"
    for attempt in (1, 2):
        assert job.log_bytes(attempt=attempt) == f"out {attempt}\n".encode()
        assert job.log_bytes(attempt=attempt, stream="stderr") == f"err {attempt}\n".encode()
    storage = on_store.storage()
    keys = [info.key for info in storage.list(f"logs/{job.id}/")]
    assert {key.rsplit("/", 1)[0] for key in keys} == {
        f"logs/{job.id}/{a}/0/{s}" for a in (1, 2) for s in ("stdout", "stderr")
    }


def test_a_large_output_is_read_back_byte_exact_from_any_offset(on_store: StoreCluster, tmp_path: Path) -> None:
    script = "import sys\nfor i in range(200000):\n    sys.stdout.write(f'{i:08d} ' + 'x' * 40 + '\\n')\n"
    job = on_store.client.submit({"name": f"bulk-{on_store.store}", "command": ["python3", "-c", script]})
    assert job.wait(timeout=120) == "succeeded"
    expected = b"".join(f"{i:08d} ".encode() + b"x" * 40 + b"\n" for i in range(200000))
    assert job.log_bytes() == expected
    middle = 5_000_001
    tail = b"".join(on_store.client.log_chunks(job.id, offset=middle))
    assert tail == expected[middle:]
