"""The `process` launcher: the job's command as a plain process, one per node."""

from __future__ import annotations

from trainyard.workers.launchers.base import LaunchContext, Launcher
from trainyard.workers.launchers.tools import command_argv


class ProcessLauncher(Launcher):
    name = "process"

    def argv(self, ctx: LaunchContext) -> list[str]:
        return command_argv(ctx.spec["command"])
