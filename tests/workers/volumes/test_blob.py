"""Blob volumes: s3:// (moto) and az:// (Azurite) containers on real FUSE mounts through rclone."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workers.volumes.conftest import require_fuse
from trainyard.storage_adapters import Storage, open_storage
from trainyard.workers import volumes
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.volumes.base import mounted_under
from trainyard.workers.volumes.blob import BlobVolume

KEY = ("job1", 1, 0)


@pytest.fixture(params=["s3", "az"])
def blob_root(request: pytest.FixtureRequest) -> str:
    """A fresh bucket on moto or container on Azurite, with the node's credentials in the environment."""
    require_fuse()
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}"
    return f"az://{request.getfixturevalue('azure_container')}"


def _mounted(node_dir: Path) -> list[str]:
    return [str(point) for point, _ in mounted_under(node_dir)]


def test_blob_volume_reads_the_container_and_writes_reach_it_byte_exact(
    blob_root: str, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    store: Storage = open_storage(blob_root)
    dataset = os.urandom(5 * 2**20 + 17)
    store.put("datasets/train.bin", dataset)
    ctx = part(
        [
            {"name": "data", "kind": "blob", "uri": f"{blob_root}/datasets"},
            {"name": "out", "kind": "blob", "uri": f"{blob_root}/results/", "mount_path": "results"},
        ]
    )
    volumes.mount_part(node_dir, ctx)
    assert len(_mounted(node_dir)) == 2
    seen = Path(ctx.data_env["TRAINYARD_VOLUME_DATA"])
    assert hashlib.sha256((seen / "train.bin").read_bytes()).digest() == hashlib.sha256(dataset).digest()
    written = os.urandom(3 * 2**20 + 5)
    (Path(ctx.data_env["TRAINYARD_VOLUME_OUT"]) / "deep" / "dir").mkdir(parents=True)
    (Path(ctx.data_env["TRAINYARD_VOLUME_OUT"]) / "deep" / "dir" / "model.bin").write_bytes(written)
    assert volumes.finish_part(node_dir, KEY, 0, lambda _: None) == 0
    assert store.get("results/deep/dir/model.bin") == written  # uploaded before the part ends
    assert _mounted(node_dir) == [] and not (node_dir / "volumes" / "job1-1-0").exists()


def test_read_only_blob_volume_refuses_writes(
    blob_root: str, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    open_storage(blob_root).put("ref/a.txt", b"reference")
    ctx = part([{"name": "ref", "kind": "blob", "uri": f"{blob_root}/ref", "read_only": True}])
    volumes.mount_part(node_dir, ctx)
    seen = Path(ctx.data_env["TRAINYARD_VOLUME_REF"])
    assert (seen / "a.txt").read_bytes() == b"reference"
    with pytest.raises(OSError):
        (seen / "b.txt").write_bytes(b"nope")
    volumes.finish_part(node_dir, KEY, 0, lambda _: None)
    assert [info.key for info in open_storage(blob_root).list("ref/")] == ["ref/a.txt"]


def test_refused_credentials_fail_the_mount_with_rclones_message_and_leave_nothing_mounted(
    blob_root: str, node_dir: Path, part: Callable[..., LaunchContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    if blob_root.startswith("s3://"):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
        bad = f"{blob_root.replace('s3://', 's3://missing-')}/x"  # moto accepts any key: name no bucket
    else:
        conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
        key = conn.split("AccountKey=")[1].split(";")[0]
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn.replace(key, "d3Jvbmcta2V5"))
        bad = f"{blob_root}/x"
    ctx = part([{"name": "data", "kind": "blob", "uri": bad}])
    with pytest.raises(volumes.MountFailed) as failed:
        volumes.mount_part(node_dir, ctx)
    assert failed.value.reason == "mount_failed" and "volume data" in str(failed.value)
    assert "cannot be listed" in str(failed.value)
    assert _mounted(node_dir) == [] and not (node_dir / "volumes" / "job1-1-0").exists()


def test_mounts_a_crashed_worker_left_are_unmounted_when_the_node_starts_again(
    blob_root: str, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    ctx = part([{"name": "data", "kind": "blob", "uri": f"{blob_root}/d"}])
    volumes.mount_part(node_dir, ctx)
    assert len(_mounted(node_dir)) == 1
    crashed = [m for v in volumes._ACTIVE.values() for m in v.mounts if isinstance(m, BlobVolume)]
    volumes._ACTIVE.clear()  # the worker process that mounted it is gone: nothing remembers the part
    volumes._CLEANED.discard(str(node_dir))
    volumes.mount_part(node_dir, part([], job_id="next"))  # the first part of the new worker process
    assert _mounted(node_dir) == [] and not (node_dir / "volumes" / "job1-1-0").exists()
    for mount in crashed:  # a crashed worker's rclone is no child of the next one: this test reaps its own
        assert mount.process is not None
        mount.process.wait(timeout=30)


def test_blob_volume_is_seen_in_a_container_at_its_mount_path(
    blob_root: str, node_dir: Path, part: Callable[..., LaunchContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.workers.launchers import components
    from trainyard.workers.launchers.container import ContainerRuntime

    monkeypatch.setenv("TRAINYARD_DOCKER_URL", components.docker_url())
    store = open_storage(blob_root)
    store.put("in/x.txt", b"from the store")
    ctx = part(
        [
            {"name": "inp", "kind": "blob", "uri": f"{blob_root}/in", "read_only": True, "mount_path": "/mnt/inp"},
            {"name": "out", "kind": "blob", "uri": f"{blob_root}/out"},
        ],
        image=components.TEST_IMAGE,
    )
    volumes.mount_part(node_dir, ctx)
    assert ctx.data_env["TRAINYARD_VOLUME_INP"] == "/mnt/inp"
    step = ContainerRuntime(components.TEST_IMAGE).run(
        ctx,
        ["/bin/sh", "-c", 'cat /mnt/inp/x.txt > "$TRAINYARD_VOLUME_OUT/copy.txt"; touch /mnt/inp/no'],
        {**ctx.data_env},
        step_name="main",
    )
    os.close(step.stdout_fd)
    os.close(step.stderr_fd)
    assert step.wait() != 0  # the read-only volume refused the touch
    assert volumes.finish_part(node_dir, KEY, 0, lambda _: None) == 0
    assert store.get("out/copy.txt") == b"from the store"
    assert [info.key for info in store.list("in/")] == ["in/x.txt"]


def test_the_jobs_secrets_override_the_nodes_credentials_and_stay_off_the_command_line(
    azure_container: str, node_dir: Path, part: Callable[..., LaunchContext]
) -> None:
    require_fuse()
    good = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    key = good.split("AccountKey=")[1].split(";")[0]
    ctx = part([{"name": "data", "kind": "blob", "uri": f"az://{azure_container}/x"}])
    ctx.secrets = {"AZURE_STORAGE_CONNECTION_STRING": good.replace(key, "d3Jvbmcta2V5")}
    with pytest.raises(volumes.MountFailed, match="cannot be listed"):
        volumes.mount_part(node_dir, ctx)  # the node's own credentials would have worked
    ctx = part([{"name": "data", "kind": "blob", "uri": f"az://{azure_container}/x"}], job_id="job2")
    volumes.mount_part(node_dir, ctx)
    mount = volumes._ACTIVE[(str(node_dir), ("job2", 1, 0))].mounts[0]
    assert isinstance(mount, BlobVolume) and mount.process is not None
    assert key not in " ".join(mount.argv()) and "sig=" not in " ".join(mount.argv())
    volumes.finish_part(node_dir, ("job2", 1, 0), 0, lambda _: None)
