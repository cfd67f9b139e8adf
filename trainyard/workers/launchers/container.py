"""Containers (the spec's `image:`): any launcher's programs run in containers, through the Docker Engine API.

Each step (prepare, the main program, an MPI spawn) is one container of the image, on the host's
network (a gang's nodes reach each other as they would without a container), with the part's
working directory, checkpoint directory, inputs and outputs bind-mounted at the same paths, so
every path trainyard gives the job is valid inside. Never privileged, no engine socket inside,
capabilities dropped to a small set, no new privileges; GPUs as device requests. Output is read
from the container's attach stream (stdout and stderr apart) into pipes, like a host process's.
Stopping a step stops and removes its container.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainyard.workers.launchers.process_tree import STOP_GRACE_S
from trainyard.workers.launchers.runtime import Runtime, Step

if TYPE_CHECKING:
    from trainyard.workers.launchers.base import LaunchContext

# Worker setting (`trainyard worker --docker-url`): the engine's URL; else DOCKER_HOST, else the default socket.
DOCKER_URL_ENV = "TRAINYARD_DOCKER_URL"
# What a training job may need (own files, switch user in an entrypoint); the rest of Docker's
# default set (raw sockets, mknod, chroot, audit, setfcap, net_bind) is dropped.
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]
OUTPUT_RELAY_JOIN_S = 10.0
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_MOUNTED_VARIABLES = ("TRAINYARD_INPUT_", "TRAINYARD_OUTPUT_")


def _docker() -> Any:
    # Imported by name: the docker SDK is an optional dependency (the `docker` extra), and the
    # repository's own docker/ folder would shadow it for the type checker.
    return importlib.import_module("docker")


def engine_client() -> Any:
    """A Docker SDK client for the node's engine (Docker, or Podman's Docker-compatible service)."""
    docker = _docker()
    url = os.environ.get(DOCKER_URL_ENV) or os.environ.get("DOCKER_HOST")
    return docker.DockerClient(base_url=url) if url else docker.from_env()


def container_name(ctx: LaunchContext, step_name: str) -> str:
    return _NAME_UNSAFE.sub("-", f"trainyard-{ctx.job_id}-{ctx.attempt}-{ctx.rank}-{step_name}")


def bind_mounts(ctx: LaunchContext, job_env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Host directories the job uses, at the same paths inside; inputs read-only."""
    mounts = {str(ctx.workdir): "rw", str(ctx.checkpoint_dir): "rw"}
    if ctx.support_dir is not None:
        mounts[str(ctx.support_dir)] = "rw"
    for key, value in job_env.items():
        if key.startswith(_MOUNTED_VARIABLES) and os.path.isabs(value) and os.path.exists(value):
            inside_workdir = Path(value).resolve().is_relative_to(ctx.workdir.resolve())
            if not inside_workdir:
                mounts[value] = "ro" if key.startswith("TRAINYARD_INPUT_") else "rw"
    return {path: {"bind": path, "mode": mode} for path, mode in mounts.items()}


def container_environment(ctx: LaunchContext, job_env: dict[str, str]) -> dict[str, str]:
    env = dict(job_env)
    if ctx.gpus:
        # The engine shows the requested GPUs to the container renumbered from 0.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(ctx.gpus)))
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(g) for g in ctx.gpus)
    return env


def resource_limits(ctx: LaunchContext) -> dict[str, Any]:
    docker = _docker()
    resources = ctx.spec.get("resources") or {}
    limits: dict[str, Any] = {}
    if ctx.gpus:
        limits["device_requests"] = [
            docker.types.DeviceRequest(device_ids=[str(g) for g in ctx.gpus], capabilities=[["gpu"]])
        ]
    if resources.get("memory"):
        from trainyard.spec import parse_memory_bytes

        limits["mem_limit"] = parse_memory_bytes(str(resources["memory"]))
    return limits


class ContainerStep(Step):
    """A started container: its attach stream copied into two pipes; removed once it has ended."""

    def __init__(self, container: Any):
        self.container = container
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdout_fd, self.stderr_fd = out_r, err_r
        self._status: int | None = None
        self._wait_lock = threading.Lock()
        try:
            # Attached before the start (with the logs so far), so no early byte is missed.
            stream = container.attach_socket(params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1})
            raw = getattr(stream, "_sock", None)
            if raw is not None:
                raw.settimeout(None)  # a job may be silent for hours; the client's timeout must not end the stream
            container.start()
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            _remove(container)
            raise
        self._relay = threading.Thread(target=_copy_frames, args=(stream, out_w, err_w), daemon=True,
                                       name=f"attach-{container.name}")
        self._relay.start()
        container.reload()
        self._pid = int(container.attrs.get("State", {}).get("Pid") or 0) or None

    @property
    def pid(self) -> int | None:
        return self._pid

    def wait(self) -> int:
        with self._wait_lock:
            if self._status is None:
                result = self.container.wait(timeout=None)
                self._relay.join(OUTPUT_RELAY_JOIN_S)
                _remove(self.container)
                self._status = int(result.get("StatusCode", 1))
            return self._status

    def poll(self) -> int | None:
        if self._status is not None:
            return self._status
        try:
            self.container.reload()
        except Exception:  # removed already: it has ended
            return self._status if self._status is not None else 1
        state = self.container.attrs.get("State", {})
        return None if state.get("Running") else int(state.get("ExitCode", 1))

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        with contextlib.suppress(Exception):  # already stopped or gone
            self.container.stop(timeout=max(0, math.ceil(grace_s)))
        self.wait()


def _copy_frames(stream: Any, out_w: int, err_w: int) -> None:
    frames_iter = importlib.import_module("docker.utils.socket").frames_iter
    try:
        for stream_id, data in frames_iter(stream, tty=False):
            _write_all(err_w if stream_id == 2 else out_w, data)
    except OSError:
        pass  # the engine closed the stream as the container went
    finally:
        with contextlib.suppress(OSError):
            stream.close()
        os.close(out_w)
        os.close(err_w)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):  # gone already
        container.remove(force=True)


class ContainerRuntime(Runtime):
    """Programs run in containers of `image` on the node's engine."""

    in_container = True

    def __init__(self, image: str):
        self.image = image

    def run(self, ctx: LaunchContext, argv: list[str], job_env: dict[str, str], *, step_name: str,
            tag: dict[str, str] | None = None) -> Step:
        client = engine_client()
        options = self._options(ctx, argv, job_env, step_name)
        try:
            container = client.containers.create(self.image, **options)
        except Exception as exc:
            if type(exc).__name__ not in ("ImageNotFound", "Conflict"):
                raise
            self._recover(client, exc, options["name"])
            container = client.containers.create(self.image, **options)
        return ContainerStep(container)

    def _recover(self, client: Any, error: Exception, name: str) -> None:
        if type(error).__name__ == "ImageNotFound":
            client.images.pull(self.image)
        else:  # a container of that name outlived a worker that died: it is ours to replace
            _remove(client.containers.get(name))

    def _options(self, ctx: LaunchContext, argv: list[str], job_env: dict[str, str], step_name: str) -> dict[str, Any]:
        return {
            "command": argv,
            "name": container_name(ctx, step_name),
            "environment": container_environment(ctx, job_env),
            "working_dir": str(ctx.workdir),
            "volumes": bind_mounts(ctx, job_env),
            "network_mode": "host",
            "privileged": False,
            "cap_drop": ["ALL"],
            "cap_add": CAPABILITIES,
            "security_opt": ["no-new-privileges"],
            "init": True,  # signals reach the job and orphans are reaped
            "stdin_open": False,
            "tty": False,
            "labels": {"trainyard.job": ctx.job_id, "trainyard.attempt": str(ctx.attempt),
                       "trainyard.rank": str(ctx.rank), "trainyard.step": step_name},
            **resource_limits(ctx),
        }
