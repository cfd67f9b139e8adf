"""The log pump and the log store on the memory adapter: order, time bounds, outages, a full spool."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.logs_helpers import SwitchableStorage
from trainyard import logstore
from trainyard.storage_adapters import open_storage
from trainyard.workers.logpump import SEGMENT_MAX_BYTES, PartLogs, SpoolBudget

PREFIX = logstore.stream_prefix("job1", 1, 0, "stdout")


def _wait_for(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _stream(storage: SwitchableStorage) -> bytes:
    return logstore.read_from(storage.inner, PREFIX, 0, max_bytes=1 << 40)


def test_spooled_bytes_reach_the_store_in_order_and_read_back_byte_exact(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0)
    sent = b"".join(os.urandom(997) + b"\n" for _ in range(300))
    for i in range(0, len(sent), 4096):
        logs.streams["stdout"].append(sent[i : i + 4096])
    logs.streams["stderr"].append(b"err\n")
    assert logs.finish(wait_s=10)
    assert _stream(storage) == sent
    assert logstore.read_from(storage, logstore.stream_prefix("job1", 1, 0, "stderr"), 0) == b"err\n"
    assert not (tmp_path / "spool").exists(), "the spool of a shipped part is deleted"


def test_output_is_readable_within_a_second_while_the_part_runs(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0)
    reader = logstore.LogReader(storage)
    lags = []
    offset = 0
    for i in range(8):
        line = f"tick {i}\n".encode()
        logs.streams["stdout"].append(line)
        written_at = time.monotonic()
        _wait_for(lambda: len(reader.read(PREFIX, offset)) == len(line), timeout_s=5)  # noqa: B023
        lags.append(time.monotonic() - written_at)
        offset += len(line)
        time.sleep(0.1)
    logs.finish()
    assert max(lags) < 1.0, lags


def test_a_segment_is_never_larger_than_the_limit(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    storage.down.set()  # let 10 MiB pile up so that the shipper sees it all at once
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0)
    chunk = os.urandom(64 * 1024)
    for _ in range(160):
        logs.streams["stdout"].append(chunk)
    storage.down.clear()
    assert logs.finish(wait_s=20)
    sizes = [size for key, size in storage.puts if key.startswith(PREFIX)]
    assert max(sizes) <= SEGMENT_MAX_BYTES
    assert sum(sizes) == 160 * len(chunk)
    assert _stream(storage) == chunk * 160


def test_a_store_outage_loses_nothing_and_logs_done_comes_after_it_returns(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0)
    logs.streams["stdout"].append(b"before\n")
    _wait_for(lambda: _stream(storage) == b"before\n")
    storage.down.set()
    for i in range(200):
        logs.streams["stdout"].append(f"during outage {i}\n".encode())
    assert not logs.finish(wait_s=0.5), "the part ends while the store is still down"
    done = threading.Event()
    logs.notify_when_shipped(done.set)
    time.sleep(1.0)
    assert not done.is_set()
    storage.down.clear()
    assert done.wait(20), "the shipper caught up once the store came back"
    expected = b"before\n" + b"".join(f"during outage {i}\n".encode() for i in range(200))
    assert _stream(storage) == expected
    assert not (tmp_path / "spool").exists()


def test_a_retried_segment_names_exactly_the_same_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A real local store that really fails: the directory its segments go to is taken by a plain
    # file, so the filesystem refuses every put (root or not) until the file is removed.
    storage = open_storage(f"file://{tmp_path / 'blobs'}")
    blocker = tmp_path / "blobs" / "logs"
    blocker.write_bytes(b"")
    caplog.set_level(logging.WARNING, logger="trainyard.workers.logpump")
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0)
    logs.streams["stdout"].append(b"first\n")
    _wait_for(lambda: any("log upload failed" in r.getMessage() for r in caplog.records))
    logs.streams["stdout"].append(b"second\n")  # arrives after the failed put, before its retry
    blocker.unlink()
    assert logs.finish(wait_s=20)
    segments = {info.key: storage.get(info.key) for info in storage.list(PREFIX)}
    # The retry re-sent the range it had tried, under the same key; the new bytes got a segment of their own.
    assert segments == {logstore.key_at(PREFIX, 0): b"first\n", logstore.key_at(PREFIX, 6): b"second\n"}
    assert logstore.read_from(storage, PREFIX, 0) == b"first\nsecond\n"


def test_a_full_spool_drops_output_says_so_and_recovers_when_space_frees(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    budget = SpoolBudget(max_bytes=4000)
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0, budget=budget)
    stdout = logs.streams["stdout"]
    storage.down.set()
    lines = [f"line {i:04d}\n".encode() for i in range(700)]  # 10 bytes each
    for line in lines[:600]:
        stdout.append(line)
    assert budget.used <= 4000
    kept = stdout.written
    assert kept == 4000
    storage.down.clear()
    _wait_for(lambda: budget.used == 0)
    for line in lines[600:700]:  # well inside the budget again
        stdout.append(line)
    assert logs.finish(wait_s=10)
    text = _stream(storage).decode()
    marker = re.search(r"\[trainyard: (\d+) bytes dropped: spool full\]\n", text)
    assert marker is not None
    assert int(marker.group(1)) == 600 * 10 - 4000
    assert text[: marker.start()] == b"".join(lines[:400]).decode()
    assert text[marker.end() :] == b"".join(lines[600:700]).decode()
    assert budget.used == 0


def test_a_loss_at_the_very_end_still_gets_its_marker(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0, budget=SpoolBudget(max_bytes=5))
    logs.streams["stdout"].append(b"abc")
    logs.streams["stdout"].append(b"defgh")
    assert logs.finish(wait_s=10)
    assert _stream(storage) == b"abc\n[trainyard: 5 bytes dropped: spool full]\n"


def test_following_a_stream_does_not_list_it_on_every_poll(tmp_path: Path) -> None:
    storage = SwitchableStorage()
    logs = PartLogs(storage, tmp_path / "spool", "job1", 1, 0)
    reader = logstore.LogReader(storage)
    offset, got = 0, b""
    for i in range(8):
        logs.streams["stdout"].append(f"{i}\n".encode())
        _wait_for(lambda: storage.calls["put"] > i)  # noqa: B023
        for _ in range(3):
            data = reader.read(PREFIX, offset)
            offset += len(data)
            got += data
    logs.finish()
    assert got == b"".join(f"{i}\n".encode() for i in range(8))
    assert storage.calls["list"] == 0
    # A fresh reader jumping into the middle of the stream lists once, then reads ranges.
    jumper = logstore.LogReader(storage)
    assert jumper.read(PREFIX, 9) == got[9:]
    assert storage.calls["list"] == 1
    assert jumper.read(PREFIX, 3, max_bytes=4) == got[3:7]
    assert storage.calls["list"] == 1


def test_list_after_skips_what_the_caller_knows(tmp_path: Path) -> None:
    for storage in (open_storage(f"file://{tmp_path / 'blobs'}"), open_storage("memory://list-after")):
        for name in ("a/1", "a/2", "a/3", "b/1"):
            storage.put(name, b"x")
        assert [i.key for i in storage.list_after("a/", "a/1")] == ["a/2", "a/3"]
        assert [i.key for i in storage.list_after("a/", None)] == ["a/1", "a/2", "a/3"]


@pytest.mark.parametrize("at_line_start", [True, False])
def test_the_drop_marker_starts_on_a_line_of_its_own(at_line_start: bool) -> None:
    from trainyard.workers.logpump import drop_marker

    marker = drop_marker(12, at_line_start)
    assert marker.endswith(b"[trainyard: 12 bytes dropped: spool full]\n")
    assert marker.startswith(b"\n") != at_line_start


def test_a_spool_left_by_a_dead_worker_is_shipped_by_the_next_one(tmp_path: Path) -> None:
    inner = open_storage("memory://recovery")
    old_store, new_store = SwitchableStorage(inner), SwitchableStorage(inner)
    spool = tmp_path / "spool" / "job1-1-0"
    logs = PartLogs(old_store, spool, "job1", 1, 0)
    logs.streams["stdout"].append(b"shipped before the crash\n")
    _wait_for(lambda: logstore.stream_end(inner, PREFIX) == 25)
    old_store.down.set()  # from here on the old process ships nothing: then it "dies"
    tail = b"".join(f"spooled only {i}\n".encode() for i in range(5000))
    logs.streams["stdout"].append(tail)
    logs.streams["stderr"].append(b"an error line\n")
    budget = SpoolBudget(max_bytes=1 << 30)
    recovered = PartLogs.recover(new_store, spool, budget)
    assert recovered is not None
    done = threading.Event()
    recovered.notify_when_shipped(done.set)
    assert done.wait(10)
    assert logstore.read_from(inner, PREFIX, 0, max_bytes=1 << 30) == b"shipped before the crash\n" + tail
    assert logstore.read_from(inner, logstore.stream_prefix("job1", 1, 0, "stderr"), 0) == b"an error line\n"
    assert not spool.exists() and budget.used == 0
    assert PartLogs.recover(new_store, tmp_path / "not-a-spool", budget) is None


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that really fills up (ENOSPC). Needs mount rights (root); skipped without."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)  # lazy: even with files left open


def test_a_full_disk_drops_output_says_so_and_recovers(tiny_disk: Path) -> None:
    storage = SwitchableStorage()
    logs = PartLogs(storage, tiny_disk / "spool", "job1", 1, 0, budget=SpoolBudget(max_bytes=1 << 30))
    stdout = logs.streams["stdout"]
    storage.down.set()
    lines = [f"line {i:06d} {'x' * 51}\n".encode() for i in range(8000)]  # 64 bytes each, 512 KB in all
    for line in lines[:6000]:  # twice what the disk holds: append never raises, whatever the disk says
        stdout.append(line)
    assert 0 < stdout.written < 6000 * 64 and stdout.written + stdout.dropped_total == 6000 * 64
    storage.down.clear()
    # Shipped spool files go (an empty one may stay open for the next write): the disk has room again.
    _wait_for(lambda: sum(f.stat().st_size for f in (tiny_disk / "spool").glob("stdout.*.spool")) == 0)
    for line in lines[6000:]:
        stdout.append(line)
    assert logs.finish(wait_s=10)
    text = _stream(storage).decode()
    marker = re.search(r"\[trainyard: (\d+) bytes dropped: spool full\]\n", text)
    assert marker is not None
    kept = text[: marker.start()]
    assert kept == b"".join(lines[: len(kept) // 64]).decode(), "whole lines kept, in order, up to the loss"
    assert len(kept) + int(marker.group(1)) == 6000 * 64
    assert text[marker.end() :] == b"".join(lines[6000:]).decode()
