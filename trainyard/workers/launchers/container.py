"""Containers (the spec's `image:`): any launcher's programs run in containers, through the Docker Engine API.

Each step (prepare, the main program, an MPI spawn) is one container of the image, on the host's
network (a gang's nodes reach each other as they would without a container), with the part's
working directory, checkpoint directory, inputs and outputs bind-mounted at the same paths, so
every path trainyard gives the job is valid inside. Never privileged, no engine socket inside,
capabilities dropped to a small set, no new privileges; GPUs as device requests. Output is read
from the container's attach stream (stdout and stderr apart) into pipes, like a host process's.
Stopping a step stops and removes its container.

An image the node does not have is pulled; with `container.registry` the pull carries the
registry login as its `X-Registry-Auth` header (the Engine API's auth config), the password
taken from the job's secret that `password_secret` names. That header is the only place the
password goes: it is in no container's environment, command or labels, so `docker inspect`
never shows it, and a refused pull names the registry and user, never the password.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainyard.config import load_settings
from trainyard.workers.launchers.process_tree import STOP_GRACE_S
from trainyard.workers.launchers.runtime import Runtime, Step

if TYPE_CHECKING:
    from trainyard.workers.launchers.base import LaunchContext

log = logging.getLogger(__name__)

# Settings.docker_url's variable: `trainyard worker --docker-url` sets it for the container runtime to read.
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
    url = load_settings().docker_url or os.environ.get("DOCKER_HOST")
    return docker.DockerClient(base_url=url) if url else docker.from_env()


def container_name(ctx: LaunchContext, step_name: str) -> str:
    return _NAME_UNSAFE.sub("-", f"trainyard-{ctx.job_id}-{ctx.attempt}-{ctx.rank}-{step_name}")


def bind_mounts(ctx: LaunchContext, job_env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Host directories the job uses, at the same paths inside; inputs read-only; volumes where asked."""
    mounts = {str(ctx.workdir): "rw", str(ctx.checkpoint_dir): "rw"}
    if ctx.support_dir is not None:
        mounts[str(ctx.support_dir)] = "rw"
    for key, value in job_env.items():
        if key.startswith(_MOUNTED_VARIABLES) and os.path.isabs(value) and os.path.exists(value):
            inside_workdir = Path(value).resolve().is_relative_to(ctx.workdir.resolve())
            if not inside_workdir:
                mounts[value] = "ro" if key.startswith("TRAINYARD_INPUT_") else "rw"
    binds = {path: {"bind": path, "mode": mode} for path, mode in mounts.items()}
    binds.update({source: dict(bind) for source, bind in ctx.volume_binds.items()})
    return binds


def runtime_settings(ctx: LaunchContext) -> dict[str, Any]:
    """The spec's `container:` settings as engine options: /dev/shm, IPC namespace, ulimits, devices.

    /dev/shm is 2g unless the spec says otherwise (the engines' 64 MiB crashes PyTorch's DataLoader
    workers and NCCL). Devices are passed only when the node has them; never privileged.
    """
    from trainyard.spec import ContainerSettings

    settings = ContainerSettings.model_validate(ctx.spec.get("container") or {})
    options: dict[str, Any] = {}
    if settings.ipc is not None:
        options["ipc_mode"] = settings.ipc
    if settings.ipc != "host":  # the host's IPC namespace comes with the host's /dev/shm
        options["shm_size"] = settings.shm_size_bytes
    if settings.ulimits:
        ulimit = _docker().types.Ulimit
        options["ulimits"] = [
            ulimit(name=name, soft=soft, hard=hard)
            for name, (soft, hard) in sorted(_ulimit_pairs(settings.ulimits).items())
        ]
    devices = [device for wanted in settings.devices for device in _present_devices(wanted)]
    if devices:
        options["devices"] = devices
    return options


def _ulimit_pairs(ulimits: dict[str, int | str]) -> dict[str, tuple[int, int]]:
    pairs = {}
    for name, value in ulimits.items():
        soft, _, hard = str(value).partition(":")
        pairs[name] = (int(soft), int(hard or soft))
    return pairs


def _present_devices(wanted: str) -> list[str]:
    """`HOST[:INSIDE[:PERMS]]` → the engine's device strings; a directory (/dev/infiniband) gives each device in it."""
    host, _, rest = wanted.partition(":")
    inside, _, perms = rest.partition(":")
    inside, perms = inside or host, perms or "rwm"
    if os.path.isdir(host):
        found = []
        for dirpath, _dirs, names in os.walk(host):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                if stat.S_ISCHR(os.stat(path).st_mode):
                    found.append(f"{path}:{inside + path[len(host) :]}:{perms}")
        return found
    if not os.path.exists(host):
        log.warning("device %s is not on this node: not passed to the container", host)
        return []
    return [f"{host}:{inside}:{perms}"]


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


class ImagePullFailed(RuntimeError):
    """The engine could not pull the job's image (no such image, registry unreachable, login refused)."""


@dataclass(frozen=True)
class RegistryLogin:
    """The auth config of one pull (Engine API `X-Registry-Auth`); the password never in a repr."""

    server: str
    username: str
    secret_name: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "serveraddress": self.server}


def registry_login(ctx: LaunchContext, image: str) -> RegistryLogin | None:
    """The spec's `container.registry` with its password from the job's secrets; None without one."""
    from trainyard.spec import ContainerSettings, image_registry

    registry = ContainerSettings.model_validate(ctx.spec.get("container") or {}).registry
    if registry is None:
        return None
    password = ctx.secrets.get(registry.password_secret)
    if password is None:
        raise ImagePullFailed(
            f"container.registry.password_secret names {registry.password_secret!r}, "
            "which is not among the job's secrets on this node"
        )
    server = registry.server or image_registry(image)
    return RegistryLogin(server=server, username=registry.username, secret_name=registry.password_secret,
                         password=password)  # fmt: skip


def pull_image(client: Any, image: str, login: RegistryLogin | None) -> None:
    """Pull `image`, raising ImagePullFailed with the engine's own reason (the SDK's `images.pull`
    drops errors reported in the progress stream, then fails with a bare "no such image")."""
    auth = login.auth_config() if login is not None else None
    error = ""
    try:
        for event in client.api.pull(image, stream=True, decode=True, auth_config=auth):
            if isinstance(event, dict) and event.get("error"):
                error = str(event.get("errorDetail", {}).get("message") or event["error"])
    except Exception as exc:  # the engine refused the call itself (HTTP 4xx/5xx)
        error = str(getattr(exc, "explanation", None) or exc)
    if not error:
        return
    if login is not None:
        error = error.replace(login.password, "***")  # an engine should never echo it; never pass it on
        raise ImagePullFailed(
            f"could not pull image {image} from {login.server} as user {login.username!r} "
            f"(password: secret {login.secret_name}): {error}"
        )
    raise ImagePullFailed(f"could not pull image {image}: {error}")


class ContainerStep(Step):
    """A started container: its attach stream copied into two pipes; removed once it has ended.

    The step owns the engine client it was created with (`container.client`) and closes it once
    the container is removed, so a worker running many steps keeps no engine socket per step.
    """

    def __init__(self, container: Any):
        self.container = container
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.stdout_fd, self.stderr_fd = out_r, err_r
        self._status: int | None = None
        self._wait_lock = threading.Lock()
        stream = None
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
            if stream is not None:
                _close_stream(stream)
            _remove(container)
            _close_client(container)
            raise
        self._relay = threading.Thread(
            target=_copy_frames, args=(stream, out_w, err_w), daemon=True, name=f"attach-{container.name}"
        )
        self._relay.start()
        self._pid: int | None = None
        try:
            container.reload()
            self._pid = int(container.attrs.get("State", {}).get("Pid") or 0) or None
        except Exception as exc:  # a container that ended at once: the engine may fail to read its cgroup
            log.info("could not read the pid of container %s: %s", container.name, exc)

    @property
    def pid(self) -> int | None:
        return self._pid

    def wait(self) -> int:
        with self._wait_lock:
            if self._status is None:
                result = self.container.wait(timeout=None)
                self._relay.join(OUTPUT_RELAY_JOIN_S)
                _remove(self.container)
                _close_client(self.container)
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
        if self._status is not None:
            return  # ended and removed, its client closed: nothing is left to stop
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
        _close_stream(stream)
        os.close(out_w)
        os.close(err_w)


def _close_stream(stream: Any) -> None:
    # On a Unix socket the SDK hands over the response's socket file: closing that file leaves
    # the socket under it open, so both are closed.
    for closable in (stream, getattr(stream, "_sock", None)):
        if closable is not None:
            with contextlib.suppress(OSError):
                closable.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):  # gone already
        container.remove(force=True)


def _close_client(container: Any) -> None:
    with contextlib.suppress(Exception):  # closing only drops pooled sockets; nothing to report
        container.client.close()


class ContainerRuntime(Runtime):
    """Programs run in containers of `image` on the node's engine."""

    in_container = True

    def __init__(self, image: str):
        self.image = image

    def run(
        self,
        ctx: LaunchContext,
        argv: list[str],
        job_env: dict[str, str],
        *,
        step_name: str,
        tag: dict[str, str] | None = None,
    ) -> Step:
        options = self._options(ctx, argv, job_env, step_name)
        login = registry_login(ctx, self.image)
        client = engine_client()
        try:
            container = self._create(client, options, login)
        except BaseException:
            client.close()
            raise
        return ContainerStep(container)  # the step closes the client once its container is gone

    def _create(self, client: Any, options: dict[str, Any], login: RegistryLogin | None) -> Any:
        try:
            return client.containers.create(self.image, **options)
        except Exception as exc:
            if type(exc).__name__ not in ("ImageNotFound", "Conflict"):
                raise
            if type(exc).__name__ == "ImageNotFound":
                pull_image(client, self.image, login)
            else:  # a container of that name outlived a worker that died: it is ours to replace
                _remove(client.containers.get(options["name"]))
            return client.containers.create(self.image, **options)

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
            "labels": {
                "trainyard.job": ctx.job_id,
                "trainyard.attempt": str(ctx.attempt),
                "trainyard.rank": str(ctx.rank),
                "trainyard.step": step_name,
            },
            **resource_limits(ctx),
            **runtime_settings(ctx),
        }
