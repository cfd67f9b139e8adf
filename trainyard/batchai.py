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
- `cluster` → warning, ignored: the job goes to pool `default` unless the spec's pool is set.
- `mountVolumes.<kind>[i]` (azureFileShares, azureBlobFileSystems, fileServers,
  unmanagedFileSystems) → refused: trainyard mounts no file systems; stage data with
  `inputDirectories`. `nodeSetup` (a cluster setting) → refused; use `jobPreparation`.
- `containerSettings.imageSourceRegistry.image` → `image`; `serverUrl` is put in front of
  the image name unless it is Docker Hub or already there (warning). `credentials` →
  refused (log the nodes' Docker daemon in to the registry instead). `shmSize` → warning.
- Tool settings (exactly one) → `command`, `launcher`, `processes_per_node`. `processCount`
  (default nodeCount) must be a multiple of nodeCount: processes_per_node = processCount /
  nodeCount. Python tools run `<pythonInterpreterPath or python> <pythonScriptFilePath>
  <commandLineArgs>`.
  - `customToolkitSettings.commandLine` → launcher `process`. Batch AI ran it on the first
    node only, and so does the translated command: the other nodes exit 0 at once (warning).
  - `customMpiSettings` → launcher `mpi`, the command line as is.
  - `horovodSettings` → launcher `horovod`.
  - `pyTorchSettings` → launcher `torchrun` when nodeCount > 1 or processCount > 1, else
    `process`. `communicationBackend` gloo or nccl (any case; default gloo) → env
    `AZ_BATCHAI_PYTORCH_BACKEND`; TCP (gone since PyTorch 1.0) and MPI are refused.
  - `tensorFlowSettings` → launcher `process`, one task per node: the first node runs
    `masterCommandLineArgs`, the others `workerCommandLineArgs` (the master's when absent).
    No TF_CONFIG, AZ_BATCHAI_PS_HOSTS or AZ_BATCHAI_WORKER_HOSTS: a parameter-server layout
    (`parameterServerCount`, `parameterServerCommandLineArgs`) and a `workerCount` other
    than nodeCount are warned about.
  - `chainerSettings`, `cntkSettings`, `caffeSettings` → launcher `mpi` when processCount > 1,
    else `process`. CNTK BrainScript runs `cntk configFile=<configFilePath> <args>`; Caffe
    with a config file runs `caffe train --solver=<configFilePath> <args>`.
  - `caffe2Settings` → launcher `process`: the script runs once on every node.
- `jobPreparation.commandLine` → `prepare` (every node, before the command, as in Batch AI).
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

import json
import posixpath
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard.spec import MAX_GANG_NODES, JobSpec, SpecError, parse_job_spec
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

# Set by batchai_env at launch (besides the per-id input/output variables).
DERIVED_VARIABLES = (
    MPI_HOST_FILE, NUM_GPUS, TASK_INDEX, JOB_TEMP, STDOUTERR_DIR, JOB_MOUNT_ROOT, MOUNT_ROOT,
    PYTORCH_INIT_METHOD,
)
# Directories batchai_env names; the worker creates them before it starts the part.
LOCAL_DIR_VARIABLES = (JOB_TEMP, JOB_MOUNT_ROOT, MOUNT_ROOT, STDOUTERR_DIR)
_RESERVED_ENV = frozenset({COMPAT_VAR, STDOUTERR_PREFIX_VAR, PYTORCH_BACKEND_VAR, *DERIVED_VARIABLES})

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
_TIMESPAN = re.compile(
    r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2})(?:\.(?P<f>\d{1,7}))?)?$"
)
_DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)

_PYTHON_FIELDS = frozenset({"pythonScriptFilePath", "pythonInterpreterPath", "commandLineArgs"})
TOOL_SETTINGS: dict[str, frozenset[str]] = {
    "customToolkitSettings": frozenset({"commandLine"}),
    "customMpiSettings": frozenset({"commandLine", "processCount"}),
    "horovodSettings": _PYTHON_FIELDS | {"processCount"},
    "pyTorchSettings": _PYTHON_FIELDS | {"processCount", "communicationBackend"},
    "tensorFlowSettings": frozenset({
        "pythonScriptFilePath", "pythonInterpreterPath", "masterCommandLineArgs", "workerCommandLineArgs",
        "parameterServerCommandLineArgs", "workerCount", "parameterServerCount",
    }),
    "chainerSettings": _PYTHON_FIELDS | {"processCount"},
    "cntkSettings": _PYTHON_FIELDS | {"languageType", "configFilePath", "processCount"},
    "caffe2Settings": _PYTHON_FIELDS,
    "caffeSettings": _PYTHON_FIELDS | {"configFilePath", "processCount"},
}
PROPERTY_FIELDS = frozenset({
    "schedulingPriority", "cluster", "mountVolumes", "nodeCount", "containerSettings", "jobPreparation",
    "stdOutErrPathPrefix", "inputDirectories", "outputDirectories", "environmentVariables", "secrets",
    "constraints", *TOOL_SETTINGS,
})
# Fields of a job as Azure returned it (GET), not of a job to create.
READ_ONLY_FIELDS = frozenset({
    "toolType", "jobOutputDirectoryPathSegment", "creationTime", "provisioningState",
    "provisioningStateTransitionTime", "executionState", "executionStateTransitionTime", "executionInfo",
})
ENVELOPE_FIELDS = frozenset({"$schema", "properties", "name", "type", "apiVersion", "id"})
MOUNT_KINDS = ("azureFileShares", "azureBlobFileSystems", "fileServers", "unmanagedFileSystems")
PYTORCH_BACKENDS = {"gloo", "nccl"}


class _Reader:
    """Reads a JSON object field by field, collecting problems (refusals) and warnings by path."""

    def __init__(self) -> None:
        self.problems: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.shell_texts: list[tuple[str, str]] = []  # (path, text) the shell will expand

    def refuse(self, path: str, reason: str) -> None:
        self.problems.append({"field": path or "(properties)", "reason": reason})

    def warn(self, path: str, message: str) -> None:
        text = f"{path}: {message}" if path else message
        if text not in self.warnings:
            self.warnings.append(text)

    def unknown(self, obj: Mapping[str, Any], known: frozenset[str], path: str) -> None:
        for key in obj:
            if key not in known:
                self.warn(_join(path, key), "not a field of Batch AI 2018-05-01 JobCreateParameters; ignored")

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
        self, parent: Mapping[str, Any], key: str, path: str, *, required: bool = False,
        shell: bool = False, allow_empty: bool = False,
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
    """`P7D`, `PT1H30M`, `P1DT12H`, `PT0.5S`, `P2W` (ISO 8601) or `7.00:00:00`, `01:30:00`
    (.NET TimeSpan, as Batch AI wrote its default) → seconds. Years and months are refused:
    they have no fixed length. Raises ValueError."""
    value = text.strip()
    iso = _ISO_DURATION.match(value.upper())
    if iso:
        parts = {k: float(v.replace(",", ".")) for k, v in iso.groupdict().items() if v is not None}
        if parts.get("Y") or parts.get("M"):
            raise ValueError(f"{text!r}: years and months have no fixed length; give days (e.g. P30D)")
        seconds = (parts.get("W", 0) * 604800 + parts.get("D", 0) * 86400 + parts.get("h", 0) * 3600
                   + parts.get("m", 0) * 60 + parts.get("s", 0))
    else:
        span = _TIMESPAN.match(value)
        if not span or int(span["h"]) > 23 or int(span["m"]) > 59 or int(span["s"] or 0) > 59:
            raise ValueError(f"{text!r} is not an ISO 8601 duration like PT1H30M or P7D")
        seconds = (int(span["d"] or 0) * 86400 + int(span["h"]) * 3600 + int(span["m"]) * 60
                   + int(span["s"] or 0) + float(f"0.{span['f'] or 0}"))
    if seconds <= 0:
        raise ValueError(f"{text!r}: must be longer than zero")
    return seconds


# ---------------------------------------------------------------------------------------------
# The document and its envelope


def _unwrap(doc: Any, r: _Reader) -> tuple[dict[str, Any], str | None]:
    """The properties object and the name the envelope gives the job, if any."""
    if not isinstance(doc, dict):
        raise SpecError([{"field": "(file)", "reason": "a Batch AI job file must hold a JSON object"}])
    inner = doc.get("properties")
    if not isinstance(inner, dict) or set(doc) & PROPERTY_FIELDS:
        return {k: v for k, v in doc.items() if k != "$schema"}, None
    r.unknown(doc, ENVELOPE_FIELDS, "")
    schema = doc.get("$schema")
    if isinstance(schema, str) and API_VERSION not in schema:
        r.warn("$schema", f"{schema!r} is not the {API_VERSION} schema; read as {API_VERSION}")
    version = doc.get("apiVersion")
    if version is not None and version != API_VERSION:
        r.warn("apiVersion", f"{version!r} is not {API_VERSION}; read as {API_VERSION}")
    kind = doc.get("type")
    if isinstance(kind, str) and not kind.lower().endswith("jobs"):
        r.warn("type", f"{kind!r} is not a Batch AI job resource type; read as a job")
    name = doc.get("name")
    if isinstance(name, str) and name.strip():
        return inner, name.strip().rstrip("/").rsplit("/", 1)[-1]
    return inner, None


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


def _only_on_first_node(command: str) -> str:
    return f'[ "${{TRAINYARD_NODE_RANK:-0}}" = 0 ] || exit 0\n{command}'


def _custom_toolkit(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    command = r.string(s, "commandLine", path, required=True, shell=True) or ""
    if nodes > 1:
        r.warn(path, f"Batch AI ran this command line on the first node only, and so does trainyard; the "
                     f"other {nodes - 1} node(s) are reserved, listed in $AZ_BATCHAI_MPI_HOST_FILE, and "
                     "run nothing themselves: an mpirun in the command line reaches them only if the "
                     "nodes accept SSH from each other (customMpiSettings or horovodSettings let "
                     "trainyard's MPI launcher start the ranks instead)")
        command = _only_on_first_node(command)
    return _Launch(command)


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
    return _Launch(command, launcher, per_node, {PYTORCH_BACKEND_VAR: backend.lower()})


def _tensorflow(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> _Launch:
    master = _python_command(r, s, path, "masterCommandLineArgs")
    worker_args = r.string(s, "workerCommandLineArgs", path, shell=True)
    worker = _python_command(_Reader(), s, path, "workerCommandLineArgs") if worker_args else master
    _tensorflow_layout_warnings(r, s, path, nodes)
    if nodes > 1 and worker != master:
        command = f'if [ "${{TRAINYARD_NODE_RANK:-0}}" = 0 ]; then\n{master}\nelse\n{worker}\nfi'
        return _Launch(command)
    if nodes == 1 and worker_args:
        r.warn(_join(path, "workerCommandLineArgs"), "not used: with nodeCount 1 only the master task runs")
    return _Launch(master)


def _tensorflow_layout_warnings(r: _Reader, s: dict[str, Any], path: str, nodes: int) -> None:
    ps_args = r.string(s, "parameterServerCommandLineArgs", path, shell=True)
    ps_count = r.integer(s, "parameterServerCount", path, minimum=0)
    workers = r.integer(s, "workerCount", path)
    if ps_args or ps_count:
        r.warn(path, "parameter-server layout: trainyard starts no parameter-server tasks and sets neither "
                     "TF_CONFIG nor AZ_BATCHAI_PS_HOSTS / AZ_BATCHAI_WORKER_HOSTS; one task runs per node "
                     "(build the cluster from TRAINYARD_NODE_HOSTS and AZ_BATCHAI_TASK_INDEX, or use "
                     "horovodSettings)")
    if workers is not None and workers != nodes:
        r.warn(_join(path, "workerCount"), f"{workers} workers asked for; trainyard runs one task per node "
                                           f"({nodes})")


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


_TOOLS: dict[str, Callable[[_Reader, dict[str, Any], str, int], _Launch]] = {
    "customToolkitSettings": _custom_toolkit,
    "customMpiSettings": _custom_mpi,
    "horovodSettings": _horovod,
    "pyTorchSettings": _pytorch,
    "tensorFlowSettings": _tensorflow,
    "chainerSettings": _chainer,
    "cntkSettings": _cntk,
    "caffe2Settings": _caffe2,
    "caffeSettings": _caffe,
}


def _tool(r: _Reader, props: dict[str, Any], nodes: int) -> _Launch | None:
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


def _cluster_and_mounts(r: _Reader, props: dict[str, Any]) -> None:
    cluster = r.obj(props, "cluster", "")
    if cluster is not None:
        r.warn("cluster", f"{cluster.get('id', '')!r} ignored: the job goes to trainyard pool 'default' "
                          "unless the spec's pool is set")
    if props.get("nodeSetup") is not None:
        r.refuse("nodeSetup", "a cluster setting (setup task, mounts), not a job field; use jobPreparation")
    mounts = r.obj(props, "mountVolumes", "")
    if mounts is None:
        return
    r.unknown(mounts, frozenset(MOUNT_KINDS), "mountVolumes")
    for kind in MOUNT_KINDS:
        for i, _ in enumerate(r.array(mounts, kind, "mountVolumes")):
            r.refuse(f"mountVolumes.{kind}[{i}]", "trainyard mounts no file systems in jobs; stage the data "
                                                  "with inputDirectories (a storage URI) instead")


def _image(r: _Reader, props: dict[str, Any]) -> str | None:
    settings = r.obj(props, "containerSettings", "")
    if settings is None:
        return None
    r.unknown(settings, frozenset({"imageSourceRegistry", "shmSize"}), "containerSettings")
    if settings.get("shmSize") is not None:
        r.warn("containerSettings.shmSize", "ignored: trainyard has no /dev/shm size setting for containers")
    path = "containerSettings.imageSourceRegistry"
    if settings.get("imageSourceRegistry") is None:
        r.refuse(path, "required field is missing")
        return None
    registry = r.obj(settings, "imageSourceRegistry", "containerSettings")
    if registry is None:
        return None
    r.unknown(registry, frozenset({"serverUrl", "image", "credentials"}), path)
    if registry.get("credentials") is not None:
        r.refuse(f"{path}.credentials", "private registry credentials are not supported: log the nodes' "
                                        "Docker daemon in to the registry (docker login) and leave them out")
    image = r.string(registry, "image", path, required=True)
    server = r.string(registry, "serverUrl", path)
    if image is None or server is None:
        return image
    host = _URI_SCHEME.sub("", server.strip()).strip("/")
    if host.split("/", 1)[0].lower() in _DOCKER_HUB_HOSTS or image.startswith(host + "/"):
        return image
    r.warn(f"{path}.serverUrl", f"image taken as {host}/{image}")
    return f"{host}/{image}"


def _storage_uri(r: _Reader, value: str, path: str) -> str | None:
    scheme = _URI_SCHEME.match(value)
    if scheme:
        name = scheme.group(1).lower()
        if name in _STORAGE_REGISTRY:
            return value
        hint = ""
        if ".blob.core.windows.net/" in value:
            hint = " (an Azure blob URL is written az://<container>/<path>, the account coming from " \
                   "AZURE_STORAGE_CONNECTION_STRING)"
        known = ", ".join(f"{s}://" for s in _STORAGE_REGISTRY)
        r.refuse(path, f"{name}:// is not a storage trainyard can stage from; use {known}{hint}")
        return None
    ref = _VAR_REF.search(value)
    if ref:
        var = ref.group(1) or ref.group(2)
        if var in (MOUNT_ROOT, JOB_MOUNT_ROOT):
            r.refuse(path, f"lies under ${var}, a file system Batch AI mounted (mountVolumes or the "
                           "cluster's nodeSetup); trainyard mounts none: give the storage URI holding the "
                           "data (az://container/prefix, s3://bucket/prefix or file:///path)")
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
        uri = _storage_uri(r, where.strip(), f"{path}.path") if where else None
        if ident and _check_id(r, ident, f"{path}.id", seen) and uri:
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
        base = _storage_uri(r, prefix.strip(), f"{path}.pathPrefix") if prefix else None
        if ident and _check_id(r, ident, f"{path}.id", seen) and base:
            parts = [base.rstrip("/"), _segment(name), suffix.strip("/")]
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
        r.refuse(f"{path}.valueSecretReference", "Azure Key Vault references are not resolved by trainyard; "
                                                 "put the secret in value (stored encrypted, never shown)")
        return None
    if "value" not in item:
        r.refuse(f"{path}.value", "required field is missing" if not secret
                 else "one of value or valueSecretReference is required")
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
    return names


def _reference_warnings(r: _Reader, spec: dict[str, Any], launch: _Launch | None) -> None:
    provided = _provided_names(spec, launch)
    for path, text in r.shell_texts:
        for match in _VAR_REF.finditer(text):
            var = match.group(1) or match.group(2)
            if not var.startswith("AZ_BATCHAI_"):
                continue
            if var in (MOUNT_ROOT, JOB_MOUNT_ROOT):
                r.warn(path, f"refers to ${var}: nothing is mounted there in trainyard (an empty directory "
                             "on the node); stage files with inputDirectories instead")
            elif var not in provided:
                r.warn(path, f"refers to ${var}, which trainyard does not set{_missing_hint(var)}")


def _missing_hint(var: str) -> str:
    for prefix, field_name in ((INPUT_PREFIX, "inputDirectories"), (OUTPUT_PREFIX, "outputDirectories")):
        if var.startswith(prefix):
            return f" (no {field_name} entry has id {var.removeprefix(prefix)!r})"
    return ""


# ---------------------------------------------------------------------------------------------
# Public API


def batchai_to_spec(
    doc: dict[str, Any], *, name: str | None = None, gpus: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Translate a Batch AI job file into (trainyard job spec dict, warnings).

    `doc` is the bare `properties` object, the ARM envelope, or the `$schema` file. `name`
    defaults to the envelope's name, else `batchai-job`. `gpus` sets `resources.gpus` (GPUs per
    node): Batch AI jobs had the whole VM, trainyard jobs get only what they ask for.
    Raises SpecError naming every field that cannot be honoured.
    """
    r = _Reader()
    props, given_name = _unwrap(doc, r)
    job_name = (name or given_name or DEFAULT_NAME).strip() or DEFAULT_NAME
    spec = _convert(r, props, job_name, gpus)
    if r.problems:
        raise SpecError(r.problems)
    parse_job_spec(spec)  # what it refuses, the API would refuse too: fail here, naming the field
    return spec, r.warnings


def _convert(r: _Reader, props: dict[str, Any], name: str, gpus: int | None) -> dict[str, Any]:
    r.unknown(props, PROPERTY_FIELDS | READ_ONLY_FIELDS | {"nodeSetup"}, "")
    for key in sorted(READ_ONLY_FIELDS & set(props)):
        r.warn(key, "a read-only field of a job Azure returned; ignored")
    nodes = _node_count(r, props)
    launch = _tool(r, props, nodes)
    _cluster_and_mounts(r, props)
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
    _optional_fields(r, props, spec, gpus)
    _reference_warnings(r, spec, launch)
    return spec


def _optional_fields(r: _Reader, props: dict[str, Any], spec: dict[str, Any], gpus: int | None) -> None:
    image = _image(r, props)
    if image:
        spec["image"] = image
    preparation = r.obj(props, "jobPreparation", "")
    if preparation is not None:
        r.unknown(preparation, frozenset({"commandLine"}), "jobPreparation")
        spec["prepare"] = r.string(preparation, "commandLine", "jobPreparation", required=True, shell=True)
    wall_clock = _max_wall_clock(r, props)
    if wall_clock is not None:
        spec["max_wall_clock"] = wall_clock
    prefix = r.string(props, "stdOutErrPathPrefix", "")
    if prefix is not None:
        spec["env"][STDOUTERR_PREFIX_VAR] = prefix
        r.warn("stdOutErrPathPrefix", "stdout and stderr are kept by trainyard (trainyard job logs), not "
                                      "written under this prefix; $AZ_BATCHAI_STDOUTERR_DIR is a directory "
                                      "on the node based on it")
    if gpus is not None:
        spec["resources"] = {"gpus": gpus}
    else:
        r.warn("", "Batch AI gave a job every GPU of its VMs; trainyard gives it the resources.gpus it asks "
                   "for, 0 here: set resources.gpus to the GPUs per node the job needs")


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
    path: str | Path, *, name: str | None = None, gpus: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """`batchai_to_spec` of a file; the job is named after the envelope's name, else the file."""
    doc = load_batchai_file(path)
    return batchai_to_spec(doc, name=name or envelope_name(doc) or Path(path).stem, gpus=gpus)


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
        for refs, ours, theirs in ((spec.inputs, "TRAINYARD_INPUT_", INPUT_PREFIX),
                                   (spec.outputs, "TRAINYARD_OUTPUT_", OUTPUT_PREFIX)):
            for ref in refs:
                found = job_env.get(ours + ref.id) or job_env.get(ours + ref.id.upper())
                if found is not None:
                    out[theirs + ref.id] = found
    return out


def batchai_env(
    job_env: Mapping[str, str], *, spec: JobSpec | None = None, scratch_dir: str | None = None,
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
    out: dict[str, str] = {
        JOB_TEMP: posixpath.join(scratch, "temp"),
        JOB_MOUNT_ROOT: posixpath.join(scratch, "mounts"),
        MOUNT_ROOT: posixpath.join(scratch, "mounts"),
        NUM_GPUS: str(_count_gpus(job_env.get("CUDA_VISIBLE_DEVICES"))),
    }
    rank = job_env.get("RANK", "")
    node_rank = job_env.get("TRAINYARD_NODE_RANK", "")
    out[TASK_INDEX] = rank if rank.isdigit() else node_rank if node_rank.isdigit() else "0"
    if job_env.get("TRAINYARD_HOSTFILE"):
        out[MPI_HOST_FILE] = job_env["TRAINYARD_HOSTFILE"]
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
