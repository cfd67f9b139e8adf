"""Checkpoint saves while the job runs: periodic, whole, fenced by attempt, restorable."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trainyard.storage_adapters import open_storage
from trainyard.workers import checkpoint_sync, checkpoints
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.snapshots import TreeWatcher


def _ctx(tmp_path: Path, attempt: int = 1, interval_s: float = 1) -> LaunchContext:
    ckpt = tmp_path / f"attempt-{attempt}" / "checkpoint"
    ckpt.mkdir(parents=True)
    return LaunchContext(
        job_id="job1",
        name="c",
        attempt=attempt,
        rank=0,
        num_nodes=1,
        node_hosts=["127.0.0.2"],
        node_address="127.0.0.2",
        spec={"checkpoint_interval_s": interval_s},
        gpus=[],
        workdir=tmp_path / "work",
        checkpoint_dir=ckpt,
        master_port=29500,
    )


def test_the_syncer_saves_while_the_job_runs_and_the_next_attempt_restores_it(tmp_path: Path) -> None:
    store = open_storage(f"file://{tmp_path / 'store'}")
    ctx = _ctx(tmp_path)
    syncer = checkpoint_sync.start(store, ctx)
    try:
        (ctx.checkpoint_dir / "model.pt").write_bytes(b"weights-1")
        (ctx.checkpoint_dir / "step").write_text("1")
        deadline = time.monotonic() + 10
        while not syncer.saved_at and time.monotonic() < deadline:
            time.sleep(0.05)
        assert syncer.saved_at, "no save within 10 s at a 1 s interval"
    finally:
        syncer.stop()  # no end-of-part save: the node dies here
    restored = tmp_path / "restored"
    summary = checkpoints.restore(store, "job1", 0, restored, time.monotonic() + 10)
    assert summary is not None and summary["attempt"] == 1
    assert (restored / "model.pt").read_bytes() == b"weights-1" and (restored / "step").read_text() == "1"
    assert not (tmp_path / "attempt-1" / "checkpoint.snapshots").exists()


def test_a_pass_during_which_a_file_moved_saves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_storage(f"file://{tmp_path / 'store'}")
    ctx = _ctx(tmp_path)
    (ctx.checkpoint_dir / "a").write_text("1")
    (ctx.checkpoint_dir / "b").write_text("2")
    import trainyard.workers.snapshots as snapshots

    real = snapshots._copy_hashing

    def rewrite_a_during_b(source: Path, dest: Path) -> str:
        digest = real(source, dest)
        if source.name == "b":
            time.sleep(0.01)
            (ctx.checkpoint_dir / "a").write_text("3")
        return digest

    monkeypatch.setattr(snapshots, "_copy_hashing", rewrite_a_during_b)
    watcher = TreeWatcher(ctx.checkpoint_dir, tmp_path / "scratch")
    assert checkpoints.save_snapshot(store, "job1", 1, 0, watcher, time.monotonic() + 10) is None
    assert not list(store.list("checkpoints/"))
    monkeypatch.setattr(snapshots, "_copy_hashing", real)
    assert checkpoints.save_snapshot(store, "job1", 1, 0, watcher, time.monotonic() + 10) is not None


def test_an_older_attempts_syncer_never_rolls_back_a_newer_checkpoint(tmp_path: Path) -> None:
    store = open_storage(f"file://{tmp_path / 'store'}")
    newer = _ctx(tmp_path, attempt=3)
    (newer.checkpoint_dir / "step").write_text("30")
    assert (
        checkpoints.save_snapshot(
            store, "job1", 3, 0, TreeWatcher(newer.checkpoint_dir, tmp_path / "s3"), time.monotonic() + 10
        )
        is not None
    )
    zombie = _ctx(tmp_path, attempt=2)
    (zombie.checkpoint_dir / "step").write_text("20")
    with pytest.raises(checkpoints.Superseded):
        checkpoints.save_snapshot(
            store, "job1", 2, 0, TreeWatcher(zombie.checkpoint_dir, tmp_path / "s2"), time.monotonic() + 10
        )
    syncer = checkpoint_sync.CheckpointSyncer(store, zombie, interval_s=1)
    assert syncer.sync_once() and syncer._stop.is_set()  # the zombie's syncer stops for good
    restored = tmp_path / "restored"
    checkpoints.restore(store, "job1", 0, restored, time.monotonic() + 10)
    assert (restored / "step").read_text() == "30"
