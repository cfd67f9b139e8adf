"""The job spec of SPEC §3 as pydantic models, plus the job and attempt state vocabulary."""

from __future__ import annotations

import itertools
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

PRIORITY_NAMES = {"low": 250, "normal": 500, "high": 750}
MAX_PRIORITY = 1000
DEFAULT_MAX_WALL_CLOCK_S = 7 * 24 * 3600
MAX_GANG_NODES = 4096
# Launchers whose implementation has landed; others are refused at submit with 422.
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IO_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?$", re.IGNORECASE)
_MEMORY_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


class JobState(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


# The one definition of which job states are final (and which hold resources); members compare
# and hash as their string values, so `"failed" in TERMINAL_STATES` holds too.
TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.RUNNING})


def state_values(states: frozenset[StrEnum]) -> tuple[str, ...]:
    """The states as plain strings, in a fixed order: for SQL `IN (...)` and for tuples in output."""
    return tuple(sorted(state.value for state in states))


class AttemptState(StrEnum):
    """An attempt: placed, running, then how it ended (requeued: the job went back to the queue)."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"


class PartState(StrEnum):
    """One node's share of an attempt: exited when its process ended, lost when the scheduler ended it."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    EXITED = "exited"
    LOST = "lost"


class NodeState(StrEnum):
    """A node: up, draining (no new work), lost (no heartbeat), removed (the autoscaler took it away);
    preparing (its pool's setup task runs), unusable (that task failed), stopping (its worker shuts down)."""

    UP = "up"
    DRAINING = "draining"
    LOST = "lost"
    REMOVED = "removed"
    PREPARING = "preparing"
    UNUSABLE = "unusable"
    STOPPING = "stopping"


# Nodes that still hold their parts (a draining node runs what it has, takes nothing new).
SERVING_NODE_STATES = (NodeState.UP.value, NodeState.DRAINING.value)
# Nodes that take no work yet: their pool's setup task runs, or it failed.
UNREADY_NODE_STATES = (NodeState.PREPARING.value, NodeState.UNUSABLE.value)
# Nodes a job's shape is checked against at submit (a preparing node will take work).
FITTING_NODE_STATES = (*SERVING_NODE_STATES, NodeState.PREPARING.value)


class AttemptReason(StrEnum):
    """Why an attempt ended (SPEC §4)."""

    EXIT = "exit"
    NODE_LOST = "node_lost"
    PREEMPTED = "preempted"
    WALL_CLOCK = "wall_clock"
    CANCELLED = "cancelled"
    PREPARE_FAILED = "prepare_failed"
    MOUNT_FAILED = "mount_failed"
    DEPENDENCY_FAILED = "dependency_failed"  # a job's `depends_on` condition can never hold (no attempt ran)
    EARLY_STOPPED = "early_stopped"  # a sweep point its sweep's `early_stopping` rule stopped


class SpecError(ValueError):
    """A spec was refused; `problems` names each field path and its reason.

    A translation (Batch AI files) also carries the `warnings` it had gathered by then, so a refusal
    still shows what was honoured only in part.
    """

    def __init__(self, problems: list[dict[str, str]], warnings: list[str] | None = None):
        self.problems = problems
        self.warnings = list(warnings or [])
        super().__init__("; ".join(f"{p['field']}: {p['reason']}" for p in problems))


def parse_duration_s(value: Any) -> float:
    """`90s`, `2h`, `1h30m`, `7d` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 2h, 7d or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or _DURATION_PART.sub("", text).strip():
                raise ValueError(f"{value!r} is not a duration like 90s, 2h, 7d")
            seconds = sum(float(n) * _DURATION_UNITS_S[u] for n, u in parts)
    else:
        raise ValueError("must be a duration like 90s, 2h, 7d or a number of seconds")
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


def parse_memory_bytes(value: str) -> int:
    match = _MEMORY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a memory size like 512Mi, 16Gi or 8G")
    number, unit = match.groups()
    return int(float(number) * _MEMORY_UNITS[(unit or "").lower()])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Resources(_Strict):
    gpus: int = Field(default=0, ge=0, le=64)
    cpus: float = Field(default=1.0, gt=0, le=1024)
    memory: str | None = None

    @field_validator("memory")
    @classmethod
    def _memory_is_a_size(cls, value: str | None) -> str | None:
        if value is not None:
            parse_memory_bytes(value)
        return value

    @property
    def memory_bytes(self) -> int | None:
        return parse_memory_bytes(self.memory) if self.memory else None


class DataRef(_Strict):
    """An input or output: an id (becomes TRAINYARD_INPUT_<ID>) and a storage URI."""

    id: str
    uri: str = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id_is_a_name(cls, value: str) -> str:
        if not _IO_ID.match(value):
            raise ValueError("must start with a letter and hold only letters, digits and _")
        return value


VOLUME_KINDS = ("host", "sync", "blob")
BLOB_SCHEMES = ("s3", "az")
DEFAULT_SYNC_INTERVAL_S = 30.0
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0
DOCKER_HUB = "docker.io"
DOCKER_HUB_HOSTS = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
DEFAULT_SHM_SIZE = "2g"  # Docker's 64 MiB is the classic crash of PyTorch's DataLoader workers and NCCL
# Where a volume may not be mounted: it would hide what the system (or the container) needs.
_RESERVED_MOUNT_PATHS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
    "/tmp",
)
# Host devices a container job may ask for: accelerators and fabrics, never disks or memory.
DEVICE_PREFIXES = ("/dev/infiniband", "/dev/nvidia", "/dev/dri", "/dev/kfd", "/dev/accel", "/dev/neuron")
ULIMIT_NAMES = frozenset(
    {
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)
_ULIMIT_VALUE = re.compile(r"^-?\d+(:-?\d+)?$")


class VolumeSpec(_Strict):
    """A file system the job sees at `mount_path` and as TRAINYARD_VOLUME_<NAME> (SPEC §11).

    `host`: a path already on the node (zero copy); `sync`: a store URI downloaded at the start
    and uploaded (changed files) every `sync_interval_s` and at the end; `blob`: an s3:// or
    az:// container mounted through FUSE. `volume:` names a registered volume instead of a kind.
    """

    name: str
    kind: Literal["host", "sync", "blob"] | None = None
    volume: str | None = None
    path: str | None = None
    uri: str | None = None
    mount_path: str | None = None
    read_only: bool = False
    sync_interval_s: float | None = Field(default=None, ge=1, le=86400)

    @field_validator("name")
    @classmethod
    def _name_is_an_identifier(cls, value: str) -> str:
        if not _IO_ID.match(value):
            raise ValueError("must start with a letter and hold only letters, digits and _")
        return value

    @field_validator("volume")
    @classmethod
    def _volume_is_a_slug(cls, value: str | None) -> str | None:
        if value is not None and not _SLUG.match(value):
            raise ValueError("must be the name of a registered volume (letters, digits, '.', '_', '-')")
        return value

    @field_validator("mount_path")
    @classmethod
    def _mount_path_is_safe(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or "\x00" in value or any(part == ".." for part in value.split("/")):
            raise ValueError("must be an absolute path or a path under the working directory, without '..'")
        if value.startswith("/"):
            normal = "/" + "/".join(p for p in value.split("/") if p and p != ".")
            if normal in _RESERVED_MOUNT_PATHS:
                raise ValueError(f"{normal} is a system directory; mount elsewhere (e.g. /mnt/...)")
            return normal
        return "/".join(p for p in value.split("/") if p and p != ".") or "."

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> VolumeSpec:
        if self.volume is not None:
            if self.kind is not None or self.path is not None or self.uri is not None:
                raise ValueError("a volume named by `volume:` takes its kind, path and uri from the registration")
            return self
        if self.kind is None:
            raise ValueError("needs `kind` (host, sync or blob) or `volume` (a registered volume's name)")
        problem = volume_source_problem(self.kind, self.path, self.uri)
        if problem:
            raise ValueError(problem)
        if self.sync_interval_s is not None and self.kind != "sync":
            raise ValueError("sync_interval_s applies to sync volumes only")
        if self.mount_path == ".":
            raise ValueError("mount_path may not be the working directory itself")
        return self

    @property
    def job_path(self) -> str:
        """Where the job finds it: mount_path (absolute, or under the working directory), else its name."""
        return self.mount_path or self.name


def volume_source_problem(kind: str, path: str | None, uri: str | None) -> str | None:
    """Why `path`/`uri` do not fit a volume of `kind`, or None."""
    if kind == "host":
        if uri is not None:
            return "a host volume takes `path` (a directory on the node), not `uri`"
        if not path or not path.startswith("/"):
            return "a host volume needs `path`: an absolute directory on the node"
        if any(part == ".." for part in path.split("/")):
            return "path may not contain '..'"
        return None
    if path is not None:
        return f"a {kind} volume takes `uri`, not `path`"
    if not uri:
        return f"a {kind} volume needs `uri` (" + (
            "s3://bucket/prefix or az://container/prefix)" if kind == "blob" else "file://, s3:// or az://)"
        )
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if kind == "blob" and scheme not in BLOB_SCHEMES:
        return "a blob volume mounts s3://bucket/... or az://container/... (use kind sync for other stores)"
    return None


def image_registry(image: str) -> str:
    """The registry host of an image reference, as Docker reads it (`docker.io` when the name has none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return DOCKER_HUB


class RegistryCredentials(_Strict):
    """How the node's engine logs in to pull the job's image: a user name and one of the job's secrets, by name.

    The password is never written here: `password_secret` names an entry of the job's `secrets`
    (write-only, encrypted at rest), which the node sends only as the pull's `X-Registry-Auth`
    header and keeps out of the job's environment.
    """

    username: str = Field(min_length=1, max_length=256)
    password_secret: str = Field(min_length=1, max_length=256)
    server: str | None = Field(default=None, min_length=1, max_length=256)  # default: the image's registry

    @field_validator("server")
    @classmethod
    def _bare_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", value).strip("/").lower()
        return DOCKER_HUB if host in DOCKER_HUB_HOSTS else host


class ContainerSettings(_Strict):
    """Runtime settings of the job's container (with `image:`): never privileged."""

    shm_size: str = DEFAULT_SHM_SIZE
    ipc: Literal["private", "shareable", "host"] | None = None
    ulimits: dict[str, int | str] = Field(default_factory=dict)
    devices: list[str] = Field(default_factory=list)
    registry: RegistryCredentials | None = None

    @field_validator("shm_size")
    @classmethod
    def _shm_is_a_size(cls, value: str) -> str:
        if parse_memory_bytes(value) < 2**20:
            raise ValueError("must be at least 1Mi")
        return value

    @field_validator("ulimits")
    @classmethod
    def _ulimits_known(cls, value: dict[str, int | str]) -> dict[str, int | str]:
        for name, limit in value.items():
            if name not in ULIMIT_NAMES:
                raise ValueError(f"{name!r} is not a ulimit ({', '.join(sorted(ULIMIT_NAMES))})")
            if isinstance(limit, bool) or not _ULIMIT_VALUE.match(str(limit)):
                raise ValueError(f"{name}: must be an integer (-1: unlimited) or 'soft:hard'")
        return value

    @field_validator("devices")
    @classmethod
    def _devices_allowed(cls, value: list[str]) -> list[str]:
        for device in value:
            host = device.split(":", 1)[0]
            normal = "/" + "/".join(p for p in host.split("/") if p)
            if ".." in host.split("/") or not normal.startswith(DEVICE_PREFIXES):
                raise ValueError(
                    f"{device!r}: only accelerator and fabric devices may be passed ({', '.join(DEVICE_PREFIXES)})"
                )
        return value

    @property
    def shm_size_bytes(self) -> int:
        return parse_memory_bytes(self.shm_size)


class DependencyCondition(StrEnum):
    """When a dependency is met: its target `succeeded`, `failed`, or `ended` (any terminal state).

    `cancelled` counts as `ended` only: a cancelled job neither succeeded nor failed.
    """

    SUCCEEDED = "succeeded"
    ENDED = "ended"
    FAILED = "failed"


class Dependency(_Strict):
    """One entry of `depends_on`: a job (its id, or in a batch the `name` of another job of the batch)
    or a sweep (its id, or in a batch the name of a sweep of the batch), and the condition to wait for."""

    job: str | None = Field(default=None, min_length=1, max_length=200)
    sweep: str | None = Field(default=None, min_length=1, max_length=200)
    on: DependencyCondition = DependencyCondition.SUCCEEDED

    @model_validator(mode="after")
    def _one_target(self) -> Dependency:
        if (self.job is None) == (self.sweep is None):
            raise ValueError("give exactly one of job or sweep")
        return self

    @property
    def kind(self) -> Literal["job", "sweep"]:
        return "job" if self.job is not None else "sweep"

    @property
    def target(self) -> str:
        return self.job if self.job is not None else str(self.sweep)


MAX_DEPENDENCIES = 1000
# Why an attempt ended that a `retry:` rule may name (SPEC §11). `cancelled` is the user's own
# decision and `preempted` is the scheduler's: neither is ever the job's fault to retry or cap.
RETRY_REASONS = ("wall_clock", "prepare_failed", "mount_failed", "node_lost")
MAX_RETRY_RULES = 16
MAX_RETRY_BACKOFF_S = 86400.0
_NEVER_RETRIED = {
    "cancelled": "a cancelled job is never retried",
    "preempted": "a preempted job is always queued again; a rule may not cap it",
    "exit": "name the exit codes to retry in exit_codes (max_retries covers any non-zero exit)",
}


def _retry_reason(value: str) -> str:
    if value in RETRY_REASONS:
        return value
    raise ValueError(
        _NEVER_RETRIED.get(value, f"{value!r} is not a reason a rule may retry ({', '.join(RETRY_REASONS)})")
    )


def _retry_exit_code(value: int) -> int:
    if not 1 <= value <= 255:
        raise ValueError("must be an exit code 1-255 (0 is success: never retried; signal N exits 128+N)")
    return value


def parse_backoff_s(value: Any) -> float:
    """A rule's backoff: seconds or a duration (`30s`, `2m`); 0 retries at the next scheduling pass."""
    if value in (0, "0", "0s") and not isinstance(value, bool):
        return 0.0
    seconds = parse_duration_s(value)
    if seconds > MAX_RETRY_BACKOFF_S:
        raise ValueError("must be at most 1d")
    return seconds


class RetryRule(_Strict):
    """One `retry:` rule: the attempts it matches, how many times it retries them, and how long it waits.

    An attempt matches when it ended by its own exit with one of `exit_codes`, or for one of
    `reasons`. Without `backoff` the wait is max_retries' exponential backoff.
    """

    exit_codes: list[Annotated[int, AfterValidator(_retry_exit_code)]] = Field(default_factory=list, max_length=255)
    reasons: list[Annotated[str, AfterValidator(_retry_reason)]] = Field(default_factory=list)
    max: int = Field(default=3, ge=0, le=100)
    backoff: float | None = None

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff_duration(cls, value: Any) -> float | None:
        return None if value is None else parse_backoff_s(value)

    @model_validator(mode="after")
    def _matches_something(self) -> RetryRule:
        if not self.exit_codes and not self.reasons:
            raise ValueError("a rule needs exit_codes or reasons: which attempts it retries")
        return self

    def matches(self, reason: str, exit_code: int | None) -> bool:
        if reason == "exit":
            return exit_code in self.exit_codes
        return reason in self.reasons


# Events a `notify:` target may ask for: a terminal state, or `ended` for any of them (SPEC §11).
NOTIFY_EVENTS = ("succeeded", "failed", "cancelled", "ended")
MAX_NOTIFY_TARGETS = 16


def _notify_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("a webhook URL may not carry credentials (the body is signed instead)")
    return value


def _notify_event(value: str) -> str:
    if value not in NOTIFY_EVENTS:
        raise ValueError(f"{value!r} is not an event ({', '.join(NOTIFY_EVENTS)})")
    return value


class NotifyTarget(_Strict):
    """One `notify:` entry: a webhook URL and the terminal events it is sent for."""

    url: Annotated[str, AfterValidator(_notify_url)] = Field(max_length=2000)
    events: list[Annotated[str, AfterValidator(_notify_event)]] = Field(
        default_factory=lambda: ["ended"], min_length=1, max_length=len(NOTIFY_EVENTS)
    )

    def fires_on(self, state: str) -> bool:
        return "ended" in self.events or state in self.events


def stored_notify(targets: list[NotifyTarget]) -> list[dict[str, Any]] | None:
    """`notify:` targets as a row keeps them (None: none)."""
    return [target.model_dump(mode="json") for target in targets] or None


class JobSpec(_Strict):
    """One job as a user writes it (SPEC §3)."""

    name: str = Field(min_length=1, max_length=200)
    command: str | list[str]
    workspace: str = "default"
    experiment: str = "default"
    pool: str = "default"
    launcher: Literal["process", "mpi", "horovod", "ray", "torchrun"] = "process"
    nodes: int = Field(default=1, ge=1, le=MAX_GANG_NODES)
    processes_per_node: int = Field(default=1, ge=1, le=1024)
    resources: Resources = Field(default_factory=Resources)
    priority: int = 500
    image: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)
    code: str | None = None
    inputs: list[DataRef] = Field(default_factory=list)
    outputs: list[DataRef] = Field(default_factory=list)
    prepare: str | None = None
    max_wall_clock: float = DEFAULT_MAX_WALL_CLOCK_S
    max_retries: int = Field(default=3, ge=0, le=100)
    preemptible: bool = False
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    volumes: list[VolumeSpec] = Field(default_factory=list)
    checkpoint_interval_s: float = Field(default=DEFAULT_CHECKPOINT_INTERVAL_S, ge=1, le=7 * 86400)
    container: ContainerSettings | None = None
    depends_on: list[Dependency] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)
    retry: list[RetryRule] = Field(default_factory=list, max_length=MAX_RETRY_RULES)
    notify: list[NotifyTarget] = Field(default_factory=list, max_length=MAX_NOTIFY_TARGETS)

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        if isinstance(value, list) and (not value or not value[0]):
            raise ValueError("must be a non-empty list whose first item is the program")
        return value

    @field_validator("workspace", "experiment", "pool")
    @classmethod
    def _is_slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name_or_int(cls, value: Any) -> int:
        if isinstance(value, str) and value.strip().lower() in PRIORITY_NAMES:
            return PRIORITY_NAMES[value.strip().lower()]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("must be low, normal, high or an integer 0-1000")
        try:
            number = int(value)
        except ValueError:
            raise ValueError("must be low, normal, high or an integer 0-1000") from None
        if not 0 <= number <= MAX_PRIORITY:
            raise ValueError("must be between 0 and 1000")
        return number

    @field_validator("max_wall_clock", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration_s(value)

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            problem = env_name_problem(key)
            if problem:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> JobSpec:
        for field_name in ("inputs", "outputs"):
            ids = [ref.id.upper() for ref in getattr(self, field_name)]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{field_name}: duplicate id {', '.join(dupes)}")
        clash = set(self.env) & set(self.secrets)
        if clash:
            raise ValueError(f"env and secrets both set {', '.join(sorted(clash))}")
        check_volume_clashes(self.volumes)
        if self.container is not None and self.image is None:
            raise ValueError("container settings apply to a job with `image:` only")
        self._check_registry(info)
        return self

    def _check_registry(self, info: ValidationInfo) -> None:
        registry = self.container.registry if self.container is not None else None
        if registry is None or self.image is None:
            return
        if registry.server is not None and registry.server != image_registry(self.image):
            raise ValueError(
                f"container.registry.server: {registry.server} is not the registry of image {self.image} "
                f"({image_registry(self.image)}): the credentials would go to another registry"
            )
        # A sweep's stored template is checked again with its secrets withheld (names only at submit).
        withheld = bool((info.context or {}).get("secrets_withheld"))
        if not withheld and registry.password_secret not in self.secrets:
            known = ", ".join(sorted(self.secrets)) or "none"
            raise ValueError(
                f"container.registry.password_secret: {registry.password_secret!r} names none of the job's "
                f"secrets (given: {known}); put the password in secrets under that name"
            )

    @property
    def host_paths(self) -> list[str]:
        """The host directories this job's volumes need on a node (placement asks the node for them)."""
        return sorted({os.path.normpath(str(v.path)) for v in self.volumes if v.kind == "host" and v.path})

    def stored_retry_rules(self) -> list[dict[str, Any]] | None:
        """The `retry:` rules as a job row keeps them for the scheduler (None: no rules)."""
        return [rule.model_dump(mode="json") for rule in self.retry] or None

    def public_dict(self) -> dict[str, Any]:
        """The spec as stored and shown: secrets replaced by their names only."""
        data = self.model_dump(mode="json", exclude={"secrets"})
        data["secrets"] = {key: "***" for key in self.secrets}
        return data

    def command_argv(self) -> list[str]:
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


def pull_secret_name(spec: dict[str, Any]) -> str | None:
    """The name of the secret a stored spec (a dict) uses as its registry password, or None."""
    registry = (spec.get("container") or {}).get("registry") or {}
    name = registry.get("password_secret")
    return str(name) if name else None


def env_name_problem(key: str) -> str | None:
    """Why `key` may not be an environment variable a user sets, or None."""
    if not _ENV_NAME.match(key):
        return f"{key!r} is not a valid environment variable name"
    if key.startswith("TRAINYARD_"):
        return f"{key!r}: the TRAINYARD_ prefix is reserved for trainyard"
    return None


def check_volume_clashes(volumes: list[VolumeSpec]) -> None:
    """Two volumes of one job may not share a name or a mount path (nor nest one in the other)."""
    names = [v.name.upper() for v in volumes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"volumes: duplicate name {', '.join(dupes)}")
    paths = sorted(v.job_path.rstrip("/") for v in volumes)
    for first, second in itertools.pairwise(paths):
        if second == first or second.startswith(first + "/"):
            raise ValueError(f"volumes: mount paths {first} and {second} overlap")


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("str", "list[str]", "function-after", "function-before")]
    path = ""
    for part in parts:
        if part.startswith("function-") or part.startswith("literal["):
            continue
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or "(spec)"


def problems_from(error: ValidationError) -> list[dict[str, str]]:
    """Turn pydantic's errors into `{field, reason}` pairs a user can act on."""
    problems: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for err in error.errors():
        field_path = _location(tuple(err["loc"]))
        reason = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        elif err["type"] == "missing":
            reason = "required field is missing"
        if (field_path, reason) not in seen:
            seen.add((field_path, reason))
            problems.append({"field": field_path, "reason": reason})
    return problems


def parse_job_spec(data: Any) -> JobSpec:
    """Validate a dict into a JobSpec, raising SpecError that names every problem."""
    if not isinstance(data, dict):
        raise SpecError([{"field": "(spec)", "reason": "a job spec must be a mapping of fields"}])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_from(exc)) from None


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict (not yet validated)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError([{"field": "(file)", "reason": f"not valid YAML/JSON: {exc}"}]) from None
    if not isinstance(data, dict):
        raise SpecError([{"field": "(file)", "reason": "the file must hold a mapping of fields"}])
    return data
