"""Azure Batch AI job files (`JobCreateParameters`, API version 2018-05-01) as trainyard job specs.

Two functions make a Batch AI job run here:

- `batchai_to_spec(doc)` translates a job file into a trainyard job spec dict (which
  `trainyard.spec.parse_job_spec` accepts) plus a list of warnings, one per field that is
  honoured only in part or not at all. Fields that cannot be honoured in a way that keeps
  the job correct are refused with `SpecError`, every problem named by its field path
  relative to `properties` (e.g. `mountVolumes.azureFileShares[0]`). Nothing is dropped
  silently.
- `batchai_env(job_env)` is called by the worker when it starts a part, with the part's
  final environment (TRAINYARD_* launch values included). When that environment holds
  `AZ_BATCHAI_COMPAT` (which `batchai_to_spec` puts in the spec's `env`), it returns the
  `AZ_BATCHAI_*` variables Batch AI would have set, derived from trainyard's own, for the
  worker to add to the environment. Otherwise it returns `{}`, so the worker may call it
  for every job.

Accepted documents: the bare `properties` object (JobBaseProperties), the ARM envelope
`{"properties": {...}}`, and the `az batchai job create -f` file
`{"$schema": ".../2018-05-01/job.json", "properties": {...}}`.

Field by field (paths relative to `properties`):

- `nodeCount` → `nodes`. Required by Batch AI; when missing: 1 node and a warning.
- `schedulingPriority` → `priority` (low / normal / high, any case).
- `cluster` → `pool` (the id's last segment); the `pool=` argument (--pool) overrides.
- `mountVolumes.<kind>[i]` (azureFileShares, azureBlobFileSystems, fileServers,
  unmanagedFileSystems) → a volume at `$AZ_BATCHAI_JOB_MOUNT_ROOT/<relativeMountPath>`
  (mount_path `.batchai/jobmounts/<rel>`), its source from `volumes=` (--volume KEY=TARGET, see
  `parse_volume_target`); a mount no key names is refused. Paths under `$AZ_BATCHAI_MOUNT_ROOT/<x>`
  are the pool's volumes (mount_path `.batchai/mounts/<x>`), or job volumes when `volumes` names x.
  `nodeSetup` (a cluster setting) → refused.
- `containerSettings.imageSourceRegistry.image` → `image`; `serverUrl` is put in front of
  the image name unless it is Docker Hub or already there (warning). `credentials`
  {username, password} → `container.registry` {username, server: the image's registry,
  password_secret: AZ_BATCHAI_REGISTRY_PASSWORD}, the literal password stored at submit as that
  job secret (write-only, encrypted at rest, never shown; the node sends it only as the pull's
  X-Registry-Auth and keeps it out of the job's environment), with a warning that says so.
  `credentials.passwordSecretReference` (Azure Key Vault) → refused, as for `secrets`.
  `shmSize` → container.shm_size.
- Tool settings (exactly one) → `command`, `launcher`, `processes_per_node`. `processCount`
  (default nodeCount) must be a multiple of nodeCount: processes_per_node = processCount /
  nodeCount. Python tools run `<pythonInterpreterPath or python> <pythonScriptFilePath>
  <commandLineArgs>`.
  - `customToolkitSettings.commandLine` → launcher `process` on one node; on several, launcher
    `mpi` with AZ_BATCHAI_OWN_MPIRUN: the first node runs the command line itself (its own
    mpirun reaches the others through the rsh agent), `slots` processes per node.
  - `customMpiSettings` → launcher `mpi`, the command line as is.
  - `horovodSettings` → launcher `horovod`.
  - `pyTorchSettings` → launcher `torchrun` when nodeCount > 1 or processCount > 1, else
    `process` (where the node has no torchrun, the launcher starts one process per rank
    itself; with several per node each gets AZ_BATCHAI_TASK_INDEX = its RANK).
    `communicationBackend` gloo or nccl (any case; default gloo) → env `AZ_BATCHAI_PYTORCH_BACKEND`;
    TCP (gone since PyTorch 1.0) and MPI are refused.
  - `tensorFlowSettings` → launcher `process`, one task per node: the first node runs
    `masterCommandLineArgs`, the others `workerCommandLineArgs` (the master's when absent).
    A parameter-server layout (`parameterServerCount`, `workerCount`) runs every task with
    TF_CONFIG, AZ_BATCHAI_PS_HOSTS and AZ_BATCHAI_WORKER_HOSTS (`_tensorflow_layout`).
  - `chainerSettings`, `cntkSettings`, `caffeSettings` → launcher `mpi` when processCount > 1,
    else `process`. CNTK BrainScript runs `cntk configFile=<configFilePath> <args>`; Caffe
    with a config file runs `caffe train --solver=<configFilePath> <args>`.
  - `caffe2Settings` → launcher `process`: the script runs once on every node.
- `jobPreparation.commandLine` → in front of the command, once per container, for a container
  job (Batch AI ran it in the job's container); else `prepare` (every node, before the command).
- `inputDirectories[i]` {id, path} → `inputs[i]` {id, uri}. The path must be a storage URI
  (file://, s3://, az://) or an absolute path (taken as file://). A path under
  `$AZ_BATCHAI_MOUNT_ROOT` / `$AZ_BATCHAI_JOB_MOUNT_ROOT` (an Azure mount), with any other
  variable, or relative, is refused.
- `outputDirectories[i]` {id, pathPrefix, pathSuffix} → `outputs[i]` {id, uri}, uri =
  `<pathPrefix>/<job name>/<pathSuffix>`: the job name plays the part of Batch AI's per-job
  path segment. The prefix follows the rules of input paths.
- `environmentVariables[i]` → `env`; `$AZ_BATCHAI_*` references in values are expanded at
  launch by `batchai_env`, as Batch AI did.
- `secrets[i].value` → `secrets`; `secrets[i].valueSecretReference` (Key Vault) → refused.
- `constraints.maxWallClockTime` → `max_wall_clock` in seconds: ISO 8601 (`P7D`, `PT1H30M`)
  or .NET TimeSpan (`7.00:00:00`, how Batch AI wrote its default); years, months refused.
- `stdOutErrPathPrefix` → env `AZ_BATCHAI_STDOUTERR_PREFIX` and a warning: stdout and
  stderr go to trainyard's log store (`trainyard job logs`); the prefix is the base of
  `AZ_BATCHAI_STDOUTERR_DIR`, a directory on the node.
- Read-only fields of a job Azure returned (`toolType`, `executionState`, ...) and unknown
  fields → warning, ignored.

Also set: `max_retries: 0` (Batch AI did not rerun a job that exited non-zero; node loss
still requeues), `env.AZ_BATCHAI_COMPAT = "2018-05-01"`, and `resources.gpus` only when
`gpus=` is given (Batch AI gave a job every GPU of its VMs; trainyard gives only what
`resources.gpus` asks for, so a warning says so when it is not given).

Command lines are strings run by `/bin/sh -c`, as Batch AI ran them in a shell, so
`$AZ_BATCHAI_INPUT_X` and the like in script paths and arguments keep working. References
to `AZ_BATCHAI_*` variables that trainyard does not set (`AZ_BATCHAI_SHARED_JOB_TEMP`,
`AZ_BATCHAI_PS_HOSTS`, `AZ_BATCHAI_WORKER_HOSTS`, an input id that is not declared...) and
to the mount roots (empty directories here) are warned about by name.

What `batchai_env` derives, with scratch = `scratch_dir`, else
`$TMPDIR/trainyard-batchai/<job id>/<attempt>/node-<rank>`:

- `AZ_BATCHAI_INPUT_<ID>` / `AZ_BATCHAI_OUTPUT_<ID>` ← `TRAINYARD_INPUT_<ID>` /
  `TRAINYARD_OUTPUT_<ID>` (given `spec=`, also under the id as written in the job file);
- `AZ_BATCHAI_MPI_HOST_FILE` ← `TRAINYARD_HOSTFILE`;
- `AZ_BATCHAI_NUM_GPUS` ← the number of devices in `CUDA_VISIBLE_DEVICES`;
- `AZ_BATCHAI_TASK_INDEX` ← `RANK` (the process's global rank), else `TRAINYARD_NODE_RANK`;
- `AZ_BATCHAI_JOB_TEMP` ← `<scratch>/temp`;
- `AZ_BATCHAI_JOB_MOUNT_ROOT`, `AZ_BATCHAI_MOUNT_ROOT` ← `<scratch>/mounts` (empty);
- `AZ_BATCHAI_STDOUTERR_DIR` ← `<AZ_BATCHAI_STDOUTERR_PREFIX expanded>/<job id>/<attempt>/
  stdouterr` when that is an absolute path, else `<scratch>/stdouterr`;
- `AZ_BATCHAI_PYTORCH_INIT_METHOD` ← `tcp://$MASTER_ADDR:$MASTER_PORT`.

The caller creates the directories named by `LOCAL_DIR_VARIABLES` before starting the part.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import shlex
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard.spec import (
    _SLUG,
    DOCKER_HUB_HOSTS,
    MAX_GANG_NODES,
    JobSpec,
    SpecError,
    image_registry,
    parse_job_spec,
    parse_memory_bytes,
)
from trainyard.storage_adapters import REGISTRY as _STORAGE_REGISTRY

API_VERSION = "2018-05-01"
COMPAT_VAR = "AZ_BATCHAI_COMPAT"
STDOUTERR_PREFIX_VAR = "AZ_BATCHAI_STDOUTERR_PREFIX"
PYTORCH_BACKEND_VAR = "AZ_BATCHAI_PYTORCH_BACKEND"
DEFAULT_NAME = "batchai-job"
DEFAULT_INTERPRETER = "python"

INPUT_PREFIX = "AZ_BATCHAI_INPUT_"
OUTPUT_PREFIX = "AZ_BATCHAI_OUTPUT_"
MPI_HOST_FILE = "AZ_BATCHAI_MPI_HOST_FILE"
NUM_GPUS = "AZ_BATCHAI_NUM_GPUS"
TASK_INDEX = "AZ_BATCHAI_TASK_INDEX"
JOB_TEMP = "AZ_BATCHAI_JOB_TEMP"
STDOUTERR_DIR = "AZ_BATCHAI_STDOUTERR_DIR"
JOB_MOUNT_ROOT = "AZ_BATCHAI_JOB_MOUNT_ROOT"
MOUNT_ROOT = "AZ_BATCHAI_MOUNT_ROOT"
PYTORCH_INIT_METHOD = "AZ_BATCHAI_PYTORCH_INIT_METHOD"
JOB_TEMP_DIR = "AZ_BATCHAI_JOB_TEMP_DIR"
SHARED_JOB_TEMP = "AZ_BATCHAI_SHARED_JOB_TEMP"
HOST_LIST = "AZ_BATCH_HOST_LIST"
PS_HOSTS = "AZ_BATCHAI_PS_HOSTS"
WORKER_HOSTS = "AZ_BATCHAI_WORKER_HOSTS"
# Read by the mpi launcher: node rank 0 runs the job's command itself (it calls mpirun), with
# trainyard's rsh agent in OMPI_MCA_plm_rsh_agent; the other nodes host what that mpirun spawns.
OWN_MPIRUN_VAR = "AZ_BATCHAI_OWN_MPIRUN"
# Set by the translation of a parameter-server layout: "<parameter servers>,<workers>".
TF_LAYOUT_VAR = "AZ_BATCHAI_TF_LAYOUT"
TF_CLUSTER_VAR = "AZ_BATCHAI_TF_CLUSTER"
# The job secret that holds imageSourceRegistry.credentials.password (container.registry.password_secret).
REGISTRY_PASSWORD_SECRET = "AZ_BATCHAI_REGISTRY_PASSWORD"

# The part's Batch AI directory is `<working directory>/.batchai` (the worker passes it as
# scratch_dir); job mounts (mountVolumes) are volumes whose mount_path lies under it.
SCRATCH_NAME = ".batchai"
JOB_MOUNTS_DIR = "jobmounts"
CLUSTER_MOUNTS_DIR = "mounts"
SHARED_TEMP_DIR = "sharedtemp"
HOSTFILE_NAME = "hostfile"
# The --volume key naming the storage behind $AZ_BATCHAI_SHARED_JOB_TEMP (seen by every node).
SHARED_TEMP_KEY = "SHARED_JOB_TEMP"

# Set by batchai_env at launch (besides the per-id input/output variables).
DERIVED_VARIABLES = (
    MPI_HOST_FILE,
    NUM_GPUS,
    TASK_INDEX,
    JOB_TEMP,
    JOB_TEMP_DIR,
    SHARED_JOB_TEMP,
    STDOUTERR_DIR,
    JOB_MOUNT_ROOT,
    MOUNT_ROOT,
    PYTORCH_INIT_METHOD,
    HOST_LIST,
)
# Directories batchai_env names; the worker creates them before it starts the part.
LOCAL_DIR_VARIABLES = (JOB_TEMP, JOB_MOUNT_ROOT, MOUNT_ROOT, STDOUTERR_DIR, SHARED_JOB_TEMP)
_RESERVED_ENV = frozenset(
    {
        COMPAT_VAR,
        STDOUTERR_PREFIX_VAR,
        PYTORCH_BACKEND_VAR,
        OWN_MPIRUN_VAR,
        REGISTRY_PASSWORD_SECRET,
        TF_LAYOUT_VAR,
        TF_CLUSTER_VAR,
        PS_HOSTS,
        WORKER_HOSTS,
        *DERIVED_VARIABLES,
    }
)

# The same rules as trainyard.spec applies, checked here to name the Batch AI field.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IO_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_VAR_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ARM_EXPRESSION = re.compile(r"^\[.*\]$", re.DOTALL)
_ISO_DURATION = re.compile(
    r"^P(?!$)(?:(?P<Y>\d+(?:[.,]\d+)?)Y)?(?:(?P<M>\d+(?:[.,]\d+)?)M)?(?:(?P<W>\d+(?:[.,]\d+)?)W)?"
    r"(?:(?P<D>\d+(?:[.,]\d+)?)D)?(?:T(?=\d)(?:(?P<h>\d+(?:[.,]\d+)?)H)?(?:(?P<m>\d+(?:[.,]\d+)?)M)?"
    r"(?:(?P<s>\d+(?:[.,]\d+)?)S)?)?$"
)
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2})(?:\.(?P<f>\d{1,7}))?)?$")
# How `az batchai job show` printed a TimeSpan (Python's timedelta): "7 days, 0:00:00", "1 day, 1:30:00".
_PRINTED_TIMESPAN = re.compile(
    r"^(?:(?P<d>\d+) days?, )?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.(?P<f>\d{1,7}))?$"
)

_PYTHON_FIELDS = frozenset({"pythonScriptFilePath", "pythonInterpreterPath", "commandLineArgs"})
TOOL_SETTINGS: dict[str, frozenset[str]] = {
    "customToolkitSettings": frozenset({"commandLine"}),
    "customMpiSettings": frozenset({"commandLine", "processCount"}),
    "horovodSettings": _PYTHON_FIELDS | {"processCount"},
    "pyTorchSettings": _PYTHON_FIELDS | {"processCount", "communicationBackend"},
    "tensorFlowSettings": frozenset(
        {
            "pythonScriptFilePath",
            "pythonInterpreterPath",
            "masterCommandLineArgs",
            "workerCommandLineArgs",
            "parameterServerCommandLineArgs",
            "workerCount",
            "parameterServerCount",
        }
    ),
    "chainerSettings": _PYTHON_FIELDS | {"processCount"},
    "cntkSettings": _PYTHON_FIELDS | {"languageType", "configFilePath", "processCount"},
    "caffe2Settings": _PYTHON_FIELDS,
    "caffeSettings": _PYTHON_FIELDS | {"configFilePath", "processCount"},
}
PROPERTY_FIELDS = frozenset(
    {
        "schedulingPriority",
        "cluster",
        "mountVolumes",
        "nodeCount",
        "containerSettings",
        "jobPreparation",
        "stdOutErrPathPrefix",
        "inputDirectories",
        "outputDirectories",
        "environmentVariables",
        "secrets",
        "constraints",
        *TOOL_SETTINGS,
    }
)
# Fields of a job as Azure returned it (GET), not of a job to create.
READ_ONLY_FIELDS = frozenset(
    {
        "toolType",
        "jobOutputDirectoryPathSegment",
        "creationTime",
        "provisioningState",
        "provisioningStateTransitionTime",
        "executionState",
        "executionStateTransitionTime",
        "executionInfo",
    }
)
ENVELOPE_FIELDS = frozenset({"$schema", "properties", "name", "type", "apiVersion", "id"})
MOUNT_KINDS = ("azureFileShares", "azureBlobFileSystems", "fileServers", "unmanagedFileSystems")
PYTORCH_BACKENDS = {"gloo", "nccl"}


class _Reader:
    """Reads a JSON object field by field, collecting problems (refusals) and warnings by path."""

    def __init__(self) -> None:
        self.problems: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.shell_texts: list[tuple[str, str]] = []  # (path, text) the shell will expand
        self.path_texts: list[tuple[str, str]] = []  # input/output paths under the mount roots
        self.mapping: Mapping[str, str] = {}  # --volume KEY=TARGET
        self.job_mounts: list[str] = []  # relativeMountPaths under $AZ_BATCHAI_JOB_MOUNT_ROOT
        self.cluster_mounts: list[str] = []  # ... under $AZ_BATCHAI_MOUNT_ROOT
        self.mount_env: dict[str, str] = {}  # AZ_BATCHAI_INPUT_/OUTPUT_<ID> of directories on mounts
        self.schema = "JobCreateParameters"  # named in the warning about unknown fields

    def refuse(self, path: str, reason: str) -> None:
        self.problems.append({"field": path or "(properties)", "reason": reason})

    def warn(self, path: str, message: str) -> None:
        text = f"{path}: {message}" if path else message
        if text not in self.warnings:
            self.warnings.append(text)

    def unknown(self, obj: Mapping[str, Any], known: frozenset[str], path: str) -> None:
        for key in obj:
            if key not in known:
                self.warn(_join(path, key), f"not a field of Batch AI 2018-05-01 {self.schema}; ignored")

    def obj(self, parent: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.refuse(_join(path, key), _type_reason(value, "an object"))
            return None
        return value

    def array(self, parent: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.refuse(_join(path, key), _type_reason(value, "a list"))
            return []
        return value

    def string(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        *,
        required: bool = False,
        shell: bool = False,
        allow_empty: bool = False,
    ) -> str | None:
        where = _join(path, key)
        value = parent.get(key)
        if value is None:
            if required:
                self.refuse(where, "required field is missing")
            return None
        if not isinstance(value, str):
            self.refuse(where, _type_reason(value, "a string"))
            return None
        if not value.strip() and not allow_empty:
            if required:
                self.refuse(where, "must not be empty")
            return None
        if shell:
            self.shell_texts.append((where, value))
        return value

    def integer(self, parent: Mapping[str, Any], key: str, path: str, *, minimum: int = 1) -> int | None:
        where = _join(path, key)
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.refuse(where, _type_reason(value, "an integer"))
            return None
        if value < minimum:
            self.refuse(where, f"must be at least {minimum}")
            return None
        return value


@dataclass
class _Launch:
    command: str
    launcher: str = "process"
    processes_per_node: int = 1
    env: dict[str, str] = field(default_factory=dict)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_reason(value: Any, expected: str) -> str:
    if isinstance(value, str) and _ARM_EXPRESSION.match(value.strip()):
        return f"ARM template expressions like {value!r} are not evaluated; write the value itself"
    return f"must be {expected}, not {type(value).__name__}"


def _words(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


# ---------------------------------------------------------------------------------------------
# Durations


def parse_iso8601_duration(text: str) -> float:
    """`P7D`, `PT1H30M`, `P1DT12H`, `PT0.5S`, `P2W` (ISO 8601), `7.00:00:00`, `01:30:00`
    (.NET TimeSpan, as Batch AI wrote its default) or `7 days, 0:00:00`, `1:30:00` (as
    `az batchai job show` printed it) → seconds. Years and months are refused:
    they have no fixed length. Raises ValueError."""
    value = text.strip()
    iso = _ISO_DURATION.match(value.upper())
    if iso:
        parts = {k: float(v.replace(",", ".")) for k, v in iso.groupdict().items() if v is not None}
        if parts.get("Y") or parts.get("M"):
            raise ValueError(f"{text!r}: years and months have no fixed length; give days (e.g. P30D)")
        seconds = (
            parts.get("W", 0) * 604800
            + parts.get("D", 0) * 86400
            + parts.get("h", 0) * 3600
            + parts.get("m", 0) * 60
            + parts.get("s", 0)
        )
    else:
        span = _TIMESPAN.match(value) or _PRINTED_TIMESPAN.match(value)
        if not span or int(span["h"]) > 23 or int(span["m"]) > 59 or int(span["s"] or 0) > 59:
            raise ValueError(f"{text!r} is not an ISO 8601 duration like PT1H30M or P7D")
        seconds = (
            int(span["d"] or 0) * 86400
            + int(span["h"]) * 3600
            + int(span["m"]) * 60
            + int(span["s"] or 0)
            + float(f"0.{span['f'] or 0}")
        )
    if seconds <= 0:
        raise ValueError(f"{text!r}: must be longer than zero")
    return seconds


# ---------------------------------------------------------------------------------------------
# The document and its envelope


def unwrap_envelope(
    doc: Any,
    r: _Reader,
    resource: str,
    property_fields: frozenset[str],
    envelope_fields: frozenset[str],
    check_api_version: bool = True,
) -> tuple[dict[str, Any], str | None]:
    """The properties object of an ARM envelope (`{$schema, name, type, properties}`, or the bare
    properties) and the name the envelope gives the `resource` (its last path segment), if any."""
    if not isinstance(doc, dict):
        raise SpecError([{"field": "(file)", "reason": f"a Batch AI {resource} file must hold a JSON object"}])
    inner = doc.get("properties")
    if not isinstance(inner, dict) or set(doc) & property_fields:
        return {k: v for k, v in doc.items() if k != "$schema"}, None
    r.unknown(doc, envelope_fields, "")
    schema = doc.get("$schema")
    if isinstance(schema, str) and API_VERSION not in schema:
        r.warn("$schema", f"{schema!r} is not the {API_VERSION} schema; read as {API_VERSION}")
    version = doc.get("apiVersion")
    if check_api_version and version is not None and version != API_VERSION:
        r.warn("apiVersion", f"{version!r} is not {API_VERSION}; read as {API_VERSION}")
    kind = doc.get("type")
    if isinstance(kind, str) and not kind.lower().endswith(f"{resource}s"):
        r.warn("type", f"{kind!r} is not a Batch AI {resource} resource type; read as a {resource}")
    name = doc.get("name")
    if isinstance(name, str) and name.strip():
        return inner, name.strip().rstrip("/").rsplit("/", 1)[-1]
    return inner, None


def _unwrap(doc: Any, r: _Reader) -> tuple[dict[str, Any], str | None]:
    """The properties object and the name the envelope gives the job, if any."""
    return unwrap_envelope(doc, r, "job", PROPERTY_FIELDS, ENVELOPE_FIELDS)


def envelope_name(doc: Any) -> str | None:
    """The job name an ARM envelope gives (`ws/experiment/job` → `job`), if any."""
    return _unwrap(doc, _Reader())[1] if isinstance(doc, dict) else None


# ---------------------------------------------------------------------------------------------
# Tool settings


def _processes_per_node(r: _Reader, settings: dict[str, Any], path: str, nodes: int) -> int:
    count = r.integer(settings, "processCount", path)
    if count is None:
        return 1  # Batch AI's default: processCount = nodeCount
    if count % nodes:
        r.refuse(
            _join(path, "processCount"),
            f"{count} processes cannot be spread evenly over nodeCount {nodes}: trainyard runs the same "
            f"number of processes on every node; use a multiple of {nodes}",
        )
        return 1
    return count // nodes


def _python_command(r: _Reader, s: dict[str, Any], path: str, args_key: str = "commandLineArgs") -> str:
    script = r.string(s, "pythonScriptFilePath", path, required=True, shell=True)
    interpreter = r.string(s, "pythonInterpreterPath", path, shell=True) or DEFAULT_INTERPRETER
    args = r.string(s, args_key, path, shell=True)
    return _words(interpreter, script, args)


def _custom_toolkit(r: _Reader, s: dict[str, Any], path: str, nodes: int, slots: int = 1) -> _Launch:
    command = r.string(s, "commandLine", path, required=True, shell=True) or ""
    if nodes == 1:
        return _Launch(command)
    r.warn(
        path,
        f"Batch AI ran this command line on the first node only, and so does trainyard; the other "
        f"{nodes - 1} node(s) are listed in $AZ_BATCHAI_MPI_HOST_FILE ({slots} slot(s) each) and "
        "$AZ_BATCH_HOST_LIST, and host what the command's own mpirun starts there (Open MPI through "
        "trainyard's rsh agent in OMPI_MCA_plm_rsh_agent; Intel MPI and MPICH through their rsh "
        "bootstrap variables); no ssh",
    )
    return _Launch(command, "mpi", slots, {OWN_MPIRUN_VAR: "1"})


def _custom_mpi(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    command = r.string(s, "commandLine", path, required=True, shell=True) or ""
    return _Launch(command, "mpi", _processes_per_node(r, s, path, nodes))


def _horovod(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    return _Launch(_python_command(r, s, path), "horovod", _processes_per_node(r, s, path, nodes))


def _pytorch(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    command = _python_command(r, s, path)
    per_node = _processes_per_node(r, s, path, nodes)
    backend = r.string(s, "communicationBackend", path) or "gloo"
    if backend.lower() not in PYTORCH_BACKENDS:
        why = {
            "tcp": "the TCP backend was removed from PyTorch in 1.0",
            "mpi": "the MPI backend needs a PyTorch built with MPI; trainyard launches PyTorch with torchrun",
        }.get(backend.lower(), "not a PyTorch backend trainyard supports")
        r.refuse(_join(path, "communicationBackend"), f"{backend!r}: {why}; use gloo or nccl")
    launcher = "torchrun" if nodes > 1 or per_node > 1 else "process"
    if per_node > 1:
        # batchai_env sets the node's task index; each of torchrun's workers is a task of its own.
        command = f'{TASK_INDEX}="${{RANK:-0}}"; export {TASK_INDEX}\n{command}'
    return _Launch(command, launcher, per_node, {PYTORCH_BACKEND_VAR: backend.lower()})


def _tensorflow(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    master = _python_command(r, s, path, "masterCommandLineArgs")
    worker_args = r.string(s, "workerCommandLineArgs", path, shell=True)
    worker = _python_command(_Reader(), s, path, "workerCommandLineArgs") if worker_args else master
    ps_args = r.string(s, "parameterServerCommandLineArgs", path, shell=True)
    ps_count = r.integer(s, "parameterServerCount", path, minimum=0)
    workers = r.integer(s, "workerCount", path)
    if ps_args or ps_count or (workers is not None and workers != nodes):
        return _tensorflow_layout(r, s, path, nodes, (master, worker, ps_args), ps_count, workers)
    if nodes > 1 and worker != master:
        command = f'if [ "${{TRAINYARD_NODE_RANK:-0}}" = 0 ]; then\n{master}\nelse\n{worker}\nfi'
        return _Launch(command)
    if nodes == 1 and worker_args:
        r.warn(_join(path, "workerCommandLineArgs"), "not used: with nodeCount 1 only the master task runs")
    return _Launch(master)


_TF_CONFIG_LINE = r'  export TF_CONFIG="{\"cluster\":$AZ_BATCHAI_TF_CLUSTER,\"task\":{\"type\":\"$1\",\"index\":$2}}"'


def _tensorflow_layout(
    r: _Reader,
    s: dict[str, Any],
    path: str,
    nodes: int,
    commands: tuple[str, str, str | None],
    ps_count: int | None,
    workers: int | None,
) -> _Launch:
    """Batch AI's parameter-server layout: `workerCount` workers and `parameterServerCount` parameter
    servers, task i of each kind on node i % nodeCount, each with its AZ_BATCHAI_TASK_INDEX and
    TF_CONFIG; AZ_BATCHAI_PS_HOSTS and AZ_BATCHAI_WORKER_HOSTS list them all. A node's part ends
    when its workers have ended (its parameter servers are then stopped)."""
    master, worker, ps_args = commands
    workers = workers if workers is not None else nodes
    ps_count = ps_count if ps_count is not None else (1 if ps_args else 0)
    if workers < nodes:
        r.refuse(
            _join(path, "workerCount"),
            f"{workers} workers on {nodes} nodes: a node would run only "
            "parameter servers, which never end; use workerCount >= nodeCount",
        )
    if ps_count and not ps_args:
        r.refuse(_join(path, "parameterServerCommandLineArgs"), f"required with parameterServerCount {ps_count}")
    ps = _words(s.get("pythonInterpreterPath") or DEFAULT_INTERPRETER, s.get("pythonScriptFilePath"), ps_args)
    q = shlex.quote
    command = "\n".join(
        [
            '_bai_task() { ( export AZ_BATCHAI_TASK_INDEX="$2"',
            _TF_CONFIG_LINE,
            '  exec /bin/sh -c "$3" ) & }',
            "_bai_n=${TRAINYARD_NUM_NODES:-1}; _bai_r=${TRAINYARD_NODE_RANK:-0}; _bai_w=; _bai_p=; _bai_rc=0",
            f"_bai_i=0; while [ $_bai_i -lt {workers} ]; do",
            '  if [ $((_bai_i % _bai_n)) = "$_bai_r" ]; then',
            f"    if [ $_bai_i = 0 ]; then _bai_task worker 0 {q(master)};"
            f" else _bai_task worker $_bai_i {q(worker)}; fi",
            '    _bai_w="$_bai_w $!"',
            "  fi; _bai_i=$((_bai_i + 1)); done",
            f"_bai_i=0; while [ $_bai_i -lt {ps_count} ]; do",
            '  if [ $((_bai_i % _bai_n)) = "$_bai_r" ]; then',
            f'    _bai_task ps $_bai_i {q(ps)}; _bai_p="$_bai_p $!"',
            "  fi; _bai_i=$((_bai_i + 1)); done",
            "for _bai_pid in $_bai_w; do wait $_bai_pid || _bai_rc=$?; done",
            '[ -z "$_bai_p" ] || kill $_bai_p 2>/dev/null',
            "exit $_bai_rc",
        ]
    )
    r.warn(
        path,
        f"parameter-server layout: {workers} worker(s) and {ps_count} parameter server(s) over "
        f"{nodes} node(s), task i of each kind on node i % {nodes}, with TF_CONFIG, "
        "AZ_BATCHAI_TASK_INDEX, AZ_BATCHAI_PS_HOSTS and AZ_BATCHAI_WORKER_HOSTS",
    )
    return _Launch(command, env={TF_LAYOUT_VAR: f"{ps_count},{workers}"})


def _mpi_or_process(command: str, nodes: int, per_node: int) -> _Launch:
    """MPI-based toolkits: under mpirun when there is more than one process, else a plain process."""
    return _Launch(command, "mpi" if nodes * per_node > 1 else "process", per_node)


def _chainer(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    return _mpi_or_process(_python_command(r, s, path), nodes, _processes_per_node(r, s, path, nodes))


def _cntk(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    config = r.string(s, "configFilePath", path, shell=True)
    script = s.get("pythonScriptFilePath")
    language = r.string(s, "languageType", path) or ("BrainScript" if config and not script else "Python")
    per_node = _processes_per_node(r, s, path, nodes)
    if language.lower() == "brainscript":
        for key in ("pythonScriptFilePath", "pythonInterpreterPath"):
            if key in s:
                r.refuse(_join(path, key), "can be given only when languageType is Python")
        if config is None:
            r.refuse(_join(path, "configFilePath"), "required when languageType is BrainScript")
        args = r.string(s, "commandLineArgs", path, shell=True)
        return _mpi_or_process(_words("cntk", f"configFile={config}", args), nodes, per_node)
    if language.lower() != "python":
        r.refuse(_join(path, "languageType"), f"{language!r}: must be BrainScript or Python")
    elif config is not None:
        r.refuse(_join(path, "configFilePath"), "can be given only when languageType is BrainScript")
    return _mpi_or_process(_python_command(r, s, path), nodes, per_node)


def _caffe(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    config = r.string(s, "configFilePath", path, shell=True)
    per_node = _processes_per_node(r, s, path, nodes)
    if config is None:
        if "pythonScriptFilePath" not in s:
            r.refuse(path, "one of configFilePath or pythonScriptFilePath is required")
            return _Launch("")
        return _mpi_or_process(_python_command(r, s, path), nodes, per_node)
    for key in ("pythonScriptFilePath", "pythonInterpreterPath"):
        if key in s:
            r.refuse(_join(path, key), "cannot be given together with configFilePath")
    args = r.string(s, "commandLineArgs", path, shell=True)
    return _mpi_or_process(_words("caffe train", f"--solver={config}", args), nodes, per_node)


def _caffe2(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    return _Launch(_python_command(r, s, path))


_TOOLS: dict[str, Callable[[_Reader, dict[str, Any], str, int], _Launch]] = {  # customToolkit: see _tool
    "customMpiSettings": _custom_mpi,
    "horovodSettings": _horovod,
    "pyTorchSettings": _pytorch,
    "tensorFlowSettings": _tensorflow,
    "chainerSettings": _chainer,
    "cntkSettings": _cntk,
    "caffe2Settings": _caffe2,
    "caffeSettings": _caffe,
}


def _tool(r: _Reader, props: dict[str, Any], nodes: int, slots: int | None) -> _Launch | None:
    given = [key for key in TOOL_SETTINGS if props.get(key) is not None]
    if not given:
        r.refuse("", f"one of {', '.join(TOOL_SETTINGS)} is required")
        return None
    for extra in given[1:]:
        r.refuse(extra, f"only one tool's settings may be given; {given[0]} is given too")
    key = given[0]
    settings = r.obj(props, key, "")
    if settings is None:
        return None
    r.unknown(settings, TOOL_SETTINGS[key], key)
    if key == "customToolkitSettings":
        return _custom_toolkit(r, settings, key, nodes, slots or 1)
    return _TOOLS[key](r, settings, key, nodes)


# ---------------------------------------------------------------------------------------------
# Everything else


def _node_count(r: _Reader, props: dict[str, Any]) -> int:
    if "nodeCount" not in props:
        r.warn("nodeCount", "missing (Batch AI requires it); the job runs on 1 node")
        return 1
    nodes = r.integer(props, "nodeCount", "")
    if nodes is not None and nodes > MAX_GANG_NODES:
        r.refuse("nodeCount", f"at most {MAX_GANG_NODES} nodes")
        return 1
    return nodes or 1


def _priority(r: _Reader, props: dict[str, Any]) -> str:
    value = r.string(props, "schedulingPriority", "")
    if value is None:
        return "normal"
    if value.strip().lower() not in ("low", "normal", "high"):
        r.refuse("schedulingPriority", f"{value!r}: must be low, normal or high")
        return "normal"
    return value.strip().lower()


def _cluster(r: _Reader, props: dict[str, Any]) -> str | None:
    """The trainyard pool named after the job's cluster (`.../clusters/<name>` → `<name>`)."""
    cluster = r.obj(props, "cluster", "")
    if props.get("nodeSetup") is not None:
        r.refuse(
            "nodeSetup",
            "a cluster setting (setup task, mounts), not a job field: translate the cluster "
            "file with trainyard pool create --format batchai, or use jobPreparation",
        )
    if cluster is None:
        return None
    r.unknown(cluster, frozenset({"id"}), "cluster")
    ident = r.string(cluster, "id", "cluster")
    if ident is None:
        return None
    pool = ident.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    if not _SLUG.match(pool):
        r.refuse("cluster.id", f"{ident!r}: its last segment is not a pool name (letters, digits, '.', '_', '-')")
        return None
    return pool


def parse_volume_target(text: str) -> dict[str, Any]:
    """What a `--volume KEY=TARGET` gives a Batch AI mount: a trainyard volume's source.

    `volume:NAME` (a registered volume), `host:/path` or `/path` or `file:///path` (a directory
    on the nodes), `sync:URI` (copied in, changes put back: any store), `blob:URI` or a bare
    `az://` / `s3://` URI (FUSE mount). Raises ValueError.
    """
    value = text.strip()
    kind, _, rest = value.partition(":")
    if kind == "volume":
        if not _SLUG.match(rest):
            raise ValueError(f"{text!r}: volume:NAME names a registered volume")
        return {"volume": rest}
    if kind in ("host", "sync", "blob") and rest and not rest.startswith("//"):
        source = rest
    else:
        kind, source = "", value
    if source.startswith("file://"):
        if kind == "sync":
            return {"kind": "sync", "uri": source}
        source = source.removeprefix("file://")
    if not kind:
        scheme = _URI_SCHEME.match(source)
        kind = "blob" if scheme and scheme.group(1).lower() in ("az", "s3") else "host" if not scheme else ""
        if not kind:
            raise ValueError(f"{text!r}: give volume:NAME, host:/path, sync:URI, blob:URI or an az:// / s3:// URI")
    if kind == "host":
        if not source.startswith("/") or ".." in source.split("/"):
            raise ValueError(f"{text!r}: a host directory is an absolute path without '..'")
        return {"kind": "host", "path": source}
    return {"kind": kind, "uri": source}


def _volume_name(prefix: str, rel: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", rel).strip("_") or "root"
    return f"{prefix}_{cleaned}"[:63]


def _relative_mount_path(r: _Reader, item: dict[str, Any], path: str) -> str | None:
    rel = r.string(item, "relativeMountPath", path, required=True)
    if rel is None:
        return None
    parts = [p for p in rel.strip().split("/") if p and p != "."]
    if not parts or rel.strip().startswith("/") or ".." in parts or "$" in rel:
        r.refuse(f"{path}.relativeMountPath", f"{rel!r}: must be a relative path without '..' or variables")
        return None
    return "/".join(parts)


def _mount_keys(kind: str, item: dict[str, Any], rel: str) -> tuple[list[str], str]:
    """The --volume keys that may name this mount (most specific first), and how to describe it."""
    keys: list[str] = []
    if kind == "azureFileShares":
        url = str(item.get("azureFileUrl") or "").strip().rstrip("/")
        share = url.rsplit("/", 1)[-1] if url else ""
        keys, what = [url, share], f"Azure file share {share or url!r}"
    elif kind == "azureBlobFileSystems":
        container = str(item.get("containerName") or "")
        keys, what = [container], f"blob container {container!r}"
    elif kind == "fileServers":
        server = str((item.get("fileServer") or {}).get("id") or "").rstrip("/").rsplit("/", 1)[-1]
        keys, what = [server], f"file server {server!r}"
    else:
        keys, what = [], f"the file system of {item.get('mountCommand', '')!r}"
    return [rel, *(k for k in keys if k)], what


_MOUNT_FIELDS = {
    "azureFileShares": frozenset(
        {"accountName", "azureFileUrl", "credentials", "relativeMountPath", "fileMode", "directoryMode"}
    ),
    "azureBlobFileSystems": frozenset(
        {"accountName", "containerName", "credentials", "relativeMountPath", "mountOptions"}
    ),
    "fileServers": frozenset({"fileServer", "sourceDirectory", "relativeMountPath", "mountOptions"}),
    "unmanagedFileSystems": frozenset({"mountCommand", "relativeMountPath"}),
}
VOLUME_OPTION_HINT = (
    "--volume KEY=TARGET (KEY: the relativeMountPath or the share/container name; TARGET: "
    "volume:NAME, host:/path, sync:URI, blob:URI or az://container/prefix)"
)


def mount_volumes(
    r: _Reader,
    mounts: dict[str, Any],
    where: str,
    mapping: Mapping[str, str],
    *,
    cluster: bool,
) -> list[dict[str, Any]]:
    """`mountVolumes` (a job's, or a cluster's nodeSetup's) → trainyard volumes, each source from `mapping`."""
    r.unknown(mounts, frozenset(MOUNT_KINDS), where)
    volumes: list[dict[str, Any]] = []
    base = f"{SCRATCH_NAME}/{CLUSTER_MOUNTS_DIR if cluster else JOB_MOUNTS_DIR}"
    for kind in MOUNT_KINDS:
        for i, item in enumerate(r.array(mounts, kind, where)):
            path = f"{where}.{kind}[{i}]"
            if not isinstance(item, dict):
                r.refuse(path, _type_reason(item, "an object"))
                continue
            r.unknown(item, _MOUNT_FIELDS[kind], path)
            rel = _relative_mount_path(r, item, path)
            if rel is None:
                continue
            keys, what = _mount_keys(kind, item, rel)
            key = next((k for k in keys if k in mapping), None)
            if key is None:
                r.refuse(
                    path,
                    f"no storage given for {what} (mounted at {rel}): pass {VOLUME_OPTION_HINT}, "
                    f"e.g. --volume {rel}=host:/srv/{rel}",
                )
                continue
            try:
                source = parse_volume_target(mapping[key])
            except ValueError as exc:
                r.refuse(path, f"--volume {key}: {exc}")
                continue
            root = "$AZ_BATCHAI_MOUNT_ROOT" if cluster else "$AZ_BATCHAI_JOB_MOUNT_ROOT"
            r.warn(path, f"{what} mounted at {root}/{rel} from {mapping[key]} (--volume {key})")
            if item.get("credentials") is not None:
                r.warn(
                    f"{path}.credentials",
                    "not used: the volume's own credentials apply (the node's "
                    "AZURE_STORAGE_* / AWS_*, or the job's secrets of those names)",
                )
            if item.get("mountOptions") or item.get("fileMode") or item.get("directoryMode"):
                r.warn(path, "mountOptions / fileMode / directoryMode are not applied")
            volumes.append(
                {
                    "name": _volume_name("bai_cluster" if cluster else "bai", rel),
                    "mount_path": f"{base}/{rel}",
                    **source,
                }
            )
            (r.cluster_mounts if cluster else r.job_mounts).append(rel)
    return volumes


def _job_mounts(r: _Reader, props: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = r.obj(props, "mountVolumes", "")
    volumes = mount_volumes(r, mounts, "mountVolumes", r.mapping, cluster=False) if mounts is not None else []
    return volumes


def _mounted(rel_paths: list[str], sub: str) -> bool:
    sub = "/".join(p for p in sub.split("/") if p and p != ".")
    return any(sub == rel or sub.startswith(rel + "/") for rel in rel_paths)


def _cluster_mount_volumes(r: _Reader) -> list[dict[str, Any]]:
    """Paths under $AZ_BATCHAI_MOUNT_ROOT are the cluster's mounts: the pool's volumes (trainyard pool
    create --format batchai), or job volumes at the same place when --volume names them."""
    volumes: list[dict[str, Any]] = []
    for path, text in r.shell_texts + r.path_texts:
        for sub in _root_references(text, MOUNT_ROOT):
            first = sub.split("/", 1)[0]
            if not first or _mounted(r.cluster_mounts, first):
                continue
            if first in r.mapping:
                try:
                    source = parse_volume_target(r.mapping[first])
                except ValueError as exc:
                    r.refuse(path, f"--volume {first}: {exc}")
                    r.cluster_mounts.append(first)
                    continue
                volumes.append(
                    {
                        "name": _volume_name("bai_cluster", first),
                        "mount_path": f"{SCRATCH_NAME}/{CLUSTER_MOUNTS_DIR}/{first}",
                        **source,
                    }
                )
                r.warn(
                    path,
                    f"$AZ_BATCHAI_MOUNT_ROOT/{first} (a cluster mount) is the job's volume from "
                    f"{r.mapping[first]} (--volume {first})",
                )
            else:
                r.warn(
                    path,
                    f"$AZ_BATCHAI_MOUNT_ROOT/{first} is a cluster mount: the pool must have a volume "
                    f"with mount_path {SCRATCH_NAME}/{CLUSTER_MOUNTS_DIR}/{first} (trainyard pool create "
                    f"--format batchai cluster.json), or pass --volume {first}=TARGET",
                )
            r.cluster_mounts.append(first)
    return volumes


def _root_references(text: str, root: str) -> list[str]:
    """The paths below `$root` / `${root}` that `text` names (`$AZ_BATCHAI_MOUNT_ROOT/external/x` → `external/x`)."""
    found = []
    for match in re.finditer(r"\$(?:\{" + root + r"\}|" + root + r"(?![A-Za-z0-9_]))(/[^\s\"';:,]*)?", text):
        found.append((match.group(1) or "").strip("/"))
    return found


@dataclass
class _Image:
    """What containerSettings asks for: the image, its /dev/shm size, the registry login (password apart)."""

    name: str | None = None
    shm_size: str | None = None
    login: dict[str, str] | None = None  # container.registry of the spec
    password: str | None = field(default=None, repr=False)

    def apply(self, spec: dict[str, Any]) -> None:
        if not self.name:
            return
        spec["image"] = self.name
        container: dict[str, Any] = {}
        if self.shm_size:
            container["shm_size"] = self.shm_size
        if self.login is not None and self.password is not None:
            spec["secrets"][REGISTRY_PASSWORD_SECRET] = self.password  # a reserved name: no user secret has it
            container["registry"] = {**self.login, "password_secret": REGISTRY_PASSWORD_SECRET}
        if container:
            spec["container"] = container


def _image(r: _Reader, props: dict[str, Any]) -> _Image:
    """The image, /dev/shm size and registry credentials of containerSettings."""
    settings = r.obj(props, "containerSettings", "")
    if settings is None:
        return _Image()
    r.unknown(settings, frozenset({"imageSourceRegistry", "shmSize"}), "containerSettings")
    shm = r.string(settings, "shmSize", "containerSettings")
    if shm is not None:
        try:
            if parse_memory_bytes(shm) < 2**20:
                raise ValueError
        except ValueError:
            r.refuse("containerSettings.shmSize", f"{shm!r}: not a size of at least 1M (e.g. 8G, 512m)")
            shm = None
    path = "containerSettings.imageSourceRegistry"
    if settings.get("imageSourceRegistry") is None:
        r.refuse(path, "required field is missing")
        return _Image(shm_size=shm)
    registry = r.obj(settings, "imageSourceRegistry", "containerSettings")
    if registry is None:
        return _Image(shm_size=shm)
    found = _Image(name=_registry_image(r, registry, path), shm_size=shm)
    if found.name:
        _registry_credentials(r, registry, path, found)
    return found


def _registry_image(r: _Reader, registry: dict[str, Any], path: str) -> str | None:
    r.unknown(registry, frozenset({"serverUrl", "image", "credentials"}), path)
    image = r.string(registry, "image", path, required=True)
    server = r.string(registry, "serverUrl", path)
    if image is None or server is None:
        return image
    host = _URI_SCHEME.sub("", server.strip()).strip("/")
    if host.split("/", 1)[0].lower() in DOCKER_HUB_HOSTS or image.startswith(host + "/"):
        return image
    r.warn(f"{path}.serverUrl", f"image taken as {host}/{image}")
    return f"{host}/{image}"


def _registry_credentials(r: _Reader, registry: dict[str, Any], path: str, found: _Image) -> None:
    """`credentials` {username, password} → container.registry, the password kept as the job's secret."""
    credentials = r.obj(registry, "credentials", path)
    if credentials is None:
        return
    path = f"{path}.credentials"
    r.unknown(credentials, frozenset({"username", "password", "passwordSecretReference"}), path)
    username = r.string(credentials, "username", path, required=True)
    if credentials.get("passwordSecretReference") is not None:
        r.refuse(
            f"{path}.passwordSecretReference",
            "Azure Key Vault references are not resolved by trainyard; put the password in "
            f"credentials.password (kept as the job's write-only secret {REGISTRY_PASSWORD_SECRET}, "
            "sent only with the image pull)",
        )
        return
    if "password" not in credentials:
        r.refuse(f"{path}.password", "one of password or passwordSecretReference is required")
        return
    password = r.string(credentials, "password", path)
    if username is None or password is None:
        return
    assert found.name is not None
    found.login = {"username": username, "server": image_registry(found.name)}
    found.password = password
    r.warn(
        f"{path}.password",
        f"kept as the job's write-only secret {REGISTRY_PASSWORD_SECRET} (encrypted, never shown), "
        f"sent only as the login of the image pull from {image_registry(found.name)}; not in the job's environment",
    )


def _on_mount(r: _Reader, value: str, path: str) -> str | None:
    """A directory on a mounted file system (`$AZ_BATCHAI_JOB_MOUNT_ROOT/<mount>/...` or
    `$AZ_BATCHAI_MOUNT_ROOT/<cluster mount>/...`) as is, expanded at launch; None for anything else."""
    for root, mounted in ((JOB_MOUNT_ROOT, r.job_mounts), (MOUNT_ROOT, None)):
        if not re.match(r"^\$(\{" + root + r"\}|" + root + r"(?![A-Za-z0-9_]))", value):
            continue
        sub = _root_references(value, root)[0]
        if "$" in value.split(root, 1)[1]:
            r.refuse(path, "refers to another variable below the mount root; trainyard expands only the root here")
            return ""
        if mounted is not None and not _mounted(mounted, sub):
            r.refuse(path, f"lies under ${root} but on no mountVolumes entry (mounted: {', '.join(mounted) or 'none'})")
            return ""
        if mounted is None:
            r.path_texts.append((path, value))
        return value
    return None


def _storage_uri(r: _Reader, value: str, path: str) -> str | None:
    scheme = _URI_SCHEME.match(value)
    if scheme:
        name = scheme.group(1).lower()
        if name in _STORAGE_REGISTRY:
            return value
        hint = ""
        if ".blob.core.windows.net/" in value:
            hint = (
                " (an Azure blob URL is written az://<container>/<path>, the account coming from "
                "AZURE_STORAGE_CONNECTION_STRING)"
            )
        known = ", ".join(f"{s}://" for s in _STORAGE_REGISTRY)
        r.refuse(path, f"{name}:// is not a storage trainyard can stage from; use {known}{hint}")
        return None
    ref = _VAR_REF.search(value)
    if ref:
        var = ref.group(1) or ref.group(2)
        if var in (MOUNT_ROOT, JOB_MOUNT_ROOT):
            r.refuse(
                path,
                f"lies under ${var}, a file system Batch AI mounted (mountVolumes or the "
                "cluster's nodeSetup); trainyard mounts none: give the storage URI holding the "
                "data (az://container/prefix, s3://bucket/prefix or file:///path)",
            )
        else:
            r.refuse(path, f"refers to ${var}: trainyard does not expand variables here; give a storage URI")
        return None
    if value.startswith("/"):
        return "file://" + value
    r.refuse(path, "a relative path; give a storage URI (az://, s3://, file:///absolute/path)")
    return None


def _check_id(r: _Reader, ident: str, path: str, seen: set[str]) -> bool:
    if not _IO_ID.match(ident):
        r.refuse(path, f"{ident!r}: must start with a letter, hold only letters, digits and _ (at most 63)")
        return False
    if ident.upper() in seen:
        r.refuse(path, f"duplicate id {ident!r}")
        return False
    seen.add(ident.upper())
    return True


def _inputs(r: _Reader, props: dict[str, Any]) -> list[dict[str, str]]:
    refs: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(r.array(props, "inputDirectories", "")):
        path = f"inputDirectories[{i}]"
        if not isinstance(item, dict):
            r.refuse(path, _type_reason(item, "an object"))
            continue
        r.unknown(item, frozenset({"id", "path"}), path)
        ident = r.string(item, "id", path, required=True)
        where = r.string(item, "path", path, required=True)
        on_mount = _on_mount(r, where.strip(), f"{path}.path") if where else None
        uri = _storage_uri(r, where.strip(), f"{path}.path") if where and on_mount is None else None
        if ident and _check_id(r, ident, f"{path}.id", seen):
            if on_mount is not None:
                r.mount_env[INPUT_PREFIX + ident] = on_mount
            elif uri:
                refs.append({"id": ident, "uri": uri})
    return refs


def _segment(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or DEFAULT_NAME


def _outputs(r: _Reader, props: dict[str, Any], name: str) -> list[dict[str, str]]:
    refs: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(r.array(props, "outputDirectories", "")):
        path = f"outputDirectories[{i}]"
        if not isinstance(item, dict):
            r.refuse(path, _type_reason(item, "an object"))
            continue
        r.unknown(item, frozenset({"id", "pathPrefix", "pathSuffix"}), path)
        ident = r.string(item, "id", path, required=True)
        prefix = r.string(item, "pathPrefix", path, required=True)
        suffix = r.string(item, "pathSuffix", path) or ""
        if "$" in suffix:
            r.refuse(f"{path}.pathSuffix", "trainyard does not expand variables here")
        on_mount = _on_mount(r, prefix.strip(), f"{path}.pathPrefix") if prefix else None
        base = _storage_uri(r, prefix.strip(), f"{path}.pathPrefix") if prefix and on_mount is None else None
        if ident and _check_id(r, ident, f"{path}.id", seen) and (base or on_mount):
            parts = [(base or on_mount or "").rstrip("/"), _segment(name), suffix.strip("/")]
            if on_mount is not None:
                r.mount_env[OUTPUT_PREFIX + ident] = "/".join(p for p in parts if p)
            else:
                refs.append({"id": ident, "uri": "/".join(p for p in parts if p)})
    return refs


def _check_env_name(r: _Reader, name: str, path: str, seen: dict[str, str]) -> bool:
    if not _ENV_NAME.match(name):
        r.refuse(path, f"{name!r} is not a valid environment variable name")
    elif name.startswith("TRAINYARD_"):
        r.refuse(path, f"{name!r}: the TRAINYARD_ prefix is reserved for trainyard")
    elif name in _RESERVED_ENV:
        r.refuse(path, f"{name!r} is set by trainyard for Batch AI jobs")
    elif name in seen:
        r.refuse(path, f"{name!r} is already set by {seen[name]}")
    else:
        seen[name] = path
        return True
    return False


def _env_and_secrets(r: _Reader, props: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}
    seen: dict[str, str] = {}
    for field_name, target in (("environmentVariables", env), ("secrets", secrets)):
        known = frozenset({"name", "value"} | ({"valueSecretReference"} if target is secrets else set()))
        for i, item in enumerate(r.array(props, field_name, "")):
            path = f"{field_name}[{i}]"
            if not isinstance(item, dict):
                r.refuse(path, _type_reason(item, "an object"))
                continue
            r.unknown(item, known, path)
            name = r.string(item, "name", path, required=True)
            value = _env_value(r, item, path, secret=target is secrets)
            if name is not None and _check_env_name(r, name, f"{path}.name", seen) and value is not None:
                target[name] = value
    return env, secrets


def _env_value(r: _Reader, item: dict[str, Any], path: str, *, secret: bool) -> str | None:
    if secret and item.get("valueSecretReference") is not None:
        r.refuse(
            f"{path}.valueSecretReference",
            "Azure Key Vault references are not resolved by trainyard; "
            "put the secret in value (stored encrypted, never shown)",
        )
        return None
    if "value" not in item:
        r.refuse(
            f"{path}.value",
            "required field is missing" if not secret else "one of value or valueSecretReference is required",
        )
        return None
    value = r.string(item, "value", path, allow_empty=True)
    if value is not None and not secret:
        r.shell_texts.append((f"{path}.value", value))
    return value


def _max_wall_clock(r: _Reader, props: dict[str, Any]) -> float | None:
    constraints = r.obj(props, "constraints", "")
    if constraints is None:
        return None
    r.unknown(constraints, frozenset({"maxWallClockTime"}), "constraints")
    text = r.string(constraints, "maxWallClockTime", "constraints")
    if text is None:
        return None
    try:
        seconds = parse_iso8601_duration(text)
    except ValueError as exc:
        r.refuse("constraints.maxWallClockTime", str(exc))
        return None
    return int(seconds) if seconds == int(seconds) else seconds


def _provided_names(spec: dict[str, Any], launch: _Launch | None) -> set[str]:
    names = set(DERIVED_VARIABLES) | set(spec["env"]) | set(spec["secrets"])
    names |= {INPUT_PREFIX + ref["id"] for ref in spec["inputs"]}
    names |= {OUTPUT_PREFIX + ref["id"] for ref in spec["outputs"]}
    if launch is None or PYTORCH_BACKEND_VAR not in launch.env:
        names.discard(PYTORCH_INIT_METHOD)
    if launch is not None and TF_LAYOUT_VAR in launch.env:
        names |= {PS_HOSTS, WORKER_HOSTS, "TF_CONFIG"}
    return names


def _reference_warnings(r: _Reader, spec: dict[str, Any], launch: _Launch | None) -> None:
    provided = _provided_names(spec, launch)
    for path, text in r.shell_texts:
        for match in _VAR_REF.finditer(text):
            var = match.group(1) or match.group(2)
            if not var.startswith("AZ_BATCHAI_"):
                continue
            if var == JOB_MOUNT_ROOT:
                for sub in _root_references(text, var):
                    if not _mounted(r.job_mounts, sub):
                        r.warn(
                            path,
                            f"refers to ${var}/{sub}, on no mountVolumes entry of the job (mounted: "
                            f"{', '.join(r.job_mounts) or 'none'})",
                        )
            elif var == SHARED_JOB_TEMP and SHARED_TEMP_KEY not in r.mapping and spec["nodes"] > 1:
                r.warn(
                    path,
                    f"refers to ${var}: a directory of this node only, not shared by the job's nodes, "
                    f"unless --volume {SHARED_TEMP_KEY}=TARGET names storage they all see",
                )
            elif var not in provided and var != MOUNT_ROOT:
                r.warn(path, f"refers to ${var}, which trainyard does not set{_missing_hint(var)}")


def _missing_hint(var: str) -> str:
    for prefix, field_name in ((INPUT_PREFIX, "inputDirectories"), (OUTPUT_PREFIX, "outputDirectories")):
        if var.startswith(prefix):
            return f" (no {field_name} entry has id {var.removeprefix(prefix)!r})"
    return ""


# ---------------------------------------------------------------------------------------------
# Public API


def batchai_to_spec(
    doc: dict[str, Any],
    *,
    name: str | None = None,
    gpus: int | None = None,
    volumes: Mapping[str, str] | None = None,
    pool: str | None = None,
    slots: int | None = None,
    gpus_note: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Translate a Batch AI job file into (trainyard job spec dict, warnings).

    `doc` is the bare `properties` object, the ARM envelope, or the `$schema` file. `name`
    defaults to the envelope's name, else `batchai-job`. `gpus` sets `resources.gpus` (GPUs per
    node): Batch AI jobs had the whole VM, trainyard jobs get only what they ask for. `volumes`
    maps each mount (by relativeMountPath, share or container name) to its storage
    (`parse_volume_target`). `pool` overrides the pool the job's `cluster` names. `slots` is the
    slots per node in $AZ_BATCHAI_MPI_HOST_FILE of a customToolkitSettings job (default: gpus, else 1).
    `gpus_note` is the warning that says where `gpus` came from (`gpus_of_pool`), when not from the user.
    Raises SpecError naming every field that cannot be honoured.
    """
    r = _Reader()
    r.mapping = dict(volumes or {})
    props, given_name = _unwrap(doc, r)
    job_name = (name or given_name or DEFAULT_NAME).strip() or DEFAULT_NAME
    spec = _convert(r, props, job_name, gpus, slots, gpus_note)
    if pool:
        spec["pool"] = pool
    unused = sorted(set(r.mapping) - _used_keys(r, props))
    for key in unused:
        r.warn("", f"--volume {key}: no mount of this job file has that key; not used")
    if r.problems:
        raise SpecError(r.problems, r.warnings)
    try:
        parse_job_spec(spec)  # what it refuses, the API would refuse too: fail here, naming the field
    except SpecError as exc:
        raise SpecError(exc.problems, r.warnings) from None
    return spec, r.warnings


# Nodes in these states are (or are about to be) the pool's: their GPUs are what a job would get.
_LIVE_NODE_STATES = frozenset({"up", "draining", "preparing"})


def gpus_of_pool(pool: str, nodes: list[dict[str, Any]], pools: list[dict[str, Any]]) -> tuple[int | None, str]:
    """GPUs per node for a job file that asks for none (Batch AI gave a job its nodes' every GPU).

    From the pool's live nodes (`GET /v1/nodes`: the fewest any of them has, so every node can take
    the job), else from the pool's `gpus_per_node` (`GET /v1/pools`: the nodes its provider starts).
    Returns (None, why) when neither says, and (count, the warning that says where it came from).
    """
    counts = sorted(
        len(n.get("gpus") or []) for n in nodes if n.get("pool") == pool and n.get("state") in _LIVE_NODE_STATES
    )
    if counts:
        mixed = f" (its nodes have {counts[0]} to {counts[-1]}: the fewest, so every node can take it)"
        return counts[0], (
            f"{counts[0]} per node, the GPUs of pool {pool}'s nodes{mixed if counts[0] != counts[-1] else ''}: "
            "Batch AI gave a job every GPU of its VMs; --gpus N overrides"
        )
    for item in pools:
        per_node = (item.get("settings") or {}).get("gpus_per_node")
        if item.get("name") == pool and isinstance(per_node, int) and per_node > 0:
            return per_node, (
                f"{per_node} per node, the gpus_per_node of pool {pool} (it has no nodes now): Batch AI gave a "
                "job every GPU of its VMs; --gpus N overrides"
            )
    return None, f"pool {pool} has no nodes to count GPUs on"


def _used_keys(r: _Reader, props: dict[str, Any]) -> set[str]:
    used = set(r.cluster_mounts) | {SHARED_TEMP_KEY} & set(r.mapping)
    mounts = props.get("mountVolumes")
    if isinstance(mounts, dict):
        for kind in MOUNT_KINDS:
            for item in mounts.get(kind) or []:
                if isinstance(item, dict):
                    used |= set(_mount_keys(kind, item, str(item.get("relativeMountPath", "")))[0])
    return used


def _convert(
    r: _Reader,
    props: dict[str, Any],
    name: str,
    gpus: int | None,
    slots: int | None,
    gpus_note: str | None = None,
) -> dict[str, Any]:
    r.unknown(props, PROPERTY_FIELDS | READ_ONLY_FIELDS | {"nodeSetup"}, "")
    for key in sorted(READ_ONLY_FIELDS & set(props)):
        r.warn(key, "a read-only field of a job Azure returned; ignored")
    nodes = _node_count(r, props)
    launch = _tool(r, props, nodes, slots if slots is not None else gpus)
    pool = _cluster(r, props)
    volumes = _job_mounts(r, props)
    env, secrets = _env_and_secrets(r, props)
    spec: dict[str, Any] = {
        "name": name,
        "command": launch.command if launch else "true",
        "launcher": launch.launcher if launch else "process",
        "nodes": nodes,
        "processes_per_node": launch.processes_per_node if launch else 1,
        "priority": _priority(r, props),
        "env": {COMPAT_VAR: API_VERSION, **(launch.env if launch else {}), **env},
        "secrets": secrets,
        "inputs": _inputs(r, props),
        "outputs": _outputs(r, props, name),
        "max_retries": 0,
    }
    if pool:
        spec["pool"] = pool
    _optional_fields(r, props, spec, gpus, gpus_note)
    spec["env"].update(r.mount_env)
    volumes += _cluster_mount_volumes(r)
    volumes += _shared_temp_volume(r)
    if volumes:
        spec["volumes"] = volumes
    _reference_warnings(r, spec, launch)
    return spec


def _shared_temp_volume(r: _Reader) -> list[dict[str, Any]]:
    target = r.mapping.get(SHARED_TEMP_KEY)
    if target is None:
        return []
    try:
        source = parse_volume_target(target)
    except ValueError as exc:
        r.refuse("", f"--volume {SHARED_TEMP_KEY}: {exc}")
        return []
    return [{"name": "bai_shared_job_temp", "mount_path": f"{SCRATCH_NAME}/{SHARED_TEMP_DIR}", **source}]


def _optional_fields(
    r: _Reader, props: dict[str, Any], spec: dict[str, Any], gpus: int | None, gpus_note: str | None
) -> None:
    found = _image(r, props)
    found.apply(spec)
    image = found.name
    preparation = r.obj(props, "jobPreparation", "")
    if preparation is not None:
        r.unknown(preparation, frozenset({"commandLine"}), "jobPreparation")
        script = r.string(preparation, "commandLine", "jobPreparation", required=True, shell=True)
        if script and image:
            # Batch AI ran it "in the same container as job": what it installs must be there.
            spec["command"] = _with_preparation(script, spec["command"])
            r.warn(
                "jobPreparation",
                "runs in the job's container before the command, once per container (a node's ranks share it)",
            )
        elif script:
            spec["prepare"] = script
    wall_clock = _max_wall_clock(r, props)
    if wall_clock is not None:
        spec["max_wall_clock"] = wall_clock
    prefix = r.string(props, "stdOutErrPathPrefix", "", shell=True)
    if prefix is not None:
        spec["env"][STDOUTERR_PREFIX_VAR] = prefix
        r.warn(
            "stdOutErrPathPrefix",
            "stdout and stderr are kept by trainyard (trainyard job logs), not "
            "written under this prefix; $AZ_BATCHAI_STDOUTERR_DIR is a directory "
            "on the node based on it",
        )
    if gpus is not None:
        spec["resources"] = {"gpus": gpus}
        if gpus_note:
            r.warn("resources.gpus", gpus_note)
    else:
        r.warn(
            "",
            "Batch AI gave a job every GPU of its VMs; trainyard gives it the resources.gpus it asks "
            "for, 0 here: set resources.gpus (--gpus) to the GPUs per node the job needs",
        )


def _with_preparation(script: str, command: str) -> str:
    """The command preceded by the job preparation, run once per container (a lock and a marker in its /tmp)."""
    marker = '/tmp/.batchai-jobprep-"$TRAINYARD_JOB_ID"-"$TRAINYARD_ATTEMPT"'
    return (
        f"_bai_m={marker}\n"
        'until mkdir "$_bai_m.lock" 2>/dev/null; do sleep 0.2; done\n'
        'if [ ! -e "$_bai_m.done" ]; then\n'
        f'( {script}\n) || {{ _bai_rc=$?; rmdir "$_bai_m.lock"; exit $_bai_rc; }}\n'
        'touch "$_bai_m.done"\n'
        "fi\n"
        'rmdir "$_bai_m.lock"\n'
        f"{command}"
    )


def load_batchai_file(path: str | Path) -> dict[str, Any]:
    """Read a Batch AI job file (JSON) into a dict, refusing with SpecError what is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SpecError([{"field": "(file)", "reason": f"not a readable JSON file: {exc}"}]) from None
    if not isinstance(data, dict):
        raise SpecError([{"field": "(file)", "reason": "a Batch AI job file must hold a JSON object"}])
    return data


def batchai_file_to_spec(
    path: str | Path,
    *,
    name: str | None = None,
    gpus: int | None = None,
    **options: Any,
) -> tuple[dict[str, Any], list[str]]:
    """`batchai_to_spec` of a file; the job is named after the envelope's name, else the file."""
    doc = load_batchai_file(path)
    return batchai_to_spec(doc, name=name or envelope_name(doc) or Path(path).stem, gpus=gpus, **options)


# ---------------------------------------------------------------------------------------------
# At launch


def _count_gpus(visible: str | None) -> int:
    count = 0
    for entry in (visible or "").split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-") or entry == "NoDevFiles":
            break  # CUDA stops at the first invalid entry
        count += 1
    return count


def _expand(text: str, values: Mapping[str, str]) -> str:
    """Replace $AZ_BATCHAI_X / ${AZ_BATCHAI_X} that `values` knows; leave everything else."""

    def one(match: re.Match[str]) -> str:
        var = match.group(1) or match.group(2)
        return values.get(var, match.group(0)) if var.startswith("AZ_BATCHAI_") else match.group(0)

    return _VAR_REF.sub(one, text)


def _scratch(job_env: Mapping[str, str], scratch_dir: str | None) -> str:
    if scratch_dir:
        return scratch_dir
    base = job_env.get("TMPDIR") or tempfile.gettempdir()
    job = _segment(job_env.get("TRAINYARD_JOB_ID") or "job")
    attempt = _segment(job_env.get("TRAINYARD_ATTEMPT") or "1")
    node = f"node-{_segment(job_env.get('TRAINYARD_NODE_RANK') or '0')}"
    return posixpath.join(base, "trainyard-batchai", job, attempt, node)


def _stdouterr_dir(job_env: Mapping[str, str], known: Mapping[str, str], scratch: str) -> str:
    prefix = job_env.get(STDOUTERR_PREFIX_VAR)
    if prefix:
        base = _expand(prefix.strip(), {**job_env, **known})
        if base.startswith("/") and "$" not in base:
            job = _segment(job_env.get("TRAINYARD_JOB_ID") or "job")
            attempt = _segment(job_env.get("TRAINYARD_ATTEMPT") or "1")
            return posixpath.join(base, job, attempt, "stdouterr")
    return posixpath.join(scratch, "stdouterr")


def _io_variables(job_env: Mapping[str, str], spec: JobSpec | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for ours, theirs in (("TRAINYARD_INPUT_", INPUT_PREFIX), ("TRAINYARD_OUTPUT_", OUTPUT_PREFIX)):
        for key, value in job_env.items():
            if key.startswith(ours) and len(key) > len(ours):
                out[theirs + key.removeprefix(ours)] = value
    if spec is not None:
        for refs, ours, theirs in (
            (spec.inputs, "TRAINYARD_INPUT_", INPUT_PREFIX),
            (spec.outputs, "TRAINYARD_OUTPUT_", OUTPUT_PREFIX),
        ):
            for ref in refs:
                found = job_env.get(ours + ref.id) or job_env.get(ours + ref.id.upper())
                if found is not None:
                    out[theirs + ref.id] = found
    return out


def batchai_env(
    job_env: Mapping[str, str],
    *,
    spec: JobSpec | None = None,
    scratch_dir: str | None = None,
) -> dict[str, str]:
    """The AZ_BATCHAI_* variables a Batch AI job expects, derived from the part's environment.

    Returns `{}` unless `job_env` holds AZ_BATCHAI_COMPAT. Otherwise the returned variables
    are to be added to `job_env` before the part starts: the derived AZ_BATCHAI_* variables
    and any of the job's own variables whose value refers to them (expanded, as Batch AI
    did; with `spec`, only its `env`, never its secrets). `spec` also lets input/output
    variables keep the id's case as written in the job file;
    `scratch_dir` is a node-local directory for this part (default under $TMPDIR). The caller
    creates the directories named by LOCAL_DIR_VARIABLES. Called once per process started,
    AZ_BATCHAI_TASK_INDEX is that process's RANK; called once per node, the node's.
    """
    if COMPAT_VAR not in job_env:
        return {}
    scratch = _scratch(job_env, scratch_dir)
    job = _segment(job_env.get("TRAINYARD_JOB_ID") or "job")
    attempt = _segment(job_env.get("TRAINYARD_ATTEMPT") or "1")
    out: dict[str, str] = {
        JOB_TEMP: posixpath.join(scratch, "temp"),
        JOB_TEMP_DIR: posixpath.join(scratch, "temp"),
        SHARED_JOB_TEMP: posixpath.join(scratch, SHARED_TEMP_DIR, job, attempt),
        JOB_MOUNT_ROOT: posixpath.join(scratch, JOB_MOUNTS_DIR),
        MOUNT_ROOT: posixpath.join(scratch, CLUSTER_MOUNTS_DIR),
        NUM_GPUS: str(_count_gpus(job_env.get("CUDA_VISIBLE_DEVICES"))),
    }
    rank = job_env.get("RANK", "")
    node_rank = job_env.get("TRAINYARD_NODE_RANK", "")
    out[TASK_INDEX] = rank if rank.isdigit() else node_rank if node_rank.isdigit() else "0"
    hosts = [h for h in job_env.get("TRAINYARD_NODE_HOSTS", "").split(",") if h]
    if hosts:
        out[HOST_LIST] = ",".join(hosts)
    if job_env.get("TRAINYARD_HOSTFILE"):
        out[MPI_HOST_FILE] = job_env["TRAINYARD_HOSTFILE"]
    elif len(hosts) > 1:
        out[MPI_HOST_FILE] = posixpath.join(scratch, HOSTFILE_NAME)  # written by prepare_part_files
    out.update(_tf_layout_variables(job_env, hosts))
    address, port = job_env.get("MASTER_ADDR"), job_env.get("MASTER_PORT")
    if address and port:
        out[PYTORCH_INIT_METHOD] = f"tcp://{f'[{address}]' if ':' in address else address}:{port}"
    out.update(_io_variables(job_env, spec))
    out[STDOUTERR_DIR] = _stdouterr_dir(job_env, out, scratch)
    known = {**job_env, **out}
    own = set(spec.env) if spec is not None else set(job_env)
    for key, value in job_env.items():
        if key in own and key not in out and not key.startswith("TRAINYARD_") and "$" in value:
            expanded = _expand(value, known)
            if expanded != value:
                out[key] = expanded
    return out


def _tf_layout_variables(job_env: Mapping[str, str], hosts: list[str]) -> dict[str, str]:
    """A parameter-server layout's host lists: task i of each kind on node i % nodes, each on its own port."""
    layout = job_env.get(TF_LAYOUT_VAR, "")
    if not layout or not hosts:
        return {}
    ps_count, workers = (int(n) for n in layout.split(","))
    base = int(job_env.get("MASTER_PORT") or 2222) + 1
    worker_hosts = [f"{hosts[i % len(hosts)]}:{base + i}" for i in range(workers)]
    ps_hosts = [f"{hosts[i % len(hosts)]}:{base + workers + i}" for i in range(ps_count)]
    return {
        PS_HOSTS: ",".join(ps_hosts),
        WORKER_HOSTS: ",".join(worker_hosts),
        TF_CLUSTER_VAR: json.dumps({"ps": ps_hosts, "worker": worker_hosts}, separators=(",", ":")),
    }


def hostfile_text(job_env: Mapping[str, str]) -> str:
    """$AZ_BATCHAI_MPI_HOST_FILE of a job whose launcher writes none: each node, `slots=` its processes."""
    hosts = [h for h in job_env.get("TRAINYARD_NODE_HOSTS", "").split(",") if h]
    world = job_env.get("WORLD_SIZE", "")
    slots = max(1, int(world) // len(hosts)) if world.isdigit() and hosts else 1
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def prepare_part_files(env: Mapping[str, str]) -> None:
    """Before a Batch AI part starts: its directories (LOCAL_DIR_VARIABLES, the outputs on mounts)
    and the hostfile batchai_env named, when no launcher wrote one."""
    if COMPAT_VAR not in env:
        return
    for name in LOCAL_DIR_VARIABLES:
        if env.get(name):
            Path(env[name]).mkdir(parents=True, exist_ok=True)
    root = env.get(JOB_MOUNT_ROOT, "")
    cluster_root = env.get(MOUNT_ROOT, "")
    for key, value in env.items():
        if (
            key.startswith(OUTPUT_PREFIX)
            and value.startswith("/")
            and ((root and value.startswith(root + "/")) or (cluster_root and value.startswith(cluster_root + "/")))
        ):
            with contextlib.suppress(OSError):  # a read-only mount: the job says so when it writes
                Path(value).mkdir(parents=True, exist_ok=True)
    hostfile = env.get(MPI_HOST_FILE)
    if hostfile and not env.get("TRAINYARD_HOSTFILE"):
        Path(hostfile).parent.mkdir(parents=True, exist_ok=True)
        Path(hostfile).write_text(hostfile_text(env))
