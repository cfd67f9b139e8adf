"""The `process` launcher: the job's command as a plain process, one per node."""

from __future__ import annotations

from trainyard.workers.launchers.base import LaunchContext, Launcher


class ProcessLauncher(Launcher):
    name = "process"

    def argv(self, ctx: LaunchContext) -> list[str]:
        command = ctx.spec["command"]
        if isinstance(command, str):
            return ["/bin/sh", "-c", command]
        return [str(part) for part in command]
