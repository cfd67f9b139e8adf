"""The `torchrun` launcher: PyTorch's elastic agent on every node, static rendezvous at node rank 0.

Each node runs `torchrun --nnodes N --nproc-per-node K --node-rank R --master-addr A --master-port P`;
torchrun starts K workers with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT of their
own. No restarts: a failed worker fails the part, and the scheduler tears the gang down.

Where the part's environment has no torchrun (PyTorch before 1.10, e.g. the PyTorch 0.4 images of
Batch AI's recipes), the node starts the K processes itself, as Batch AI did: each with its RANK
(node rank x K + local rank), LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
AZ_BATCHAI_TASK_INDEX = RANK; when one exits non-zero the others are stopped and the part fails
with its status. Which one runs is decided on the node when the part starts (`runner_script`):
the worker's own Python (on the host), a `torchrun` on the part's PATH, a `python3`/`python` that
has `torch.distributed.run`, else one process per rank.
"""

from __future__ import annotations

import shlex

from trainyard.workers.launchers.base import LaunchContext, Launcher
from trainyard.workers.launchers.runtime import Runtime
from trainyard.workers.launchers.tools import address_interfaces, command_argv, gang_interfaces, python

# Exits 0 when the Python running it has torch.distributed.run, without importing torch (a second
# or more). Python 3.6-compatible: the interpreters of 2018 images run it.
HAS_TORCHRUN_PY = (
    "import importlib.util as u, os, sys; s = u.find_spec('torch'); "
    "sys.exit(0 if s and any(os.path.isfile(os.path.join(p, 'distributed', 'run.py')) "
    "for p in (s.submodule_search_locations or [])) else 1)"
)
# Where the per-rank processes write their exit status (in the part's working directory).
RANK_STATUS_DIR = ".trainyard-ranks"
# One process per rank, without torchrun. $1: processes per node; then the command's argv.
# A rank's status lands in its file; the first non-zero one stops the others (the whole process
# group but this shell) and is the part's status; all zero: 0.
PER_RANK_SCRIPT = f"""_ty_k=$1; shift
_ty_d={RANK_STATUS_DIR}; rm -rf "$_ty_d"; mkdir -p "$_ty_d"
_ty_i=0
while [ "$_ty_i" -lt "$_ty_k" ]; do
  _ty_r=$(( ${{TRAINYARD_NODE_RANK:-0}} * _ty_k + _ty_i ))
  ( LOCAL_RANK=$_ty_i RANK=$_ty_r AZ_BATCHAI_TASK_INDEX=$_ty_r
    export LOCAL_RANK RANK AZ_BATCHAI_TASK_INDEX
    "$@"; echo $? > "$_ty_d/rank-$_ty_r" ) &
  _ty_i=$((_ty_i + 1))
done
while :; do
  _ty_n=0
  for _ty_f in "$_ty_d"/rank-*; do
    [ -e "$_ty_f" ] || continue
    _ty_rc=$(cat "$_ty_f")
    [ -n "$_ty_rc" ] || continue
    if [ "$_ty_rc" != 0 ]; then
      echo "trainyard: ${{_ty_f##*/}} exited with status $_ty_rc; stopping the node's other ranks" >&2
      trap '' TERM; kill -TERM 0 2>/dev/null; exit "$_ty_rc"
    fi
    _ty_n=$((_ty_n + 1))
  done
  [ "$_ty_n" -ge "$_ty_k" ] && exit 0
  sleep 0.2
done"""


class TorchrunLauncher(Launcher):
    name = "torchrun"

    def __init__(self, runtime: Runtime | None = None, host_python: str | None = None):
        super().__init__(runtime)
        # The Python whose torchrun runs parts on the host (default: the worker's own).
        self.host_python = host_python

    def job_environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = super().job_environment(ctx)
        interfaces = gang_interfaces(ctx.node_hosts) or address_interfaces(ctx.node_address)
        if interfaces:
            # Gloo and NCCL otherwise pick the interface of the host name, which may not be the gang's
            # (on Debian the host name is 127.0.1.1, which no other node reaches).
            names = ",".join(interfaces)
            env.setdefault("GLOO_SOCKET_IFNAME", names)
            env.setdefault("NCCL_SOCKET_IFNAME", names)
        return env

    def torchrun_flags(self, ctx: LaunchContext) -> list[str]:
        master = ctx.node_hosts[0] if ctx.node_hosts else ctx.node_address
        return [
            "--nnodes",
            str(ctx.num_nodes),
            "--nproc-per-node",
            str(ctx.processes_per_node),
            "--node-rank",
            str(ctx.rank),
            "--master-addr",
            master,
            "--master-port",
            str(ctx.master_port),
            "--max-restarts",
            "0",
            "--no-python",  # the job's command is a program of its own (often `python train.py`)
        ]

    def torchrun_argv(self, ctx: LaunchContext) -> list[str]:
        """torchrun as the worker's environment has it: the image's `torchrun`, or the worker's Python's."""
        in_container = self.runtime.in_container
        runner = ["torchrun"] if in_container else [self.host_python or python(False), "-m", "torch.distributed.run"]
        return [*runner, *self.torchrun_flags(ctx)]

    def runner_script(self, ctx: LaunchContext) -> str:
        """Shell that starts the command ("$@") under the first torchrun found on the node, else once per rank."""
        flags = " ".join(shlex.quote(flag) for flag in self.torchrun_flags(ctx))
        candidates: list[tuple[str, str]] = []  # (probe, runner)
        if not self.runtime.in_container:
            own = shlex.quote(self.host_python or python(False))
            candidates.append((f"{own} -c {shlex.quote(HAS_TORCHRUN_PY)}", f"{own} -m torch.distributed.run"))
        candidates.append(("command -v torchrun", "torchrun"))
        for interpreter in ("python3", "python"):
            probe = f"command -v {interpreter} && {interpreter} -c {shlex.quote(HAS_TORCHRUN_PY)}"
            candidates.append((probe, f"{interpreter} -m torch.distributed.run"))
        lines = [
            f'if {{ {probe}; }} >/dev/null 2>&1; then exec {runner} {flags} "$@"; fi' for probe, runner in candidates
        ]
        note = (
            "trainyard: no torchrun in this environment (torchrun, torch.distributed.run); starting "
            f"{ctx.processes_per_node} process(es) on this node, one per rank, with RANK, LOCAL_RANK, "
            "WORLD_SIZE, MASTER_ADDR, MASTER_PORT and AZ_BATCHAI_TASK_INDEX"
        )
        lines.append(f"echo {shlex.quote(note)} >&2")
        lines.append(f'set -- {ctx.processes_per_node} "$@"')
        lines.append(PER_RANK_SCRIPT)
        return "\n".join(lines)

    def argv(self, ctx: LaunchContext) -> list[str]:
        return ["/bin/sh", "-c", self.runner_script(ctx), "trainyard-torchrun", *command_argv(ctx.spec["command"])]
