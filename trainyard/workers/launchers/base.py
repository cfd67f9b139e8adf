"""The launcher interface: build a part's command and environment, start it, stop its whole tree."""

from __future__ import annotations

import abc
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

STOP_GRACE_S = 10.0


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


@dataclass
class RunningPart:
    """A started part: its top process (leader of its own session) and its output pipes."""

    process: subprocess.Popen[bytes]
    stdout_fd: int
    stderr_fd: int
    tag: dict[str, str] = field(default_factory=dict)


def base_environment(ctx: LaunchContext) -> dict[str, str]:
    """SPEC §5: what every job sees, whatever its launcher."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("TRAINYARD_") and k not in ("TRAINYARD_HOME",)]:
        env.pop(key)  # the node's own configuration (Redis URL, keys) is not the job's business
    env.pop("TRAINYARD_HOME", None)
    env.update(ctx.spec.get("env") or {})
    env.update(ctx.secrets)
    world_size = ctx.num_nodes * int(ctx.spec.get("processes_per_node") or 1)
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
            "WORLD_SIZE": str(world_size),
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


def tagged_processes(tag: dict[str, str]) -> list[psutil.Process]:
    """Processes whose environment carries every variable of `tag` (a part's job, attempt, rank).

    This finds what escaped the process tree (double fork, setsid) but kept the environment.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if all(env.get(key) == value for key, value in tag.items()):
            found.append(proc)
    return found


def part_tag(job_id: str, attempt: int, rank: int) -> dict[str, str]:
    return {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": str(attempt), "TRAINYARD_NODE_RANK": str(rank)}


def kill_tree(root_pid: int, grace_s: float = STOP_GRACE_S, tag: dict[str, str] | None = None) -> None:
    """SIGTERM the part's session and every descendant, then SIGKILL what is left after the grace."""
    try:
        family = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if tag:
        known = {p.pid for p in family}
        family += [p for p in tagged_processes(tag) if p.pid not in known]
    # Descendants that called setsid() left our process group; signal them one by one too.
    _signal_group(root_pid, signal.SIGTERM)
    for proc in family:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    _signal_group(root_pid, signal.SIGKILL)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


class Launcher(abc.ABC):
    """One way of starting a part. Subclasses say what to run; starting and stopping are shared."""

    name: str

    @abc.abstractmethod
    def argv(self, ctx: LaunchContext) -> list[str]:
        """The command this node runs for its part."""

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        return base_environment(ctx)

    def start(self, ctx: LaunchContext) -> RunningPart:
        """Start the part in a session of its own, stdout and stderr on separate pipes."""
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            process = subprocess.Popen(
                self.argv(ctx),
                cwd=ctx.workdir,
                env=self.environment(ctx),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                start_new_session=True,
                close_fds=True,
            )
        except OSError:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        os.close(out_w)
        os.close(err_w)
        return RunningPart(process=process, stdout_fd=out_r, stderr_fd=err_r,
                           tag=part_tag(ctx.job_id, ctx.attempt, ctx.rank))

    def stop(self, part: RunningPart, grace_s: float = STOP_GRACE_S) -> None:
        kill_tree(part.process.pid, grace_s, tag=part.tag)

    def wait(self, part: RunningPart) -> int:
        """Wait for the part's top process; a death by signal N reads as 128+N, as in a shell."""
        code = part.process.wait()
        return 128 - code if code < 0 else code
