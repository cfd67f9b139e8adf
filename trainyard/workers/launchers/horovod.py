"""The `horovod` launcher: an `mpi` job with the mpirun flags horovodrun itself passes.

Horovod is the job's own dependency; what trainyard adds is what `horovodrun` would put on the
mpirun line: the ob1 messaging layer, NCCL's diagnostics, and the library paths every rank needs.
"""

from __future__ import annotations

from trainyard.workers.launchers.base import LaunchContext
from trainyard.workers.launchers.mpi import MpiLauncher

# What horovodrun forwards from the launching node to every rank.
FORWARDED_VARIABLES = ("LD_LIBRARY_PATH", "PATH")


class HorovodLauncher(MpiLauncher):
    name = "horovod"

    def extra_flags(self, ctx: LaunchContext) -> list[str]:
        flags = ["--mca", "pml", "ob1", "-x", "NCCL_DEBUG=INFO"]
        environment = self.environment(ctx)
        for name in FORWARDED_VARIABLES:
            if name in environment:  # mpirun warns about each one it cannot find
                flags += ["-x", name]
        if "btl" not in self.network_flags(ctx):
            flags += ["--mca", "btl", "^openib"]  # horovodrun's default: no InfiniBand verbs BTL
        return flags

    def intel_extra_flags(self, ctx: LaunchContext) -> list[str]:
        flags = ["-genv", "NCCL_DEBUG", "INFO"]
        environment = self.environment(ctx)
        forwarded = [name for name in FORWARDED_VARIABLES if name in environment]
        if forwarded:  # as `-x` above: Intel's mpirun runs with -genvnone
            flags += ["-genvlist", ",".join(forwarded)]
        return flags
