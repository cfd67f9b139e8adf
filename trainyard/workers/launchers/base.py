"""The launcher interface: what a part runs (command, environment, prepare step, spawns), started through a runtime."""

from __future__ import annotations

import abc
import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trainyard.spec import pull_secret_name
from trainyard.workers.launchers.process_tree import STOP_GRACE_S, kill_tree, part_tag, tagged_processes
from trainyard.workers.launchers.runtime import HostRuntime, Runtime, Step, host_environment

__all__ = [
    "STOP_GRACE_S",
    "LaunchContext",
    "Launcher",
    "PrepareFailed",
    "RunningPart",
    "base_environment",
    "gang_token",
    "job_variables",
    "kill_tree",
    "part_tag",
    "tagged_processes",
]


@dataclass
class LaunchContext:
    """Everything a launcher may use to start one part (one node's share) of an attempt."""

    job_id: str
    name: str
    attempt: int
    rank: int
    num_nodes: int
    node_hosts: list[str]
    node_address: str
    spec: dict[str, Any]
    gpus: list[int]
    workdir: Path
    checkpoint_dir: Path
    master_port: int
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    extra_env: dict[str, str] = field(default_factory=dict)
    data_env: dict[str, str] = field(default_factory=dict)  # TRAINYARD_INPUT_/OUTPUT_<ID>, set by staging
    params: dict[str, str] = field(default_factory=dict)  # a sweep point's values, formatted
    # A secret every part of the gang derives alike (Ray's cluster token); empty when none.
    gang_token: str = field(default="", repr=False)
    # A short private directory for trainyard's helper files and sockets (the rsh agent);
    # containers see it at the same path.
    support_dir: Path | None = None
    # Host path → {bind, mode} of each volume the part mounted (set by workers.volumes): containers bind them.
    volume_binds: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def processes_per_node(self) -> int:
        return int(self.spec.get("processes_per_node") or 1)

    @property
    def image(self) -> str | None:
        image = self.spec.get("image")
        return str(image) if image else None


def job_variables(ctx: LaunchContext) -> dict[str, str]:
    """SPEC §5: what every job sees, whatever its launcher — without the node's own environment."""
    env: dict[str, str] = {}
    env.update(ctx.spec.get("env") or {})
    pull_secret = pull_secret_name(ctx.spec)  # the registry password: the image pull's, not the job's
    env.update({name: value for name, value in ctx.secrets.items() if name != pull_secret})
    env.update(
        {
            "TRAINYARD_JOB_ID": ctx.job_id,
            "TRAINYARD_JOB_NAME": ctx.name,
            "TRAINYARD_ATTEMPT": str(ctx.attempt),
            "TRAINYARD_NODE_RANK": str(ctx.rank),
            "TRAINYARD_NUM_NODES": str(ctx.num_nodes),
            "TRAINYARD_NODE_HOSTS": ",".join(ctx.node_hosts),
            "TRAINYARD_CHECKPOINT_DIR": str(ctx.checkpoint_dir),
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in ctx.gpus),
            "MASTER_ADDR": ctx.node_hosts[0] if ctx.node_hosts else ctx.node_address,
            "MASTER_PORT": str(ctx.master_port),
            "WORLD_SIZE": str(ctx.num_nodes * ctx.processes_per_node),
            "RANK": str(ctx.rank),
            "LOCAL_RANK": "0",
            "PYTHONUNBUFFERED": "1",
            "TRAINYARD_METRICS_FILE": str(ctx.workdir / ".trainyard-metrics.jsonl"),  # trainyard.report
        }
    )
    env.update({f"TRAINYARD_PARAM_{name.upper()}": value for name, value in ctx.params.items()})
    env.update(ctx.data_env)
    env.update(ctx.extra_env)
    return env


def with_batchai_variables(ctx: LaunchContext, job_env: dict[str, str]) -> dict[str, str]:
    """A job from an Azure Batch AI job file also sees Batch AI's AZ_BATCHAI_* variables."""
    from trainyard.batchai import SCRATCH_NAME, batchai_env, prepare_part_files

    extra = batchai_env(job_env, scratch_dir=str(ctx.workdir / SCRATCH_NAME))
    if not extra:
        return job_env
    merged = {**job_env, **extra}
    prepare_part_files(merged)
    return merged


def base_environment(ctx: LaunchContext) -> dict[str, str]:
    """The full environment of a part run on the host: the node's own, then the job's variables."""
    return {**host_environment(), **job_variables(ctx)}


@dataclass
class RunningPart:
    """A started part: its main step, what other nodes spawned into it, and how to stop it all."""

    main: Step
    ctx: LaunchContext
    job_env: dict[str, str] = field(repr=False)
    tag: dict[str, str] = field(default_factory=dict)
    spawns: dict[str, Step] = field(default_factory=dict)
    # Set when the launcher ends the main step itself and its status is not the part's (rank hosts).
    exit_override: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def stdout_fd(self) -> int:
        return self.main.stdout_fd

    @property
    def stderr_fd(self) -> int:
        return self.main.stderr_fd

    @property
    def pid(self) -> int | None:
        return self.main.pid

    def running_spawns(self) -> list[Step]:
        with self.lock:
            return [step for step in self.spawns.values() if step.poll() is None]


class Launcher(abc.ABC):
    """One way of starting a part. Subclasses say what to run; the runtime says where."""

    name: str
    # Whether other nodes of the gang start programs in this launcher's parts (MPI's orted).
    accepts_spawns: ClassVar[bool] = False

    def __init__(self, runtime: Runtime | None = None):
        self.runtime = runtime or HostRuntime()

    @abc.abstractmethod
    def argv(self, ctx: LaunchContext) -> list[str]:
        """The command this node runs for its part."""

    def job_environment(self, ctx: LaunchContext) -> dict[str, str]:
        """The variables this launcher gives the job (the node's own environment not included)."""
        return job_variables(ctx)

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        """The full environment of the part's main program when it runs on the host."""
        return {**host_environment(), **self.job_environment(ctx)}

    def _run(self, ctx: LaunchContext, argv: list[str], job_env: dict[str, str], step_name: str) -> RunningPart:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        job_env = with_batchai_variables(ctx, job_env)
        tag = part_tag(ctx.job_id, ctx.attempt, ctx.rank)
        step = self.runtime.run(ctx, argv, job_env, step_name=step_name, tag=tag)
        return RunningPart(main=step, ctx=ctx, job_env=job_env, tag=tag)

    def prepare(self, ctx: LaunchContext) -> RunningPart | None:
        """Start the spec's `prepare` script (every node, before the command), or None without one."""
        script = ctx.spec.get("prepare")
        if not script:
            return None
        return self._run(ctx, ["/bin/sh", "-c", str(script)], self.job_environment(ctx), "prepare")

    def start(self, ctx: LaunchContext) -> RunningPart:
        """Start the part's main program, stdout and stderr on separate pipes."""
        return self._run(ctx, self.argv(ctx), self.job_environment(ctx), "main")

    def spawn(self, part: RunningPart, spawn_id: str, command: str) -> Step:
        """Run a command another node of the gang asked for, inside this part (its environment, its runtime)."""
        step = self.runtime.run(part.ctx, ["/bin/sh", "-c", command], part.job_env, step_name=f"spawn-{spawn_id}")
        with part.lock:
            part.spawns[spawn_id] = step
        return step

    def spawn_ended(self, part: RunningPart, spawn_id: str, exit_code: int) -> None:  # noqa: B027 (optional hook)
        """A spawned command ended; launchers whose parts live for their spawns end the part here."""

    def stop(self, part: RunningPart, grace_s: float = STOP_GRACE_S) -> None:
        """End the part: its main step (whose tag reaches what escaped the tree) and every spawn."""
        with part.lock:
            spawns = list(part.spawns.values())
        part.main.stop(grace_s)
        for step in spawns:
            step.stop(grace_s)

    def wait(self, part: RunningPart) -> int:
        """Wait for the main step; a death by signal N reads as 128+N, as in a shell."""
        code = part.main.wait()
        return code if part.exit_override is None else part.exit_override


class PrepareFailed(Exception):
    """The spec's `prepare` failed (or was stopped): the attempt ends with this reason and exit status."""

    def __init__(self, exit_code: int, reason: str = "prepare_failed"):
        super().__init__(
            f"prepare exited with status {exit_code}"
            if reason == "prepare_failed"
            else f"prepare was stopped ({reason})"
        )
        self.exit_code, self.reason = exit_code, reason


def gang_token(secret_key: str | None, job_id: str, attempt: int) -> str:
    """A secret every node of a gang derives alike from the cluster's key, without talking; '' without a key."""
    if not secret_key:
        return ""
    return hmac.new(secret_key.encode(), f"gang:{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()
