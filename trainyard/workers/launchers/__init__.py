"""Launchers: how a job part's processes start on a node (one module per launcher), on the host or in a container."""

from __future__ import annotations

from trainyard.workers.launchers.base import LaunchContext, Launcher, PrepareFailed, RunningPart, gang_token
from trainyard.workers.launchers.horovod import HorovodLauncher
from trainyard.workers.launchers.mpi import MpiLauncher
from trainyard.workers.launchers.process import ProcessLauncher
from trainyard.workers.launchers.ray import RayLauncher
from trainyard.workers.launchers.runtime import HostRuntime, Runtime, Step
from trainyard.workers.launchers.torchrun import TorchrunLauncher

__all__ = [
    "LAUNCHERS",
    "LaunchContext",
    "Launcher",
    "PrepareFailed",
    "RunningPart",
    "Runtime",
    "Step",
    "gang_token",
    "launcher_for",
]

LAUNCHERS: dict[str, type[Launcher]] = {
    launcher.name: launcher
    for launcher in (ProcessLauncher, MpiLauncher, HorovodLauncher, RayLauncher, TorchrunLauncher)
}


def runtime_for(image: str | None) -> Runtime:
    if not image:
        return HostRuntime()
    from trainyard.workers.launchers.container import ContainerRuntime  # the docker SDK only when used

    return ContainerRuntime(image)


def launcher_for(name: str, image: str | None = None) -> Launcher:
    """The launcher `name`, running its programs in a container of `image` when one is given."""
    try:
        launcher = LAUNCHERS[name]
    except KeyError:
        raise ValueError(f"launcher {name!r} is not available on this node") from None
    return launcher(runtime_for(image))
