"""Fixtures of the volume tests: parts' launch contexts on a node directory, real moto and Azurite, real FUSE."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import unavailable
from tests.storage_adapters.conftest import (  # noqa: F401 (fixtures shared with the adapter tests)
    azure_container,
    azurite_blob_endpoint,
    moto_endpoint,
    s3_bucket,
)
from trainyard.workers import volumes
from trainyard.workers.launchers import LaunchContext

ROOT = Path(__file__).resolve().parents[3]


def require_fuse() -> None:
    """rclone and /dev/fuse (scripts/install-rclone.sh installs rclone and fuse3)."""
    if shutil.which("rclone") is None:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-rclone.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            unavailable(f"rclone could not be installed: {done.stderr[-1000:]}")
    if not os.path.exists("/dev/fuse"):
        unavailable("no /dev/fuse on this machine: FUSE mounts cannot be tested")


def make_context(
    node_dir: Path,
    volume_specs: list[dict[str, Any]],
    job_id: str = "job1",
    rank: int = 0,
    attempt: int = 1,
    **spec: Any,
) -> LaunchContext:
    workdir = node_dir / "work" / f"{job_id}-{attempt}-{rank}"
    workdir.mkdir(parents=True, exist_ok=True)
    return LaunchContext(
        job_id=job_id,
        name="vol",
        attempt=attempt,
        rank=rank,
        num_nodes=1,
        node_hosts=["127.0.0.2"],
        node_address="127.0.0.2",
        spec={"volumes": volume_specs, **spec},
        gpus=[],
        workdir=workdir,
        checkpoint_dir=node_dir / "checkpoint",
        master_port=29500,
    )


@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[Path]:
    """A node's directory; whatever a test left mounted under it is unmounted at the end."""
    path = tmp_path / "node"
    path.mkdir()
    yield path
    for node, key in list(volumes._ACTIVE):
        if node == str(path):
            volumes.release_part(path, key)
    volumes.clean_leftovers(path)


@pytest.fixture
def part(node_dir: Path) -> Callable[..., LaunchContext]:
    return lambda volume_specs, **kw: make_context(node_dir, volume_specs, **kw)
