"""Launchers: how a job part's processes start on a node (one module per launcher)."""

from __future__ import annotations

from trainyard.workers.launchers.base import LaunchContext, Launcher, RunningPart
from trainyard.workers.launchers.process import ProcessLauncher

__all__ = ["LaunchContext", "Launcher", "RunningPart", "launcher_for"]

_LAUNCHERS: dict[str, type[Launcher]] = {"process": ProcessLauncher}


def launcher_for(name: str) -> Launcher:
    try:
        return _LAUNCHERS[name]()
    except KeyError:
        raise ValueError(f"launcher {name!r} is not available on this node") from None
