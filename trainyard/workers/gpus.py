"""GPU inventory of a node: NVML when the driver is there, else what the operator declared (`--gpus N`)."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int
    uuid: str


def discover(nvml: Any = None) -> list[Gpu]:
    """The node's GPUs as NVML sees them (nvidia-ml-py); [] without a driver or without the library.

    `nvml` is the pynvml module (imported here when not given; tests pass a stand-in).
    """
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return []
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded: a node without GPUs
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        return [_describe(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    finally:
        nvml.nvmlShutdown()


def _describe(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    uuid = nvml.nvmlDeviceGetUUID(handle)
    return Gpu(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
    )


def node_gpus(declared: int | None) -> list[int]:
    """GPU indices a worker offers: `declared` when the operator gave `--gpus N`, else those NVML finds."""
    if declared is not None:
        return list(range(declared))
    return [gpu.index for gpu in discover()]
