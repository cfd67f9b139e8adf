"""The `torchrun` launcher: PyTorch's elastic agent on every node, static rendezvous at node rank 0.

Each node runs `torchrun --nnodes N --nproc-per-node K --node-rank R --master-addr A --master-port P`;
torchrun starts K workers with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT of their
own. No restarts: a failed worker fails the part, and the scheduler tears the gang down.
"""

from __future__ import annotations

from trainyard.workers.launchers.base import LaunchContext, Launcher
from trainyard.workers.launchers.tools import command_argv, gang_interfaces, python


class TorchrunLauncher(Launcher):
    name = "torchrun"

    def job_environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = super().job_environment(ctx)
        interfaces = gang_interfaces(ctx.node_hosts)
        if interfaces:
            # Gloo and NCCL otherwise pick the interface of the host name, which may not be the gang's.
            names = ",".join(interfaces)
            env.setdefault("GLOO_SOCKET_IFNAME", names)
            env.setdefault("NCCL_SOCKET_IFNAME", names)
        return env

    def torchrun_argv(self, ctx: LaunchContext) -> list[str]:
        in_container = self.runtime.in_container
        runner = ["torchrun"] if in_container else [python(False), "-m", "torch.distributed.run"]
        master = ctx.node_hosts[0] if ctx.node_hosts else ctx.node_address
        return [
            *runner,
            "--nnodes", str(ctx.num_nodes),
            "--nproc-per-node", str(ctx.processes_per_node),
            "--node-rank", str(ctx.rank),
            "--master-addr", master,
            "--master-port", str(ctx.master_port),
            "--max-restarts", "0",
            "--no-python",  # the job's command is a program of its own (often `python train.py`)
        ]

    def argv(self, ctx: LaunchContext) -> list[str]:
        return [*self.torchrun_argv(ctx), *command_argv(ctx.spec["command"])]
