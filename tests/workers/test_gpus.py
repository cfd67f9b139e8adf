"""GPU inventory: NVML when there is a driver, the operator's `--gpus N` when given."""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace
from typing import Any

import pytest

from trainyard.workers.gpus import Gpu, discover, node_gpus


def _nvidia_smi_gpus() -> list[Gpu]:
    """The GPUs as the driver's own tool lists them; skips the test where there is no GPU."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU here: nvidia-smi is not installed")
    query = "--query-gpu=index,name,memory.total,uuid"
    listed = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60, check=False
    )
    if listed.returncode != 0 or not listed.stdout.strip():
        pytest.skip(f"no GPU here: nvidia-smi says {(listed.stderr or listed.stdout).strip()!r}")
    gpus = []
    for line in listed.stdout.strip().splitlines():
        index, name, memory_mib, uuid = (field.strip() for field in line.split(","))
        gpus.append(Gpu(index=int(index), name=name, memory_bytes=int(memory_mib) * 1024 * 1024, uuid=uuid))
    return gpus


def test_declared_gpus_win_over_discovery() -> None:
    assert node_gpus(4) == [0, 1, 2, 3]
    assert node_gpus(0) == []


def test_discovery_finds_the_gpus_the_driver_lists() -> None:
    expected = _nvidia_smi_gpus()
    found = discover()
    assert [(g.index, g.name, g.uuid) for g in found] == [(g.index, g.name, g.uuid) for g in expected]
    # nvidia-smi rounds the memory to MiB.
    assert all(abs(f.memory_bytes - e.memory_bytes) < 1024 * 1024 for f, e in zip(found, expected, strict=True))
    assert node_gpus(None) == [g.index for g in expected]


class _StubNvml:
    """Stands in for pynvml in the unit tests below: the calls `discover` makes, answering as the
    library does (names and UUIDs as bytes in older releases, str in newer ones)."""

    def __init__(self, devices: list[tuple[Any, int, Any]], init_error: Exception | None = None):
        self.devices, self.init_error = devices, init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.devices[handle][1], free=0, used=0)

    def nvmlDeviceGetUUID(self, handle: int) -> Any:
        return self.devices[handle][2]


def test_nvml_answers_become_gpus_in_index_order_and_nvml_is_shut_down() -> None:
    stub = _StubNvml(
        [(b"NVIDIA H100 80GB HBM3", 85_520_809_984, b"GPU-1111"), ("NVIDIA A100-SXM4-40GB", 42_949_672_960, "GPU-2222")]
    )
    assert discover(stub) == [
        Gpu(0, "NVIDIA H100 80GB HBM3", 85_520_809_984, "GPU-1111"),
        Gpu(1, "NVIDIA A100-SXM4-40GB", 42_949_672_960, "GPU-2222"),
    ]
    assert stub.shutdowns == 1


def test_a_node_whose_nvml_cannot_start_has_no_gpus() -> None:
    stub = _StubNvml([(b"unused", 1, b"unused")], init_error=RuntimeError("NVML Shared Library Not Found"))
    assert discover(stub) == []
    assert stub.shutdowns == 0
