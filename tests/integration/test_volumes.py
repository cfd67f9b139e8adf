"""Volumes on a real cluster: a 2-node gang on blob volumes (moto, real FUSE), and a mount that fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.conftest import started_chaos_cluster
from tests.storage_adapters.conftest import fresh_s3_bucket, moto_endpoint  # noqa: F401 (the fixture)
from tests.workers.volumes.conftest import require_fuse
from trainyard.storage_adapters import open_storage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bucket_then_cluster(
    moto_endpoint: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The bucket first: its AWS_* variables are in the environment the cluster's workers inherit.

    One bucket and one cluster for the module: each test submits jobs of its own names and reads
    only what its own jobs wrote.
    """
    require_fuse()
    root = tmp_path_factory.mktemp("volumes")
    with (
        pytest.MonkeyPatch.context() as patch,
        fresh_s3_bucket(moto_endpoint, patch, root) as bucket,
        started_chaos_cluster(root) as cluster,
    ):
        yield bucket, cluster


def test_a_two_node_gang_reads_a_blob_volume_and_both_ranks_write_into_another(
    bucket_then_cluster: tuple[str, dict[str, Any]],
) -> None:
    bucket, cluster = bucket_then_cluster
    store = open_storage(f"s3://{bucket}")
    dataset = os.urandom(2 * 2**20 + 3)
    store.put("datasets/shard.bin", dataset)
    job = cluster["client"].submit(
        {
            "name": "gang-volumes",
            "nodes": 2,
            "max_retries": 0,
            "volumes": [
                {"name": "data", "kind": "blob", "uri": f"s3://{bucket}/datasets", "read_only": True},
                {"name": "out", "kind": "blob", "uri": f"s3://{bucket}/results", "mount_path": "results"},
            ],
            "command": 'cp "$TRAINYARD_VOLUME_DATA/shard.bin" "results/copy-$TRAINYARD_NODE_RANK.bin" && '
            'echo "rank $TRAINYARD_NODE_RANK" > "$TRAINYARD_VOLUME_OUT/rank-$TRAINYARD_NODE_RANK.txt"',
        }
    )
    assert job.wait(timeout=120) == "succeeded", job.log_bytes(stream="stderr")
    assert len(job.data["attempts"][0]["nodes"]) == 2
    for rank in (0, 1):
        assert store.get(f"results/copy-{rank}.bin") == dataset
        assert store.get(f"results/rank-{rank}.txt") == f"rank {rank}\n".encode()


def _submit_bad_mount(cluster: dict[str, Any], bucket: str) -> Any:
    job = cluster["client"].submit(
        {
            "name": "bad-mount",
            "max_retries": 0,
            "command": "echo never",
            "volumes": [{"name": "data", "kind": "blob", "uri": f"s3://no-such-{bucket}/x"}],
        }
    )
    assert job.wait(timeout=60) == "failed"
    return job


def test_a_volume_that_cannot_be_mounted_fails_the_job_before_it_runs_with_the_tools_message(
    bucket_then_cluster: tuple[str, dict[str, Any]],
) -> None:
    bucket, cluster = bucket_then_cluster
    job = _submit_bad_mount(cluster, bucket)
    stderr = job.log_bytes(stream="stderr").decode()
    assert "volume data" in stderr and "cannot be listed" in stderr and "directory not found" in stderr
    assert b"never" not in job.log_bytes()


def test_the_attempt_of_a_failed_mount_ends_with_reason_mount_failed(
    bucket_then_cluster: tuple[str, dict[str, Any]],
) -> None:
    bucket, cluster = bucket_then_cluster
    job = _submit_bad_mount(cluster, bucket)
    assert job.data["attempts"][0]["reason"] == "mount_failed"
