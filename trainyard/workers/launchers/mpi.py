"""The `mpi` launcher: node rank 0 runs mpirun over the gang; the other nodes host the ranks it spawns.

mpirun starts its daemon (orted) on each host of the hostfile through our rsh agent, which has
the target node's trainyard agent run it inside that node's part (rsh_relay.py) — no ssh.
A part on a node other than rank 0 is a "rank host": it waits for those spawns and ends when
they have all ended, with the last one's status. If a rank dies, mpirun aborts the whole job
(every rank on every node) and exits with that rank's status, which fails the attempt.

Intel MPI (and its images) is told apart from Open MPI on the node, when the part starts: if
`mpirun --version` says "Intel(R) MPI", rank 0 runs Intel's own flags (a `host:K` machine file,
`-n`, `-ppn`, `-bootstrap rsh -bootstrap-exec <rsh agent>`, `-iface`, `-genvnone`) instead of Open
MPI's `--mca` ones; jobs running their own mpirun get the same bootstrap through
I_MPI_HYDRA_BOOTSTRAP(_EXEC), and $AZ_BATCHAI_MPI_HOST_FILE in Hydra's `host:K` format.
The `mpirun` is the one the part's own PATH finds first (a job's `env.PATH` can put an Intel MPI
install ahead of the node's Open MPI). Run for real with PyPI's impi-rt 2021.19 on simulated nodes
(tests/workers/launchers/test_intel_mpi.py, scripts/install-intel-mpi.sh).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from trainyard.workers.launchers import rsh_agent
from trainyard.workers.launchers.base import LaunchContext, Launcher, RunningPart
from trainyard.workers.launchers.runtime import Runtime, Step
from trainyard.workers.launchers.tools import command_argv, gang_interfaces, program, python

HOSTFILE_NAME = ".trainyard-hostfile"
# Intel MPI's (Hydra's) machine file: `host:processes` lines.
MACHINEFILE_NAME = ".trainyard-machinefile"
# What `mpirun --version` of Intel MPI prints ("Intel(R) MPI Library for Linux* OS, Version 2018 ...").
INTEL_MPI_BANNER = "Intel(R) MPI"
RSH_AGENT_NAME = "rsh-agent"
# A rank host's main program: it only keeps the part alive until its spawns are done.
RANK_HOST_ARGV = ["sleep", "2147483647"]
RANK_HOST_STOP_GRACE_S = 1.0
# Open MPI's session directory (the daemon's and PMIx's files and sockets) under the part's own
# short support dir: parts of the same host (simulated nodes, a rerun after a kill -9) never meet
# in a shared /tmp/ompi.<host>.<uid>, and the socket paths stay short.
SESSION_DIR_NAME = "ompi"
# A job that runs its own mpirun (a Batch AI customToolkitSettings job; spec env, set by
# trainyard.batchai): rank 0 runs the command as is, with the agent and mpirun's flags in the
# MPI implementations' environment variables; rank hosts end when rank 0 sends END_SPAWN.
OWN_MPIRUN_ENV = "AZ_BATCHAI_OWN_MPIRUN"
END_SPAWN = "true trainyard-own-mpirun-ended"
# mpirun hands its MCA parameters to every daemon, which looks for the rsh agent too (and gives up
# when it finds none) though only rank 0 spawns: Open MPI takes the first program of a `:` list
# that exists, and the agent lives in rank 0's own support dir, so the other nodes find /bin/false.
RSH_AGENT_FALLBACK = "/bin/false"
# Every rank starts in its own node's copy of the part's working directory: mpirun would have them
# all use rank 0's path, which exists on rank 0's node only (Open MPI then falls back to $HOME).
RANK_WORKDIR_ENV = "TRAINYARD_PART_WORKDIR"
RANK_CWD_WRAPPER = ["/bin/sh", "-c", f'cd "${RANK_WORKDIR_ENV}" && exec "$@"', "trainyard-rank"]
# mpirun puts its own session base on each daemon's command line: a daemon on another node would
# make rank 0's path there and leave it behind. A rank host gives its daemons its own instead.
SESSION_BASE_ARGUMENT = re.compile(r"(\borte_tmpdir_base\s+)(\"[^\"]*\"|'[^']*'|\S+)")


def mpirun_program(ctx: LaunchContext, in_container: bool) -> str:
    """The `mpirun` a part runs: the image's; the first on the job's own PATH when its env sets one; else the node's."""
    path = (ctx.spec.get("env") or {}).get("PATH")
    if not in_container and path:
        found = shutil.which("mpirun", path=str(path))
        if found:
            return found
    return program("mpirun", in_container)


def own_mpirun(ctx: LaunchContext) -> bool:
    return (ctx.spec.get("env") or {}).get(OWN_MPIRUN_ENV) == "1"


def with_session_base(command: str, base: Path) -> str:
    """A daemon's command line from rank 0 with this part's own session base in place of rank 0's."""
    quoted = shlex.quote(str(base))
    return SESSION_BASE_ARGUMENT.sub(lambda found: found.group(1) + quoted, command)


def hostfile_text(ctx: LaunchContext) -> str:
    """One line per node of the gang, `processes_per_node` slots each (Open MPI's syntax)."""
    return "".join(f"{host} slots={ctx.processes_per_node}\n" for host in ctx.node_hosts)


def machinefile_text(ctx: LaunchContext) -> str:
    """Intel MPI's machine file: one `host:processes_per_node` line per node of the gang."""
    return "".join(f"{host}:{ctx.processes_per_node}\n" for host in ctx.node_hosts)


class MpiLauncher(Launcher):
    name = "mpi"
    accepts_spawns = True

    def __init__(self, runtime: Runtime | None = None):
        super().__init__(runtime)
        self._ending: set[tuple[str, int, int]] = set()  # own-mpirun rank hosts rank 0 has told to end

    def hostfile(self, ctx: LaunchContext) -> Path:
        return ctx.workdir / HOSTFILE_NAME

    def job_environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = super().job_environment(ctx)
        env["TRAINYARD_HOSTFILE"] = str(self.hostfile(ctx))
        env[RANK_WORKDIR_ENV] = str(ctx.workdir)  # each node's own (a rank gets its daemon's environment)
        if ctx.support_dir is not None:
            # Read from the environment by mpirun here and by the daemons it spawns into the
            # other parts (each spawn runs with its own part's environment).
            base = self.session_base(ctx)
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            env["OMPI_MCA_orte_tmpdir_base"] = str(base)
        if self.runtime.in_container or os.geteuid() == 0:
            # Open MPI refuses root unless told twice; containers commonly run as root.
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        if own_mpirun(ctx) and ctx.support_dir is not None:
            env.update(self.own_mpirun_environment(ctx))
        return env

    def own_mpirun_environment(self, ctx: LaunchContext) -> dict[str, str]:
        """mpirun_argv's flags as Open MPI's OMPI_MCA_* variables, and the rsh bootstrap of Intel MPI and MPICH."""
        agent = str(self.rsh_agent_path(ctx))
        env = {
            "OMPI_MCA_plm_rsh_agent": self.rsh_agent_choice(ctx),
            "OMPI_MCA_plm_rsh_no_tree_spawn": "1",
            "OMPI_MCA_orte_leave_session_attached": "1",
            "OMPI_MCA_rtc_hwloc_vmhole": "none",
            "I_MPI_HYDRA_BOOTSTRAP": "rsh",
            "I_MPI_HYDRA_BOOTSTRAP_EXEC": agent,
            **self.intel_network_environment(ctx),
            "HYDRA_LAUNCHER": "rsh",
            "HYDRA_LAUNCHER_EXEC": agent,
        }
        flags = self.network_flags(ctx)
        env.update({f"OMPI_MCA_{flags[i + 1]}": flags[i + 2] for i in range(0, len(flags), 3)})
        return env

    def intel_network_environment(self, ctx: LaunchContext) -> dict[str, str]:
        """intel_network_flags as Intel MPI's variables (Hydra's interface, libfabric's TCP provider's)."""
        interfaces = gang_interfaces(ctx.node_hosts)
        if not interfaces:
            return {}
        return {"I_MPI_HYDRA_IFACE": interfaces[0], **self.intel_rank_network_environment(ctx)}

    def intel_rank_network_environment(self, ctx: LaunchContext) -> dict[str, str]:
        """What Intel MPI's ranks need to talk over the gang's interface (libfabric's variables)."""
        interfaces = gang_interfaces(ctx.node_hosts)
        if not interfaces:
            return {}
        env = {"FI_TCP_IFACE": interfaces[0], "FI_SOCKETS_IFACE": interfaces[0]}
        if interfaces == ["lo"]:
            # Simulated nodes on one machine (one host name): libfabric's TCP provider between every
            # pair of ranks, not shared memory across "nodes" (Open MPI's `btl tcp,self` above).
            env.update(FI_PROVIDER="tcp", I_MPI_FABRICS="ofi")
        return env

    def argv(self, ctx: LaunchContext) -> list[str]:
        if ctx.rank != 0:
            return list(RANK_HOST_ARGV)
        if own_mpirun(ctx):
            # The command, then each rank host is told the job is over (its mpirun may have spawned nothing there).
            ending = f'for h in "$@"; do {shlex.quote(str(self.rsh_agent_path(ctx)))} "$h" {END_SPAWN}; done'
            # Intel MPI's Hydra refuses Open MPI's `host slots=K` lines: its mpirun gets the `host:K` file.
            intel = (
                f"if mpirun --version 2>&1 | grep -qF {shlex.quote(INTEL_MPI_BANNER)}; then "
                f"export AZ_BATCHAI_MPI_HOST_FILE={shlex.quote(str(ctx.workdir / MACHINEFILE_NAME))}; fi; "
            )
            script = f'{intel}/bin/sh -c "$0"; rc=$?; {ending}; exit $rc'
            return ["/bin/sh", "-c", script, str(ctx.spec["command"]), *ctx.node_hosts[1:]]
        script = self.launch_script(ctx, mpirun_program(ctx, self.runtime.in_container))
        return ["/bin/sh", "-c", script, "trainyard-mpi", *RANK_CWD_WRAPPER, *command_argv(ctx.spec["command"])]

    def launch_script(self, ctx: LaunchContext, mpirun: str) -> str:
        """Shell that runs the command ("$@") under `mpirun` with Intel MPI's flags or Open MPI's, as it finds."""
        intel = shlex.join([mpirun, *self.intel_mpirun_argv(ctx)[1:]])
        openmpi = shlex.join([mpirun, *self.mpirun_argv(ctx)[1:]])
        return (
            f"if {shlex.quote(mpirun)} --version 2>&1 | grep -qF {shlex.quote(INTEL_MPI_BANNER)}; "
            f'then exec {intel} "$@"; fi\nexec {openmpi} "$@"'
        )

    def intel_mpirun_argv(self, ctx: LaunchContext) -> list[str]:
        """Intel MPI's mpirun (Hydra): its proxies start on the other nodes through the rsh agent, as orted does.

        `-genvnone`: each rank keeps its own node's part environment (its TRAINYARD_NODE_RANK, its
        workdir), as under Open MPI; left alone, Hydra would hand rank 0's to every rank.
        """
        rank_env = self.intel_rank_network_environment(ctx)
        return [
            mpirun_program(ctx, self.runtime.in_container),
            "-machinefile",
            str(ctx.workdir / MACHINEFILE_NAME),
            "-n",
            str(ctx.num_nodes * ctx.processes_per_node),
            "-ppn",
            str(ctx.processes_per_node),
            "-bootstrap",
            "rsh",
            "-bootstrap-exec",
            str(self.rsh_agent_path(ctx)),
            "-genvnone",
            *[word for name, value in rank_env.items() for word in ("-genv", name, value)],
            *self.intel_network_flags(ctx),
            *self.intel_extra_flags(ctx),
        ]

    def intel_network_flags(self, ctx: LaunchContext) -> list[str]:
        interfaces = gang_interfaces(ctx.node_hosts)
        return ["-iface", interfaces[0]] if interfaces else []

    def intel_extra_flags(self, ctx: LaunchContext) -> list[str]:
        """Intel MPI flags a flavour of MPI job adds (horovod); Intel's mpirun passes the whole environment."""
        return []

    def mpirun_argv(self, ctx: LaunchContext) -> list[str]:
        return [
            mpirun_program(ctx, self.runtime.in_container),
            "--hostfile",
            str(self.hostfile(ctx)),
            "-np",
            str(ctx.num_nodes * ctx.processes_per_node),
            "--map-by",
            "slot",
            "--bind-to",
            "none",
            # Daemons stay attached to the rsh agent, so the remote part sees them end.
            "--leave-session-attached",
            "--mca",
            "plm_rsh_agent",
            self.rsh_agent_choice(ctx),
            # Every daemon is started from rank 0 (only rank 0's part has the agent's socket).
            "--mca",
            "plm_rsh_no_tree_spawn",
            "1",
            # Open MPI 4's daemons map a shared copy of the hardware topology at a "hole" of their
            # address space; that mapping segfaults now and then (hwloc_shmem_topology_write).
            "--mca",
            "rtc_hwloc_vmhole",
            "none",
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

    def session_base(self, ctx: LaunchContext) -> Path:
        assert ctx.support_dir is not None
        return ctx.support_dir / SESSION_DIR_NAME

    def rsh_agent_path(self, ctx: LaunchContext) -> Path:
        if ctx.support_dir is None:
            raise RuntimeError("the mpi launcher needs a spawn relay (ctx.support_dir is not set)")
        return ctx.support_dir / RSH_AGENT_NAME

    def rsh_agent_choice(self, ctx: LaunchContext) -> str:
        """Open MPI's plm_rsh_agent: our agent where it is (rank 0's node), /bin/false on the others."""
        return f"{self.rsh_agent_path(ctx)} : {RSH_AGENT_FALLBACK}"

    def start(self, ctx: LaunchContext) -> RunningPart:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        self.hostfile(ctx).write_text(hostfile_text(ctx))
        (ctx.workdir / MACHINEFILE_NAME).write_text(machinefile_text(ctx))
        if ctx.rank == 0:
            self._write_rsh_agent(ctx)
        return super().start(ctx)

    def _write_rsh_agent(self, ctx: LaunchContext) -> None:
        path = self.rsh_agent_path(ctx)
        interpreter = "/usr/bin/env python3" if self.runtime.in_container else f"{python(False)} -I"
        source = Path(rsh_agent.__file__).read_text()
        path.write_text(f"#!{interpreter}\n{source}")
        path.chmod(0o700)

    def spawn(self, part: RunningPart, spawn_id: str, command: str) -> Step:
        if command.strip() == END_SPAWN:
            self._ending.add((part.ctx.job_id, part.ctx.attempt, part.ctx.rank))
        if part.ctx.support_dir is not None:
            command = with_session_base(command, self.session_base(part.ctx))
        return super().spawn(part, spawn_id, command)

    def spawn_ended(self, part: RunningPart, spawn_id: str, exit_code: int) -> None:
        # Rank 0's part ends with mpirun; a rank host ends when mpirun's daemons here have ended
        # (running its own mpirun, the job may start several: then when rank 0 says it has ended).
        if part.ctx.rank == 0 or part.running_spawns():
            return
        key = (part.ctx.job_id, part.ctx.attempt, part.ctx.rank)
        if own_mpirun(part.ctx):
            if key not in self._ending:
                return
            self._ending.discard(key)
        part.exit_override = exit_code
        part.main.stop(RANK_HOST_STOP_GRACE_S)
