"""Host and sync volumes on a node: where the job sees them, what reaches the store, what is left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainyard.storage_adapters import open_storage
from trainyard.workers import volumes
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.snapshots import TreeWatcher
from trainyard.workers.volumes.base import mounted_under

KEY = ("job1", 1, 0)


def _said() -> tuple[list[bytes], Callable[[bytes], None]]:
    lines: list[bytes] = []
    return lines, lines.append


def test_host_volume_is_the_node_directory_itself_at_the_mount_path(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    shared = tmp_path / "nfs"
    shared.mkdir()
    (shared / "train.csv").write_text("a,b\n")
    ctx = part([{"name": "data", "kind": "host", "path": str(shared), "mount_path": "datasets/main"}])
    volumes.mount_part(node_dir, ctx)
    seen = Path(ctx.data_env["TRAINYARD_VOLUME_DATA"])
    assert seen == ctx.workdir / "datasets" / "main"
    assert (seen / "train.csv").read_text() == "a,b\n"
    (seen / "written.txt").write_text("zero copy")
    assert (shared / "written.txt").read_text() == "zero copy"
    assert volumes.finish_part(node_dir, KEY, 0, _said()[1]) == 0
    assert not seen.exists() and (shared / "written.txt").exists()  # the link goes, the data stays


@pytest.mark.skipif(os.geteuid() != 0, reason="read-only bind mounts need root")
def test_read_only_host_volume_refuses_writes_and_is_unmounted_at_the_end(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    shared = tmp_path / "nfs"
    shared.mkdir()
    ctx = part([{"name": "ref", "kind": "host", "path": str(shared), "read_only": True}])
    volumes.mount_part(node_dir, ctx)
    with pytest.raises(OSError, match="Read-only"):
        (Path(ctx.data_env["TRAINYARD_VOLUME_REF"]) / "x").write_text("no")
    assert ctx.volume_binds and all(b["mode"] == "ro" for b in ctx.volume_binds.values())
    volumes.finish_part(node_dir, KEY, 0, _said()[1])
    assert mounted_under(node_dir) == []
    assert not (node_dir / "volumes" / "job1-1-0").exists()


def test_missing_host_path_fails_with_mount_failed_naming_the_volume(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    ctx = part(
        [
            {"name": "ok", "kind": "host", "path": str(tmp_path)},
            {"name": "lustre", "kind": "host", "path": "/no/such/dir"},
        ]
    )
    with pytest.raises(volumes.MountFailed) as failed:
        volumes.mount_part(node_dir, ctx)
    assert failed.value.reason == "mount_failed"
    assert "volume lustre" in str(failed.value) and "/no/such/dir" in str(failed.value)
    assert not (ctx.workdir / "ok").exists()  # what was mounted before the failure is released
    assert not (node_dir / "volumes" / "job1-1-0").exists()


def test_absolute_mount_path_on_the_host_is_a_link_removed_at_the_end(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    shared = tmp_path / "disk"
    shared.mkdir()
    mount_path = tmp_path / "mnt" / "scratch"
    ctx = part([{"name": "scratch", "kind": "host", "path": str(shared), "mount_path": str(mount_path)}])
    volumes.mount_part(node_dir, ctx)
    assert ctx.data_env["TRAINYARD_VOLUME_SCRATCH"] == str(mount_path)
    assert mount_path.resolve() == shared.resolve()
    volumes.finish_part(node_dir, KEY, 0, _said()[1])
    assert not mount_path.exists() and not mount_path.is_symlink()


def test_mount_path_taken_by_the_jobs_code_fails_the_mount(
    node_dir: Path, part: Callable[..., LaunchContext], tmp_path: Path
) -> None:
    ctx = part([{"name": "data", "kind": "host", "path": str(tmp_path)}])
    (ctx.workdir / "data").write_text("from the code archive")
    with pytest.raises(volumes.MountFailed, match="already exists in the job's working directory"):
        volumes.mount_part(node_dir, ctx)


def test_unresolved_registered_volume_fails_the_mount(node_dir: Path, part: Callable[..., LaunchContext]) -> None:
    with pytest.raises(volumes.MountFailed, match="unknown volume"):
        volumes.mount_part(node_dir, part([{"name": "data", "volume": "imagenet"}]))


def _sync_store(tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "store"
    (root / "vol").mkdir(parents=True)
    (root / "vol" / "old.txt").write_text("old")
    (root / "vol" / "sub").mkdir()
    (root / "vol" / "sub" / "gone.txt").write_text("to delete")
    return f"file://{root}/vol", root / "vol"


def test_sync_volume_downloads_at_start_and_uploads_changes_periodically_and_at_the_end(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    uri, remote = _sync_store(tmp_path)
    ctx = part([{"name": "work", "kind": "sync", "uri": uri, "sync_interval_s": 1}])
    volumes.mount_part(node_dir, ctx)
    local = Path(ctx.data_env["TRAINYARD_VOLUME_WORK"])
    assert (local / "old.txt").read_text() == "old" and (local / "sub" / "gone.txt").exists()
    payload = os.urandom(3 * 2**20)
    (local / "model.bin").write_bytes(payload)
    (local / "sub" / "gone.txt").unlink()
    deadline = time.monotonic() + 10
    while not (remote / "model.bin").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (remote / "model.bin").read_bytes() == payload  # while the job still runs
    (local / "last.txt").write_text("written at the very end")
    assert volumes.finish_part(node_dir, KEY, 0, _said()[1]) == 0
    assert (remote / "last.txt").read_text() == "written at the very end"
    assert not (remote / "sub" / "gone.txt").exists()
    assert not [p for p in remote.rglob("*") if p.name.startswith(".")]  # no temporary objects left


def test_read_only_sync_volume_is_never_uploaded(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    uri, remote = _sync_store(tmp_path)
    ctx = part([{"name": "ref", "kind": "sync", "uri": uri, "read_only": True}])
    volumes.mount_part(node_dir, ctx)
    (Path(ctx.data_env["TRAINYARD_VOLUME_REF"]) / "new.txt").write_text("stays local")
    volumes.finish_part(node_dir, KEY, 0, _said()[1])
    assert sorted(p.name for p in remote.iterdir()) == ["old.txt", "sub"]


def test_sync_volume_on_s3(s3_bucket: str, node_dir: Path, part: Callable[..., LaunchContext]) -> None:
    store = open_storage(f"s3://{s3_bucket}")
    store.put("ds/in.txt", b"input")
    ctx = part([{"name": "ds", "kind": "sync", "uri": f"s3://{s3_bucket}/ds/"}])
    volumes.mount_part(node_dir, ctx)
    local = Path(ctx.data_env["TRAINYARD_VOLUME_DS"])
    assert (local / "in.txt").read_bytes() == b"input"
    (local / "out" / "r.bin").parent.mkdir()
    (local / "out" / "r.bin").write_bytes(b"\x00\x01" * 1000)
    assert volumes.finish_part(node_dir, KEY, 0, _said()[1]) == 0
    assert store.get("ds/out/r.bin") == b"\x00\x01" * 1000


def test_sync_upload_failure_at_the_end_fails_a_successful_part(
    tmp_path: Path, node_dir: Path, part: Callable[..., LaunchContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainyard.workers.volumes.sync as sync

    monkeypatch.setattr(sync, "FINAL_UPLOAD_DEADLINE_S", 1.0)  # the store stays refusing: give up soon
    uri, remote = _sync_store(tmp_path)
    ctx = part([{"name": "work", "kind": "sync", "uri": uri}])
    volumes.mount_part(node_dir, ctx)
    (Path(ctx.data_env["TRAINYARD_VOLUME_WORK"]) / "new.txt").write_text("x")
    (remote / "new.txt").mkdir()  # the store cannot take the object (root ignores file modes)
    said, say = _said()
    assert volumes.finish_part(node_dir, KEY, 0, say) == 1
    assert b"volume work: upload of new.txt" in b"".join(said)


def test_a_file_written_during_the_scan_is_taken_at_a_later_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a").write_bytes(b"1" * 1000)
    (root / "b").write_bytes(b"2" * 1000)
    import trainyard.workers.snapshots as snapshots

    real_copy = snapshots._copy_hashing

    def copy_then_touch_a(source: Path, dest: Path) -> str:
        digest = real_copy(source, dest)
        if source.name == "b":  # the job rewrites a while b is being copied
            time.sleep(0.01)
            (root / "a").write_bytes(b"3" * 1000)
        return digest

    monkeypatch.setattr(snapshots, "_copy_hashing", copy_then_touch_a)
    scan = TreeWatcher(root, tmp_path / "scratch").scan()
    assert scan.busy == ["a"] and list(scan.copies) == ["b"]
    scan.discard()
