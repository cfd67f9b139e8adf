"""The job spec of SPEC §3 as pydantic models, plus the job and attempt state vocabulary."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRIORITY_NAMES = {"low": 250, "normal": 500, "high": 750}
MAX_PRIORITY = 1000
DEFAULT_MAX_WALL_CLOCK_S = 7 * 24 * 3600
MAX_GANG_NODES = 4096
# Launchers whose implementation has landed; others are refused at submit with 422.
AVAILABLE_LAUNCHERS = frozenset({"process", "mpi", "horovod", "ray", "torchrun"})
CONTAINERS_AVAILABLE = True
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IO_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                 "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class JobState(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.RUNNING})


class AttemptReason(StrEnum):
    """Why an attempt ended (SPEC §4)."""

    EXIT = "exit"
    NODE_LOST = "node_lost"
    PREEMPTED = "preempted"
    WALL_CLOCK = "wall_clock"
    CANCELLED = "cancelled"
    PREPARE_FAILED = "prepare_failed"


class SpecError(ValueError):
    """A spec was refused; `problems` names each field path and its reason."""

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
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
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("TRAINYARD_"):
                raise ValueError(f"{key!r}: the TRAINYARD_ prefix is reserved for trainyard")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        for field_name in ("inputs", "outputs"):
            ids = [ref.id.upper() for ref in getattr(self, field_name)]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{field_name}: duplicate id {', '.join(dupes)}")
        clash = set(self.env) & set(self.secrets)
        if clash:
            raise ValueError(f"env and secrets both set {', '.join(sorted(clash))}")
        return self

    def public_dict(self) -> dict[str, Any]:
        """The spec as stored and shown: secrets replaced by their names only."""
        data = self.model_dump(mode="json", exclude={"secrets"})
        data["secrets"] = {key: "***" for key in self.secrets}
        return data

    def command_argv(self) -> list[str]:
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


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


def unsupported_features(spec: JobSpec) -> list[dict[str, str]]:
    """Features whose issue has not landed yet: refused with 422 rather than half-run."""
    problems = []
    if spec.launcher not in AVAILABLE_LAUNCHERS:
        problems.append({"field": "launcher", "reason": f"launcher {spec.launcher!r} is not available yet"})
    if spec.image is not None and not CONTAINERS_AVAILABLE:
        problems.append({"field": "image", "reason": "containers (image:) are not available yet"})
    return problems
