"""Where a part's programs run: a process tree on this host here, a container in container.py.

A launcher says *what* runs (its command and environment); a runtime says *where*, and hands
back a `Step`: one started program with its stdout and stderr on two pipes, that can be waited
for and stopped whole.
"""

from __future__ import annotations

import abc
import contextlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from trainyard.workers.launchers.process_tree import STOP_GRACE_S, kill_tree

if TYPE_CHECKING:
    from trainyard.workers.launchers.base import LaunchContext

REAP_TIMEOUT_S = 5.0  # after kill_tree's SIGKILL, only a process stuck in the kernel takes longer


def exit_status(returncode: int) -> int:
    """A death by signal N reads as 128+N, as in a shell."""
    return 128 - returncode if returncode < 0 else returncode


class Step(abc.ABC):
    """One started program (a process tree or a container) whose output is on two pipes."""

    stdout_fd: int
    stderr_fd: int

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The host pid of the program's top process, when there is one to tell."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Block until the program ends; its exit status."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """Its exit status if it ended, else None."""

    @abc.abstractmethod
    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Ask the whole program to end, then force it after `grace_s`."""


class HostStep(Step):
    """A process in a session of its own; stopping it ends its session and every descendant."""

    def __init__(
        self, process: subprocess.Popen[bytes], stdout_fd: int, stderr_fd: int, tag: dict[str, str] | None = None
    ):
        self.process, self.stdout_fd, self.stderr_fd = process, stdout_fd, stderr_fd
        self.tag = tag  # environment variables that also find what escaped the tree

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> int:
        return exit_status(self.process.wait())

    def poll(self) -> int | None:
        code = self.process.poll()
        return None if code is None else exit_status(code)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        kill_tree(self.process.pid, grace_s, tag=self.tag)
        # Reaped through its Popen, which keeps the real status for wait(): a stopped step leaves
        # no zombie behind when nobody waits for it afterwards.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=REAP_TIMEOUT_S)


class Runtime(abc.ABC):
    """Starts programs for a part; the environment given is the job's own variables only."""

    in_container = False

    @abc.abstractmethod
    def run(
        self,
        ctx: LaunchContext,
        argv: list[str],
        job_env: dict[str, str],
        *,
        step_name: str,
        tag: dict[str, str] | None = None,
    ) -> Step:
        """Start `argv` for the part of `ctx` in the part's working directory."""


_host_env: tuple[frozenset[tuple[bytes, bytes]], dict[str, str]] | None = None


def host_environment() -> dict[str, str]:
    """The node's own environment minus trainyard's configuration (Redis URL, keys): jobs start from it.

    Remembered while the process environment stays the same (every part start asks; decoding
    every variable each time was a tenth of a node's CPU with short jobs)."""
    global _host_env
    raw = getattr(os.environ, "_data", None)  # CPython keeps the encoded bytes here: compared without decoding
    key = frozenset(raw.items()) if isinstance(raw, dict) else None
    if key is None or _host_env is None or _host_env[0] != key:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.pop("DOCKER_HOST", None)  # the node's container engine is not the job's business either
        if key is None:
            return env
        _host_env = (key, env)
    return dict(_host_env[1])


def start_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start `argv` in a session of its own with stdout and stderr on separate pipes (read ends returned)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return process, out_r, err_r


class HostRuntime(Runtime):
    """Programs run as processes of this host, with the node's environment under the job's."""

    def run(
        self,
        ctx: LaunchContext,
        argv: list[str],
        job_env: dict[str, str],
        *,
        step_name: str,
        tag: dict[str, str] | None = None,
    ) -> Step:
        process, out_r, err_r = start_process(argv, {**host_environment(), **job_env}, ctx.workdir)
        return HostStep(process, out_r, err_r, tag=tag)
