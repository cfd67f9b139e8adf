"""The spec's `container:` settings on a real engine (Podman's Docker API): /dev/shm, ulimits, IPC, devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.workers.launchers import components
from tests.workers.launchers.gang import Captured
from trainyard.workers.launchers import LaunchContext
from trainyard.workers.launchers.container import ContainerRuntime, _present_devices, runtime_settings


def _context(tmp_path: Path, **spec: Any) -> LaunchContext:
    return LaunchContext(
        job_id="settings",
        name="settings",
        attempt=1,
        rank=0,
        num_nodes=1,
        node_hosts=["127.0.0.2"],
        node_address="127.0.0.2",
        spec={"image": components.TEST_IMAGE, **spec},
        gpus=[],
        workdir=tmp_path / "work",
        checkpoint_dir=tmp_path / "checkpoint",
        master_port=29500,
    )


def _run(ctx: LaunchContext, script: str) -> tuple[int, str, str]:
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    step = ContainerRuntime(components.TEST_IMAGE).run(ctx, ["/bin/sh", "-c", script], {}, step_name="main")
    output = Captured()
    pumps = [output.pump(step.stdout_fd, "stdout"), output.pump(step.stderr_fd, "stderr")]
    code = step.wait()
    for pump in pumps:
        pump.join(10)
    return code, output.text("stdout"), output.text("stderr")


@pytest.fixture(autouse=True)
def _engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_DOCKER_URL", components.docker_url())


def test_a_container_job_writes_1_gib_to_dev_shm_with_the_default_settings(tmp_path: Path) -> None:
    code, out, err = _run(
        _context(tmp_path),
        "dd if=/dev/zero of=/dev/shm/big bs=1048576 count=1024 2>&1 && ls -l /dev/shm/big && df -k /dev/shm | tail -1",
    )
    assert code == 0, out + err
    assert " 1073741824 " in out
    size_kib = int(out.strip().splitlines()[-1].split()[1])
    assert size_kib >= 1_900_000  # 2g, not the engines' 64 MiB


def test_a_small_shm_size_is_honoured(tmp_path: Path) -> None:
    code, out, _ = _run(
        _context(tmp_path, container={"shm_size": "64Mi"}), "dd if=/dev/zero of=/dev/shm/big bs=1048576 count=128 2>&1"
    )
    assert code != 0 and "No space left" in out


def test_ulimits_and_ipc_mode_reach_the_container(tmp_path: Path) -> None:
    # Podman drops its configured default ulimits when a container sets any: nproc is given too,
    # within this machine's hard limit.
    ctx = _context(tmp_path, container={"ulimits": {"nofile": "512:1024", "nproc": 1000}, "ipc": "shareable"})
    code, out, err = _run(ctx, "ulimit -n; ulimit -Hn; ulimit -u")
    assert code == 0, err
    assert out.split() == ["512", "1024", "1000"]
    assert runtime_settings(ctx)["ipc_mode"] == "shareable"


def test_devices_are_passed_only_when_the_node_has_them(tmp_path: Path) -> None:
    fabric = tmp_path / "infiniband"
    fabric.mkdir()
    os.mknod(fabric / "uverbs0", 0o600 | 0o020000, os.makedev(1, 3))  # a character device (as /dev/null)
    (fabric / "README").write_text("not a device")
    assert _present_devices(str(fabric)) == [f"{fabric}/uverbs0:{fabric}/uverbs0:rwm"]
    assert _present_devices("/dev/infiniband-not-here") == []
    ctx = _context(tmp_path, container={"devices": ["/dev/infiniband-not-here"]})
    code, _, err = _run(ctx, "true")  # asked for but absent: the job runs without it
    assert code == 0, err
    assert "devices" not in runtime_settings(ctx)


def test_container_is_never_privileged_whatever_the_settings(tmp_path: Path) -> None:
    ctx = _context(tmp_path, container={"ipc": "host", "ulimits": {"nofile": 1024, "nproc": 1024}})
    code, out, err = _run(ctx, "grep CapEff /proc/self/status; mount -t tmpfs none /mnt 2>&1 || echo refused")
    assert code == 0, err
    assert "refused" in out
    assert "000001ffffffffff" not in out and "0000003fffffffff" not in out
