"""GPU inventory: NVML when there is a driver, the operator's `--gpus N` when given."""

from __future__ import annotations

from trainyard.workers.gpus import discover, node_gpus


def test_declared_gpus_win_over_discovery() -> None:
    assert node_gpus(4) == [0, 1, 2, 3]
    assert node_gpus(0) == []


def test_discovery_lists_what_nvml_sees_and_nothing_without_a_driver() -> None:
    found = discover()
    assert [gpu.index for gpu in found] == list(range(len(found)))
    assert node_gpus(None) == [gpu.index for gpu in found]
    assert all(gpu.memory_bytes > 0 and gpu.name for gpu in found)
