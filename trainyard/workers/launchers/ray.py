"""The `ray` launcher: a Ray cluster per gang — head on node rank 0, the other nodes join, the job runs on the head.

Each part runs ray_node.py, which starts Ray on this node (`--node-ip-address` = the node's
address, ports derived from the attempt's master port so that gangs and simulated nodes on one
machine do not collide), waits on the head for all N nodes, runs the command with RAY_ADDRESS,
and stops only the Ray processes it started. The dashboard is off; the cluster is protected by
a token every node of the gang derives alike (Ray's token authentication, CVE-2023-48022).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from trainyard.workers.launchers import ray_node
from trainyard.workers.launchers.base import LaunchContext, Launcher, RunningPart
from trainyard.workers.launchers.tools import command_argv, program, python

# Ray's ports stay below Linux's ephemeral range (32768-60999): a port some outgoing connection
# holds for a while would refuse the GCS or a raylet its bind.
PORT_FLOOR = 20000
PORT_CEILING = 32000
PORTS_PER_NODE = 48  # 9 service ports, then 39 for Ray's workers
RAY_NODE_SCRIPT = ".trainyard-ray-node.py"
JOIN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RayPorts:
    """The ports one node of the gang uses, derived from the attempt's master port."""

    gcs: int
    node_manager: int
    object_manager: int
    dashboard_agent_grpc: int
    dashboard_agent_listen: int
    runtime_env_agent: int
    metrics_export: int
    client_server: int
    dashboard: int
    min_worker: int
    max_worker: int

    def start_args(self, head: bool) -> list[str]:
        args = [
            "--node-manager-port",
            str(self.node_manager),
            "--object-manager-port",
            str(self.object_manager),
            "--dashboard-agent-grpc-port",
            str(self.dashboard_agent_grpc),
            "--dashboard-agent-listen-port",
            str(self.dashboard_agent_listen),
            "--runtime-env-agent-port",
            str(self.runtime_env_agent),
            "--metrics-export-port",
            str(self.metrics_export),
            "--min-worker-port",
            str(self.min_worker),
            "--max-worker-port",
            str(self.max_worker),
        ]
        if head:
            args += [
                "--port",
                str(self.gcs),
                "--ray-client-server-port",
                str(self.client_server),
                "--dashboard-port",
                str(self.dashboard),
                "--dashboard-host",
                "127.0.0.1",
                "--include-dashboard=false",
            ]
        return args


def ray_ports(master_port: int, rank: int) -> RayPorts:
    """Each node of the gang gets its own block (simulated nodes share one machine); rank 0's holds the GCS.

    The range is cut into whole blocks of PORTS_PER_NODE: rank 0 takes the block that holds the
    master port, the next ranks the blocks after it, wrapping at the ceiling by whole blocks, so a
    block never straddles the ceiling (its worker ports stay ascending: min below max).
    """
    blocks = (PORT_CEILING - PORT_FLOOR) // PORTS_PER_NODE
    block = ((master_port - PORT_FLOOR) // PORTS_PER_NODE + rank) % blocks
    first = PORT_FLOOR + block * PORTS_PER_NODE

    def port(index: int) -> int:
        return first + index

    return RayPorts(
        gcs=port(0),
        node_manager=port(1),
        object_manager=port(2),
        dashboard_agent_grpc=port(3),
        dashboard_agent_listen=port(4),
        runtime_env_agent=port(5),
        metrics_export=port(6),
        client_server=port(7),
        dashboard=port(8),
        min_worker=port(9),
        max_worker=port(PORTS_PER_NODE - 1),
    )


def head_address(ctx: LaunchContext) -> str:
    head = ctx.node_hosts[0] if ctx.node_hosts else ctx.node_address
    return f"{head}:{ray_ports(ctx.master_port, 0).gcs}"


class RayLauncher(Launcher):
    name = "ray"

    def job_environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = super().job_environment(ctx)
        env.update(RAY_ADDRESS=head_address(ctx), RAY_USAGE_STATS_ENABLED="0")
        if ctx.gang_token:
            # Ray versions without token authentication ignore these.
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ctx.gang_token)
        return env

    def start_args(self, ctx: LaunchContext) -> list[str]:
        cpus = float((ctx.spec.get("resources") or {}).get("cpus") or 1)
        return [
            *ray_ports(ctx.master_port, ctx.rank).start_args(head=ctx.rank == 0),
            "--node-ip-address",
            ctx.node_address,
            "--num-cpus",
            str(max(1, int(cpus))),
            "--num-gpus",
            str(len(ctx.gpus)),
            "--disable-usage-stats",
        ]

    def argv(self, ctx: LaunchContext) -> list[str]:
        in_container = self.runtime.in_container
        argv = [
            python(in_container),
            "-I",
            str(self.ray_node_script(ctx)),
            "--role",
            "head" if ctx.rank == 0 else "worker",
            "--ray",
            program("ray", in_container),
            "--head",
            head_address(ctx),
            "--num-nodes",
            str(ctx.num_nodes),
            "--join-timeout-s",
            str(JOIN_TIMEOUT_S),
        ]
        argv += [f"--ray-arg={arg}" for arg in self.start_args(ctx)]
        return [*argv, "--", *command_argv(ctx.spec["command"])]

    def ray_node_script(self, ctx: LaunchContext) -> Path:
        if self.runtime.in_container:
            return ctx.workdir / RAY_NODE_SCRIPT  # the working directory is mounted in the container
        return Path(ray_node.__file__)

    def start(self, ctx: LaunchContext) -> RunningPart:
        if self.runtime.in_container:
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ray_node.__file__, self.ray_node_script(ctx))
        return super().start(ctx)
