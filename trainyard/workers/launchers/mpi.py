"""The `mpi` launcher: node rank 0 runs mpirun over the gang; the other nodes host the ranks it spawns.

mpirun starts its daemon (orted) on each host of the hostfile through our rsh agent, which has
the target node's trainyard agent run it inside that node's part (rsh_relay.py) — no ssh.
A part on a node other than rank 0 is a "rank host": it waits for those spawns and ends when
they have all ended, with the last one's status. If a rank dies, mpirun aborts the whole job
(every rank on every node) and exits with that rank's status, which fails the attempt.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainyard.workers.launchers import rsh_agent
from trainyard.workers.launchers.base import LaunchContext, Launcher, RunningPart
from trainyard.workers.launchers.tools import command_argv, gang_interfaces, program, python

HOSTFILE_NAME = ".trainyard-hostfile"
RSH_AGENT_NAME = "rsh-agent"
# A rank host's main program: it only keeps the part alive until its spawns are done.
RANK_HOST_ARGV = ["sleep", "2147483647"]
RANK_HOST_STOP_GRACE_S = 1.0


def hostfile_text(ctx: LaunchContext) -> str:
    """One line per node of the gang, `processes_per_node` slots each (Open MPI's syntax)."""
    return "".join(f"{host} slots={ctx.processes_per_node}\n" for host in ctx.node_hosts)


class MpiLauncher(Launcher):
    name = "mpi"
    accepts_spawns = True

    def hostfile(self, ctx: LaunchContext) -> Path:
        return ctx.workdir / HOSTFILE_NAME

    def job_environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = super().job_environment(ctx)
        env["TRAINYARD_HOSTFILE"] = str(self.hostfile(ctx))
        if self.runtime.in_container or os.geteuid() == 0:
            # Open MPI refuses root unless told twice; containers commonly run as root.
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        return env

    def argv(self, ctx: LaunchContext) -> list[str]:
        if ctx.rank != 0:
            return list(RANK_HOST_ARGV)
        return [*self.mpirun_argv(ctx), *command_argv(ctx.spec["command"])]

    def mpirun_argv(self, ctx: LaunchContext) -> list[str]:
        return [
            program("mpirun", self.runtime.in_container),
            "--hostfile", str(self.hostfile(ctx)),
            "-np", str(ctx.num_nodes * ctx.processes_per_node),
            "--map-by", "slot",
            "--bind-to", "none",
            # Daemons stay attached to the rsh agent, so the remote part sees them end.
            "--leave-session-attached",
            "--mca", "plm_rsh_agent", str(self.rsh_agent_path(ctx)),
            # Every daemon is started from rank 0 (only rank 0's part has the agent's socket).
            "--mca", "plm_rsh_no_tree_spawn", "1",
            # Open MPI 4's daemons map a shared copy of the hardware topology at a "hole" of their
            # address space; that mapping segfaults now and then (hwloc_shmem_topology_write).
            "--mca", "rtc_hwloc_vmhole", "none",
            *self.network_flags(ctx),
            *self.extra_flags(ctx),
        ]

    def network_flags(self, ctx: LaunchContext) -> list[str]:
        interfaces = gang_interfaces(ctx.node_hosts)
        if not interfaces:
            return []
        names = ",".join(interfaces)
        flags = ["--mca", "btl_tcp_if_include", names, "--mca", "oob_tcp_if_include", names]
        if interfaces == ["lo"]:
            # Simulated nodes on one machine: TCP between ranks, not shared memory across "nodes".
            flags = ["--mca", "btl", "tcp,self", *flags]
        return flags

    def extra_flags(self, ctx: LaunchContext) -> list[str]:
        """Flags a flavour of MPI job adds (horovod)."""
        return []

    def rsh_agent_path(self, ctx: LaunchContext) -> Path:
        if ctx.support_dir is None:
            raise RuntimeError("the mpi launcher needs a spawn relay (ctx.support_dir is not set)")
        return ctx.support_dir / RSH_AGENT_NAME

    def start(self, ctx: LaunchContext) -> RunningPart:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        self.hostfile(ctx).write_text(hostfile_text(ctx))
        if ctx.rank == 0:
            self._write_rsh_agent(ctx)
        return super().start(ctx)

    def _write_rsh_agent(self, ctx: LaunchContext) -> None:
        path = self.rsh_agent_path(ctx)
        interpreter = "/usr/bin/env python3" if self.runtime.in_container else f"{python(False)} -I"
        source = Path(rsh_agent.__file__).read_text()
        path.write_text(f"#!{interpreter}\n{source}")
        path.chmod(0o700)

    def spawn_ended(self, part: RunningPart, spawn_id: str, exit_code: int) -> None:
        # Rank 0's part ends with mpirun; a rank host ends when mpirun's daemons here have ended.
        if part.ctx.rank == 0 or part.running_spawns():
            return
        part.exit_override = exit_code
        part.main.stop(RANK_HOST_STOP_GRACE_S)
