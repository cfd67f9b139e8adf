"""Azure Batch AI job files (2018-05-01) → trainyard job specs, and the AZ_BATCHAI_* variables at launch."""

from __future__ import annotations

import copy
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from trainyard.batchai import (
    API_VERSION,
    COMPAT_VAR,
    LOCAL_DIR_VARIABLES,
    OWN_MPIRUN_VAR,
    PYTORCH_BACKEND_VAR,
    STDOUTERR_PREFIX_VAR,
    batchai_env,
    batchai_file_to_spec,
    batchai_to_spec,
    envelope_name,
    load_batchai_file,
    parse_iso8601_duration,
)
from trainyard.spec import SpecError, parse_job_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "batchai"
SCHEMAS = ROOT / "tests" / "data" / "batchai-2018-05-01"  # copied with its LICENSE from the public reference
ARM_TEMPLATE = "https://schema.management.azure.com/schemas/2015-01-01/deploymentTemplate.json"
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.json"))
CLUSTER = {"id": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/clusters/c"}


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


def job(**fields: Any) -> dict[str, Any]:
    """A minimal valid properties object, with `fields` on top."""
    props: dict[str, Any] = {"nodeCount": 1, "customToolkitSettings": {"commandLine": "echo hi"}}
    props.update(fields)
    return {"properties": props}


def refused(doc: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    """field path -> reason, for every problem batchai_to_spec names."""
    with pytest.raises(SpecError) as info:
        batchai_to_spec(doc, **kwargs)
    return {p["field"]: p["reason"] for p in info.value.problems}


def warned(warnings: list[str], path: str, words: str = "") -> bool:
    return any(w.startswith(f"{path}:") and words in w for w in warnings)


# ----------------------------------------------------------------------------------------------
# The example files are real Batch AI job files


def _schema_registry() -> Registry:
    # ARM's shared schema, which the Batch AI schemas use for template expressions: a stub with
    # the same definition, so that validation needs no network.
    arm = {"definitions": {"expression": {"type": "string", "pattern": "^\\[(.|\\n)*\\]$"}}}
    registry: Registry = Registry().with_resource(ARM_TEMPLATE, Resource.from_contents(arm, DRAFT4))
    for path in SCHEMAS.glob("*.json"):
        contents = json.loads(path.read_text())
        registry = registry.with_resource(path.as_uri(), Resource.from_contents(contents, DRAFT4))
    return registry


def _validate(instance: Any, schema_file: str, pointer: str = "") -> None:
    if not SCHEMAS.is_dir():  # a clone without the shared reference folder next to it
        pytest.skip(f"Batch AI 2018-05-01 schemas not found at {SCHEMAS}")
    uri = (SCHEMAS / schema_file).as_uri()
    schema = {"$ref": f"{uri}#{pointer}"} if pointer else json.loads((SCHEMAS / schema_file).read_text())
    validator = Draft4Validator(schema, registry=_schema_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


TOOL_SCHEMA = {
    "customToolkitSettings": "custom.json",
    "customMpiSettings": "mpi.json",
    "horovodSettings": "horovod.json",
    "pyTorchSettings": "pytorch.json",
    "tensorFlowSettings": "tensorflow.json",
    "chainerSettings": "chainer.json",
    "cntkSettings": "cntk.json",
    "caffe2Settings": "caffe2.json",
    "caffeSettings": "caffe.json",
}


def test_the_five_examples_are_there() -> None:
    assert set(EXAMPLE_FILES) >= {
        "custom-toolkit.json",
        "horovod-2node.json",
        "pytorch-gloo.json",
        "container.json",
        "io-env-secrets.json",
    }


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_is_valid_against_the_2018_05_01_schemas(name: str) -> None:
    doc = example(name)
    assert API_VERSION in doc["$schema"]
    _validate(doc, "job.json")
    # Stricter: the properties as JobBaseProperties, whose required fields the REST API enforced.
    _validate(doc["properties"], "job.json", "/definitions/JobBaseProperties")
    tools = [key for key in TOOL_SCHEMA if key in doc["properties"]]
    assert len(tools) == 1
    _validate(doc, TOOL_SCHEMA[tools[0]])
    assert doc["$schema"].endswith("/" + TOOL_SCHEMA[tools[0]]) or doc["$schema"].endswith("/job.json")


def test_schema_validation_does_catch_a_bad_file() -> None:
    bad = {"properties": {"nodeCount": "two", "inputDirectories": [{"id": "X"}], "schedulingPriority": "urgent"}}
    with pytest.raises(AssertionError):
        _validate(bad, "job.json")


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_translates_into_a_spec_trainyard_accepts(name: str) -> None:
    spec, warnings = batchai_to_spec(example(name), name="example")
    parsed = parse_job_spec(spec)
    assert parsed.env[COMPAT_VAR] == API_VERSION
    assert parsed.max_retries == 0
    assert all(isinstance(w, str) and w for w in warnings)
    # Every AZ_BATCHAI_* variable the example uses is one trainyard sets.
    assert not [w for w in warnings if "which trainyard does not set" in w]


# ----------------------------------------------------------------------------------------------
# Field by field, on the examples


def test_custom_toolkit_example_field_by_field() -> None:
    doc = example("custom-toolkit.json")
    props = doc["properties"]
    spec, warnings = batchai_to_spec(doc, name="custom")
    assert spec["name"] == "custom"
    assert spec["command"] == props["customToolkitSettings"]["commandLine"]
    assert spec["launcher"] == "process"
    assert spec["nodes"] == 1
    assert spec["processes_per_node"] == 1
    assert spec["priority"] == "high"
    assert parse_job_spec(spec).priority == 750
    assert spec["prepare"] == props["jobPreparation"]["commandLine"]
    assert spec["max_wall_clock"] == 30 * 60
    assert spec["env"] == {
        COMPAT_VAR: API_VERSION,
        STDOUTERR_PREFIX_VAR: "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs",
        "GREETING_TARGET": "trainyard",
    }
    assert spec["secrets"] == {} and spec["inputs"] == [] and spec["outputs"] == []
    assert "image" not in spec and "resources" not in spec
    assert batchai_to_spec(doc, name="custom", pool="default")[0]["pool"] == "default"  # --pool overrides
    assert spec["pool"] == "cpu"  # the cluster's name
    assert warned(warnings, "stdOutErrPathPrefix", "trainyard job logs")
    assert any("resources.gpus" in w for w in warnings)


def test_horovod_example_field_by_field() -> None:
    spec, _ = batchai_to_spec(example("horovod-2node.json"), name="hvd")
    assert spec["launcher"] == "horovod"
    assert spec["nodes"] == 2
    assert spec["processes_per_node"] == 1  # processCount 2 over 2 nodes
    assert spec["command"] == (
        "python $AZ_BATCHAI_INPUT_SCRIPTS/train_horovod.py --epochs 1 --output-dir $AZ_BATCHAI_OUTPUT_MODEL"
    )
    assert spec["inputs"] == [{"id": "SCRIPTS", "uri": "az://trainyard-examples/batchai/scripts"}]
    assert spec["outputs"] == [{"id": "MODEL", "uri": "az://trainyard-examples/batchai/outputs/hvd/model"}]
    assert spec["priority"] == "normal"
    assert spec["max_wall_clock"] == 3600


def test_pytorch_example_field_by_field() -> None:
    spec, warnings = batchai_to_spec(example("pytorch-gloo.json"), name="pt")
    assert spec["launcher"] == "torchrun"
    assert spec["nodes"] == 2
    assert spec["processes_per_node"] == 1
    assert spec["command"].startswith("python $AZ_BATCHAI_INPUT_SCRIPTS/train_pytorch.py --world-size 2 ")
    assert spec["env"][PYTORCH_BACKEND_VAR] == "gloo"
    assert spec["max_wall_clock"] == 7200
    assert not [w for w in warnings if "PYTORCH" in w or "TASK_INDEX" in w]


def test_container_example_field_by_field() -> None:
    spec, _ = batchai_to_spec(example("container.json"))
    assert spec["image"] == "python:3.11-slim"
    assert spec["priority"] == "low"
    assert parse_job_spec(spec).priority == 250
    assert spec["launcher"] == "process"


def test_io_env_secrets_example_field_by_field() -> None:
    spec, _ = batchai_to_spec(example("io-env-secrets.json"), name="sum numbers")
    assert spec["inputs"] == [{"id": "DATA", "uri": "az://trainyard-examples/batchai/data"}]
    # The job name stands for Batch AI's per-job path segment (made path-safe).
    assert spec["outputs"] == [{"id": "REPORT", "uri": "az://trainyard-examples/batchai/outputs/sum-numbers/report"}]
    assert spec["env"]["DATA_FILE"] == "$AZ_BATCHAI_INPUT_DATA/numbers.txt"
    assert spec["env"]["REPORT_TITLE"] == "sum of numbers"
    assert spec["secrets"] == {"API_TOKEN": "not-a-real-token"}
    parsed = parse_job_spec(spec)
    assert parsed.public_dict()["secrets"] == {"API_TOKEN": "***"}
    assert "not-a-real-token" not in json.dumps(parsed.public_dict())


# ----------------------------------------------------------------------------------------------
# Document shapes


def test_bare_properties_envelope_and_schema_file_give_the_same_spec() -> None:
    doc = example("horovod-2node.json")
    from_file = batchai_to_spec(doc, name="j")
    from_envelope = batchai_to_spec({"properties": doc["properties"]}, name="j")
    from_bare = batchai_to_spec(copy.deepcopy(doc["properties"]), name="j")
    assert from_file == from_envelope == from_bare


def test_arm_envelope_names_the_job_and_other_versions_are_warned_about() -> None:
    doc = {
        "type": "Microsoft.BatchAI/workspaces/experiments/jobs",
        "apiVersion": "2018-03-01",
        "name": "ws/exp/nightly-run",
        "$schema": "https://example/schemas/2017-09-01-preview/job.json",
        **job(),
    }
    spec, warnings = batchai_to_spec(doc)
    assert spec["name"] == "nightly-run"
    assert envelope_name(doc) == "nightly-run"
    assert warned(warnings, "apiVersion", "2018-03-01")
    assert warned(warnings, "$schema", "2017-09-01-preview")
    assert batchai_to_spec(doc, name="given")[0]["name"] == "given"
    assert batchai_to_spec(job())[0]["name"] == "batchai-job"


def test_not_an_object_is_refused() -> None:
    with pytest.raises(SpecError):
        batchai_to_spec([1, 2])  # type: ignore[arg-type]


def test_file_helpers(tmp_path: Path) -> None:
    path = tmp_path / "my-training.json"
    path.write_text(json.dumps(job()))
    spec, _ = batchai_file_to_spec(path)
    assert spec["name"] == "my-training"
    assert load_batchai_file(path) == job()
    path.write_text("{not json")
    with pytest.raises(SpecError) as info:
        load_batchai_file(path)
    assert info.value.problems[0]["field"] == "(file)"


# ----------------------------------------------------------------------------------------------
# Tool settings → command, launcher, processes per node


def tool(key: str, settings: dict[str, Any], nodes: int = 1, **fields: Any) -> dict[str, Any]:
    return {"properties": {"nodeCount": nodes, key: settings, **fields}}


@pytest.mark.parametrize(
    ("key", "settings", "nodes", "command", "launcher", "per_node"),
    [
        ("customMpiSettings", {"commandLine": "./app --x"}, 2, "./app --x", "mpi", 1),
        ("customMpiSettings", {"commandLine": "./app", "processCount": 8}, 2, "./app", "mpi", 4),
        (
            "horovodSettings",
            {
                "pythonScriptFilePath": "t.py",
                "pythonInterpreterPath": "/opt/py/bin/python3",
                "commandLineArgs": "--lr 0.1",
                "processCount": 4,
            },
            1,
            "/opt/py/bin/python3 t.py --lr 0.1",
            "horovod",
            4,
        ),
        ("pyTorchSettings", {"pythonScriptFilePath": "t.py"}, 1, "python t.py", "process", 1),
        (  # several processes per node: each of torchrun's workers is a task with its own index
            "pyTorchSettings",
            {"pythonScriptFilePath": "t.py", "processCount": 4},
            1,
            'AZ_BATCHAI_TASK_INDEX="${RANK:-0}"; export AZ_BATCHAI_TASK_INDEX\npython t.py',
            "torchrun",
            4,
        ),
        (
            "pyTorchSettings",
            {"pythonScriptFilePath": "t.py", "communicationBackend": "NCCL"},
            2,
            "python t.py",
            "torchrun",
            1,
        ),
        (
            "tensorFlowSettings",
            {"pythonScriptFilePath": "t.py", "masterCommandLineArgs": "--m"},
            1,
            "python t.py --m",
            "process",
            1,
        ),
        (
            "tensorFlowSettings",
            {"pythonScriptFilePath": "t.py", "masterCommandLineArgs": "--m"},
            3,
            "python t.py --m",
            "process",
            1,
        ),
        (
            "chainerSettings",
            {"pythonScriptFilePath": "t.py", "commandLineArgs": "-g"},
            1,
            "python t.py -g",
            "process",
            1,
        ),
        ("chainerSettings", {"pythonScriptFilePath": "t.py"}, 2, "python t.py", "mpi", 1),
        ("chainerSettings", {"pythonScriptFilePath": "t.py", "processCount": 2}, 1, "python t.py", "mpi", 2),
        (
            "cntkSettings",
            {"pythonScriptFilePath": "t.py", "commandLineArgs": "-n 5"},
            1,
            "python t.py -n 5",
            "process",
            1,
        ),
        (
            "cntkSettings",
            {
                "languageType": "BrainScript",
                "configFilePath": "cifar.cntk",
                "commandLineArgs": "a=1",
                "processCount": 4,
            },
            2,
            "cntk configFile=cifar.cntk a=1",
            "mpi",
            2,
        ),
        ("cntkSettings", {"configFilePath": "cifar.cntk"}, 1, "cntk configFile=cifar.cntk", "process", 1),
        (
            "caffe2Settings",
            {"pythonScriptFilePath": "t.py", "commandLineArgs": "--shard_id $AZ_BATCHAI_TASK_INDEX"},
            2,
            "python t.py --shard_id $AZ_BATCHAI_TASK_INDEX",
            "process",
            1,
        ),
        (
            "caffeSettings",
            {"configFilePath": "solver.prototxt", "commandLineArgs": "-gpu all"},
            1,
            "caffe train --solver=solver.prototxt -gpu all",
            "process",
            1,
        ),
        ("caffeSettings", {"pythonScriptFilePath": "t.py", "processCount": 2}, 2, "python t.py", "mpi", 1),
    ],
)
def test_tool_settings_map_to_command_and_launcher(
    key: str,
    settings: dict[str, Any],
    nodes: int,
    command: str,
    launcher: str,
    per_node: int,
) -> None:
    spec, _ = batchai_to_spec(tool(key, settings, nodes))
    assert (spec["command"], spec["launcher"], spec["processes_per_node"], spec["nodes"]) == (
        command,
        launcher,
        per_node,
        nodes,
    )
    parse_job_spec(spec)


def test_pytorch_backend_default_and_case() -> None:
    spec, _ = batchai_to_spec(tool("pyTorchSettings", {"pythonScriptFilePath": "t.py"}, 2))
    assert spec["env"][PYTORCH_BACKEND_VAR] == "gloo"
    settings = {"pythonScriptFilePath": "t.py", "communicationBackend": "Gloo"}
    spec, _ = batchai_to_spec(tool("pyTorchSettings", settings))
    assert spec["env"][PYTORCH_BACKEND_VAR] == "gloo"


def sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(["/bin/sh", "-c", command], env=full, capture_output=True, text=True, timeout=30)


def test_custom_toolkit_runs_on_the_first_node_and_hosts_its_own_mpirun_on_the_others() -> None:
    spec, warnings = batchai_to_spec(tool("customToolkitSettings", {"commandLine": "echo ran; exit 3"}, 3), slots=2)
    assert warned(warnings, "customToolkitSettings", "first node only")
    assert (spec["launcher"], spec["nodes"], spec["processes_per_node"]) == ("mpi", 3, 2)
    assert spec["command"] == "echo ran; exit 3"
    assert spec["env"][OWN_MPIRUN_VAR] == "1"
    gpus, _ = batchai_to_spec(tool("customToolkitSettings", {"commandLine": "x"}, 2), gpus=4)
    assert gpus["processes_per_node"] == 4  # slots: the GPUs per node unless --slots
    single, _ = batchai_to_spec(tool("customToolkitSettings", {"commandLine": "echo ran"}, 1))
    assert (single["command"], single["launcher"]) == ("echo ran", "process")


def test_tensorflow_master_and_worker_arguments_by_node() -> None:
    settings = {
        "pythonScriptFilePath": "train.py",
        "pythonInterpreterPath": "echo",
        "masterCommandLineArgs": "--job_name=master --task=$AZ_BATCHAI_TASK_INDEX",
        "workerCommandLineArgs": "--job_name=worker --task=$AZ_BATCHAI_TASK_INDEX",
    }
    spec, warnings = batchai_to_spec(tool("tensorFlowSettings", settings, 2))
    assert spec["launcher"] == "process" and spec["nodes"] == 2
    master = sh(spec["command"], {"TRAINYARD_NODE_RANK": "0", "AZ_BATCHAI_TASK_INDEX": "0"})
    worker = sh(spec["command"], {"TRAINYARD_NODE_RANK": "1", "AZ_BATCHAI_TASK_INDEX": "1"})
    assert master.stdout == "train.py --job_name=master --task=0\n"
    assert worker.stdout == "train.py --job_name=worker --task=1\n"
    assert not [w for w in warnings if w.startswith("tensorFlowSettings")]


def test_tensorflow_parameter_server_layout_runs_every_task_with_tf_config() -> None:
    settings = {
        "pythonScriptFilePath": "t.py",
        "pythonInterpreterPath": "echo",
        # Workers outlive the parameter server's echo: the layout kills parameter servers once every worker is done.
        "masterCommandLineArgs": "master $AZ_BATCHAI_TASK_INDEX $TF_CONFIG; sleep 1",
        "workerCommandLineArgs": "worker $AZ_BATCHAI_TASK_INDEX; sleep 1",
        "parameterServerCommandLineArgs": "ps $AZ_BATCHAI_TASK_INDEX --ps=$AZ_BATCHAI_PS_HOSTS",
        "parameterServerCount": 1,
        "workerCount": 3,
    }
    spec, warnings = batchai_to_spec(tool("tensorFlowSettings", settings, 2))
    assert warned(warnings, "tensorFlowSettings", "3 worker(s) and 1 parameter server(s) over 2 node(s)")
    assert not warned(warnings, "tensorFlowSettings.masterCommandLineArgs", "$AZ_BATCHAI_PS_HOSTS")
    assert (spec["launcher"], spec["nodes"], spec["processes_per_node"]) == ("process", 2, 1)
    env = {
        "TRAINYARD_NUM_NODES": "2",
        "TRAINYARD_NODE_HOSTS": "127.0.0.2,127.0.0.3",
        "MASTER_PORT": "5000",
        COMPAT_VAR: API_VERSION,
        **spec["env"],
    }
    node0 = sh(spec["command"], {**env, "TRAINYARD_NODE_RANK": "0", **batchai_env({**env, "TRAINYARD_NODE_RANK": "0"})})
    lines = sorted(node0.stdout.splitlines())
    assert lines[0] == (
        't.py master 0 {"cluster":{"ps":["127.0.0.2:5004"],"worker":["127.0.0.2:5001",'
        '"127.0.0.3:5002","127.0.0.2:5003"]},"task":{"type":"worker","index":0}}'
    )
    assert lines[1:] == ["t.py ps 0 --ps=127.0.0.2:5004", "t.py worker 2"]
    node1 = sh(spec["command"], {**env, "TRAINYARD_NODE_RANK": "1", **batchai_env({**env, "TRAINYARD_NODE_RANK": "1"})})
    assert node1.stdout == "t.py worker 1\n"
    assert "workerCount" in str(refused(tool("tensorFlowSettings", {**settings, "workerCount": 1}, 2)))
    _, single = batchai_to_spec(
        tool("tensorFlowSettings", {"pythonScriptFilePath": "t.py", "workerCommandLineArgs": "--w"})
    )
    assert warned(single, "tensorFlowSettings.workerCommandLineArgs", "not used")


# ----------------------------------------------------------------------------------------------
# What cannot be honoured is refused by name


@pytest.mark.parametrize(
    ("fields", "path", "words"),
    [
        (
            {
                "mountVolumes": {
                    "azureFileShares": [
                        {
                            "accountName": "a",
                            "azureFileUrl": "https://a/s",
                            "credentials": {"accountKey": "k"},
                            "relativeMountPath": "s",
                        }
                    ]
                }
            },
            "mountVolumes.azureFileShares[0]",
            "--volume s=host:/srv/s",
        ),
        (
            {"mountVolumes": {"azureBlobFileSystems": [{}, {}]}},
            "mountVolumes.azureBlobFileSystems[1].relativeMountPath",
            "required",
        ),
        (
            {"mountVolumes": {"fileServers": [{"relativeMountPath": "nfs"}]}},
            "mountVolumes.fileServers[0]",
            "no storage given",
        ),
        (
            {"mountVolumes": {"unmanagedFileSystems": [{"relativeMountPath": "../x"}]}},
            "mountVolumes.unmanagedFileSystems[0].relativeMountPath",
            "without '..'",
        ),
        ({"nodeSetup": {"setupTask": {"commandLine": "x"}}}, "nodeSetup", "pool create --format batchai"),
        (
            {"secrets": [{"name": "K", "valueSecretReference": {"sourceVault": {"id": "v"}, "secretUrl": "u"}}]},
            "secrets[0].valueSecretReference",
            "Key Vault",
        ),
        ({"secrets": [{"name": "K"}]}, "secrets[0].value", "valueSecretReference"),
        (
            {
                "containerSettings": {
                    "imageSourceRegistry": {
                        "image": "me/img",
                        "credentials": {"username": "u", "passwordSecretReference": {"secretUrl": "https://v/s"}},
                    }
                }
            },
            "containerSettings.imageSourceRegistry.credentials.passwordSecretReference",
            "credentials.password",
        ),
        (
            {"containerSettings": {"imageSourceRegistry": {"image": "me/img", "credentials": {"username": "u"}}}},
            "containerSettings.imageSourceRegistry.credentials.password",
            "one of password or passwordSecretReference",
        ),
        (
            {"secrets": [{"name": "AZ_BATCHAI_REGISTRY_PASSWORD", "value": "v"}]},
            "secrets[0].name",
            "set by trainyard",
        ),
        ({"containerSettings": {"shmSize": "8g"}}, "containerSettings.imageSourceRegistry", "required"),
        (
            {"containerSettings": {"imageSourceRegistry": {"image": "i"}, "shmSize": "lots"}},
            "containerSettings.shmSize",
            "not a size",
        ),
        ({"cluster": {"id": "/x/clusters/no good"}}, "cluster.id", "pool name"),
        (
            {"inputDirectories": [{"id": "D", "path": "$AZ_BATCHAI_JOB_MOUNT_ROOT/data"}]},
            "inputDirectories[0].path",
            "on no mountVolumes entry",
        ),
        ({"inputDirectories": [{"id": "D", "path": "$HOME/data"}]}, "inputDirectories[0].path", "$HOME"),
        ({"inputDirectories": [{"id": "D", "path": "data/train"}]}, "inputDirectories[0].path", "relative"),
        (
            {"inputDirectories": [{"id": "D", "path": "https://acct.blob.core.windows.net/c/p"}]},
            "inputDirectories[0].path",
            "az://<container>",
        ),
        ({"inputDirectories": [{"id": "my-data", "path": "s3://b/p"}]}, "inputDirectories[0].id", "letters"),
        (
            {"inputDirectories": [{"id": "D", "path": "s3://b/p"}, {"id": "d", "path": "s3://b/q"}]},
            "inputDirectories[1].id",
            "duplicate",
        ),
        ({"inputDirectories": [{"id": "D"}]}, "inputDirectories[0].path", "required"),
        (
            {"outputDirectories": [{"id": "M", "pathPrefix": "s3://b/o", "pathSuffix": "$X/m"}]},
            "outputDirectories[0].pathSuffix",
            "expand",
        ),
        (
            {"environmentVariables": [{"name": "TRAINYARD_NODE_RANK", "value": "3"}]},
            "environmentVariables[0].name",
            "reserved",
        ),
        (
            {"environmentVariables": [{"name": "AZ_BATCHAI_NUM_GPUS", "value": "3"}]},
            "environmentVariables[0].name",
            "set by trainyard",
        ),
        ({"environmentVariables": [{"name": "1BAD", "value": "x"}]}, "environmentVariables[0].name", "not a valid"),
        (
            {"environmentVariables": [{"name": "A", "value": "1"}], "secrets": [{"name": "A", "value": "2"}]},
            "secrets[0].name",
            "environmentVariables[0]",
        ),
        ({"environmentVariables": [{"name": "A"}]}, "environmentVariables[0].value", "required"),
        ({"environmentVariables": {"name": "A", "value": "1"}}, "environmentVariables", "a list"),
        ({"constraints": {"maxWallClockTime": "P1M"}}, "constraints.maxWallClockTime", "months"),
        ({"constraints": {"maxWallClockTime": "an hour"}}, "constraints.maxWallClockTime", "ISO 8601"),
        ({"schedulingPriority": "urgent"}, "schedulingPriority", "low, normal or high"),
        ({"nodeCount": 0}, "nodeCount", "at least 1"),
        ({"nodeCount": "2"}, "nodeCount", "an integer"),
        ({"nodeCount": "[parameters('nodes')]"}, "nodeCount", "ARM template expressions"),
        ({"nodeCount": True}, "nodeCount", "an integer"),
        ({"jobPreparation": {}}, "jobPreparation.commandLine", "required"),
    ],
)
def test_unsupported_or_invalid_fields_are_refused_by_name(
    fields: dict[str, Any],
    path: str,
    words: str,
) -> None:
    problems = refused(job(**fields))
    assert path in problems, problems
    assert words in problems[path]


@pytest.mark.parametrize(
    ("key", "settings", "nodes", "path", "words"),
    [
        (
            "pyTorchSettings",
            {"pythonScriptFilePath": "t.py", "communicationBackend": "TCP"},
            2,
            "pyTorchSettings.communicationBackend",
            "removed",
        ),
        (
            "pyTorchSettings",
            {"pythonScriptFilePath": "t.py", "communicationBackend": "MPI"},
            2,
            "pyTorchSettings.communicationBackend",
            "gloo or nccl",
        ),
        (
            "pyTorchSettings",
            {"pythonScriptFilePath": "t.py", "communicationBackend": "smoke"},
            2,
            "pyTorchSettings.communicationBackend",
            "gloo or nccl",
        ),
        (
            "horovodSettings",
            {"pythonScriptFilePath": "t.py", "processCount": 3},
            2,
            "horovodSettings.processCount",
            "multiple of 2",
        ),
        ("customMpiSettings", {"commandLine": "x", "processCount": 1}, 2, "customMpiSettings.processCount", "evenly"),
        (
            "customMpiSettings",
            {"commandLine": "x", "processCount": 0},
            1,
            "customMpiSettings.processCount",
            "at least 1",
        ),
        ("customMpiSettings", {"processCount": 2}, 1, "customMpiSettings.commandLine", "required"),
        ("customToolkitSettings", {"commandLine": "  "}, 1, "customToolkitSettings.commandLine", "empty"),
        ("customToolkitSettings", {}, 1, "customToolkitSettings.commandLine", "required"),
        ("horovodSettings", {"commandLineArgs": "x"}, 1, "horovodSettings.pythonScriptFilePath", "required"),
        (
            "caffeSettings",
            {"configFilePath": "s.prototxt", "pythonScriptFilePath": "t.py"},
            1,
            "caffeSettings.pythonScriptFilePath",
            "configFilePath",
        ),
        ("caffeSettings", {"commandLineArgs": "x"}, 1, "caffeSettings", "one of configFilePath"),
        (
            "cntkSettings",
            {"languageType": "BrainScript", "pythonScriptFilePath": "t.py"},
            1,
            "cntkSettings.pythonScriptFilePath",
            "Python",
        ),
        ("cntkSettings", {"languageType": "BrainScript"}, 1, "cntkSettings.configFilePath", "required"),
        (
            "cntkSettings",
            {"languageType": "Python", "configFilePath": "c.cntk", "pythonScriptFilePath": "t.py"},
            1,
            "cntkSettings.configFilePath",
            "BrainScript",
        ),
        (
            "cntkSettings",
            {"languageType": "Lua", "pythonScriptFilePath": "t.py"},
            1,
            "cntkSettings.languageType",
            "BrainScript or Python",
        ),
        ("customToolkitSettings", "echo hi", 1, "customToolkitSettings", "an object"),
    ],
)
def test_tool_settings_that_cannot_be_honoured_are_refused(
    key: str,
    settings: Any,
    nodes: int,
    path: str,
    words: str,
) -> None:
    problems = refused(tool(key, settings, nodes))
    assert path in problems, problems
    assert words in problems[path]


def test_exactly_one_tool_is_required() -> None:
    assert "one of customToolkitSettings" in refused({"properties": {"nodeCount": 1}})["(properties)"]
    both = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "a"},
            "horovodSettings": {"pythonScriptFilePath": "t.py"},
        }
    }
    assert "only one" in refused(both)["horovodSettings"]


def test_every_problem_is_named_at_once() -> None:
    problems = refused(
        job(
            nodeCount=0,
            schedulingPriority="asap",
            mountVolumes={"azureFileShares": [{"relativeMountPath": "a"}]},
            secrets=[{"name": "S", "valueSecretReference": {}}],
            constraints={"maxWallClockTime": "soon"},
        )
    )
    assert set(problems) == {
        "nodeCount",
        "schedulingPriority",
        "mountVolumes.azureFileShares[0]",
        "secrets[0].valueSecretReference",
        "constraints.maxWallClockTime",
    }


def test_what_trainyard_itself_refuses_is_refused_too() -> None:
    with pytest.raises(SpecError) as info:
        batchai_to_spec(job(), name="x" * 300)
    assert info.value.problems[0]["field"] == "name"


# ----------------------------------------------------------------------------------------------
# What is honoured in part is warned about by name


def test_partly_honoured_and_unknown_fields_are_warned_about() -> None:
    doc = job(
        containerSettings={"imageSourceRegistry": {"image": "img:1"}, "shmSize": "2g"},
        executionState="running",
        toolType="custom",
        process_count=2,
        inputDirectories=[{"id": "DATA", "path": "s3://b/d", "type": "dataset"}],
    )
    spec, warnings = batchai_to_spec(doc)
    assert spec["image"] == "img:1"
    assert spec["container"] == {"shm_size": "2g"}
    assert warned(warnings, "executionState", "read-only")
    assert warned(warnings, "toolType", "read-only")
    assert warned(warnings, "process_count", "ignored")
    assert warned(warnings, "inputDirectories[0].type", "ignored")
    assert spec["inputs"] == [{"id": "DATA", "uri": "s3://b/d"}]


def test_missing_node_count_is_one_node_with_a_warning() -> None:
    spec, warnings = batchai_to_spec({"properties": {"customToolkitSettings": {"commandLine": "x"}}})
    assert spec["nodes"] == 1
    assert warned(warnings, "nodeCount", "missing")


def test_references_to_variables_trainyard_does_not_set_are_warned_about() -> None:
    command = (
        "python $AZ_BATCHAI_INPUT_MISSING/t.py --tmp ${AZ_BATCHAI_SHARED_JOB_TEMP} "
        "--out $AZ_BATCHAI_OUTPUT_MODEL --root $AZ_BATCHAI_JOB_MOUNT_ROOT/data "
        "--in $AZ_BATCHAI_INPUT_DATA"
    )
    doc = job(
        customToolkitSettings={"commandLine": command},
        inputDirectories=[{"id": "DATA", "path": "/srv/data"}],
        environmentVariables=[{"name": "WORKERS", "value": "$AZ_BATCHAI_WORKER_HOSTS"}],
    )
    spec, warnings = batchai_to_spec(doc)
    assert spec["inputs"] == [{"id": "DATA", "uri": "file:///srv/data"}]
    path = "customToolkitSettings.commandLine"
    assert warned(
        warnings,
        path,
        "$AZ_BATCHAI_INPUT_MISSING, which trainyard does not set (no inputDirectories entry has id 'MISSING')",
    )
    assert not warned(warnings, path, "$AZ_BATCHAI_SHARED_JOB_TEMP")  # one node: its own temp is shared
    assert warned(warnings, path, "$AZ_BATCHAI_OUTPUT_MODEL, which trainyard does not set (no outputDirectories")
    assert warned(warnings, path, "$AZ_BATCHAI_JOB_MOUNT_ROOT/data, on no mountVolumes entry")
    assert not warned(warnings, path, "$AZ_BATCHAI_INPUT_DATA")
    assert warned(warnings, "environmentVariables[0].value", "$AZ_BATCHAI_WORKER_HOSTS")


def test_registry_server_is_put_in_front_of_the_image() -> None:
    def image(registry: dict[str, Any]) -> tuple[str, list[str]]:
        spec, warnings = batchai_to_spec(job(containerSettings={"imageSourceRegistry": registry}))
        return spec["image"], warnings

    prefixed, warnings = image({"image": "team/train:2", "serverUrl": "https://myacr.azurecr.io"})
    assert prefixed == "myacr.azurecr.io/team/train:2"
    assert warned(warnings, "containerSettings.imageSourceRegistry.serverUrl", prefixed)
    assert image({"image": "myacr.azurecr.io/train:2", "serverUrl": "myacr.azurecr.io"}) == (
        "myacr.azurecr.io/train:2",
        image({"image": "x"})[1],
    )
    hub = {"image": "pytorch/pytorch", "serverUrl": "https://index.docker.io/v1/"}
    assert image(hub)[0] == "pytorch/pytorch"


def test_gpus_ask_for_resources() -> None:
    spec, warnings = batchai_to_spec(example("pytorch-gloo.json"), gpus=4)
    assert spec["resources"] == {"gpus": 4}
    assert parse_job_spec(spec).resources.gpus == 4
    assert not any("resources.gpus" in w for w in warnings)


# ----------------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("P7D", 7 * 86400),
        ("PT1H30M", 5400),
        ("P1DT12H", 129600),
        ("PT0.5S", 0.5),
        ("P2W", 14 * 86400),
        ("PT36H", 36 * 3600),
        ("pt45m", 2700),
        ("PT1,5H", 5400),
        ("P1DT1H1M1S", 90061),
        ("7.00:00:00", 7 * 86400),
        ("01:30:00", 5400),
        ("1.02:03:04.5", 93784.5),
        ("00:10", 600),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_iso8601_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "P1DT", "1H", "P1M", "P1Y", "PT0S", "00:00:00", "24:00:00", "00:60:00", "-PT1H", "P1H"],
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso8601_duration(text)


def test_wall_clock_in_a_job_file() -> None:
    spec, _ = batchai_to_spec(job(constraints={"maxWallClockTime": "P1DT2H"}))
    assert spec["max_wall_clock"] == 93600
    assert parse_job_spec(spec).max_wall_clock == 93600
    spec, _ = batchai_to_spec(job(constraints={"maxWallClockTime": "PT0.5S"}))
    assert spec["max_wall_clock"] == 0.5
    assert "max_wall_clock" not in batchai_to_spec(job())[0]


# ----------------------------------------------------------------------------------------------
# batchai_env: the AZ_BATCHAI_* variables at launch


def launch_env(**extra: str) -> dict[str, str]:
    """What a worker's environment for one part looks like (SPEC §5), for a Batch AI job."""
    env = {
        COMPAT_VAR: API_VERSION,
        "TRAINYARD_JOB_ID": "j-42",
        "TRAINYARD_ATTEMPT": "2",
        "TRAINYARD_NODE_RANK": "1",
        "TRAINYARD_NUM_NODES": "2",
        "TRAINYARD_HOSTFILE": "/w/j-42/hostfile",
        "TRAINYARD_INPUT_SCRIPTS": "/w/j-42/inputs/SCRIPTS",
        "TRAINYARD_OUTPUT_MODEL": "/w/j-42/outputs/MODEL",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "TMPDIR": "/scratch",
    }
    env.update(extra)
    return env


def test_without_the_marker_nothing_is_added() -> None:
    env = launch_env()
    del env[COMPAT_VAR]
    assert batchai_env(env) == {}


def test_batchai_env_derives_the_variables_from_trainyards() -> None:
    out = batchai_env(launch_env())
    assert out["AZ_BATCHAI_TASK_INDEX"] == "1"
    assert out["AZ_BATCHAI_NUM_GPUS"] == "2"
    assert out["AZ_BATCHAI_MPI_HOST_FILE"] == "/w/j-42/hostfile"
    assert out["AZ_BATCHAI_INPUT_SCRIPTS"] == "/w/j-42/inputs/SCRIPTS"
    assert out["AZ_BATCHAI_OUTPUT_MODEL"] == "/w/j-42/outputs/MODEL"
    scratch = "/scratch/trainyard-batchai/j-42/2/node-1"
    assert out["AZ_BATCHAI_JOB_TEMP"] == f"{scratch}/temp"
    assert out["AZ_BATCHAI_JOB_MOUNT_ROOT"] == f"{scratch}/jobmounts"
    assert out["AZ_BATCHAI_MOUNT_ROOT"] == f"{scratch}/mounts"
    assert out["AZ_BATCHAI_JOB_TEMP_DIR"] == out["AZ_BATCHAI_JOB_TEMP"]
    assert out["AZ_BATCHAI_SHARED_JOB_TEMP"] == f"{scratch}/sharedtemp/j-42/2"
    assert out["AZ_BATCHAI_STDOUTERR_DIR"] == f"{scratch}/stdouterr"
    assert set(LOCAL_DIR_VARIABLES) <= set(out)
    assert not [k for k in out if k.startswith("TRAINYARD_")]


def test_task_index_is_the_process_rank_when_there_is_one() -> None:
    assert batchai_env(launch_env(RANK="3"))["AZ_BATCHAI_TASK_INDEX"] == "3"
    env = launch_env()
    del env["TRAINYARD_NODE_RANK"]
    assert batchai_env(env)["AZ_BATCHAI_TASK_INDEX"] == "0"


@pytest.mark.parametrize(
    ("visible", "count"),
    [
        ("0", 1),
        ("0,1,2,3", 4),
        ("", 0),
        (None, 0),
        ("GPU-8a1b,GPU-9c2d", 2),
        ("MIG-1f2e", 1),
        ("0,-1,1", 1),
        ("-1", 0),
        ("NoDevFiles", 0),
        (" 4 , 5 ", 2),
    ],
)
def test_num_gpus_counts_the_visible_devices(visible: str | None, count: int) -> None:
    env = launch_env()
    env.pop("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    assert batchai_env(env)["AZ_BATCHAI_NUM_GPUS"] == str(count)


def test_pytorch_init_method_from_master_address() -> None:
    out = batchai_env(launch_env(MASTER_ADDR="10.0.0.4", MASTER_PORT="29500"))
    assert out["AZ_BATCHAI_PYTORCH_INIT_METHOD"] == "tcp://10.0.0.4:29500"
    ipv6 = batchai_env(launch_env(MASTER_ADDR="fd00::4", MASTER_PORT="1"))
    assert ipv6["AZ_BATCHAI_PYTORCH_INIT_METHOD"] == "tcp://[fd00::4]:1"
    assert "AZ_BATCHAI_PYTORCH_INIT_METHOD" not in batchai_env(launch_env())


def test_spec_keeps_the_case_of_ids_and_scratch_dir_is_used() -> None:
    spec = parse_job_spec(
        batchai_to_spec(
            job(
                inputDirectories=[{"id": "Data", "path": "s3://b/d"}],
                outputDirectories=[{"id": "model", "pathPrefix": "s3://b/o"}],
            )
        )[0]
    )
    env = launch_env(TRAINYARD_INPUT_DATA="/w/in/Data", TRAINYARD_OUTPUT_MODEL="/w/out/model")
    out = batchai_env(env, spec=spec, scratch_dir="/node/part")
    assert out["AZ_BATCHAI_INPUT_Data"] == out["AZ_BATCHAI_INPUT_DATA"] == "/w/in/Data"
    assert out["AZ_BATCHAI_OUTPUT_model"] == "/w/out/model"
    assert out["AZ_BATCHAI_JOB_TEMP"] == "/node/part/temp"


def test_stdouterr_dir_is_based_on_the_prefix() -> None:
    under_mount = batchai_env(launch_env(**{STDOUTERR_PREFIX_VAR: "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs"}))
    assert under_mount["AZ_BATCHAI_STDOUTERR_DIR"] == (
        "/scratch/trainyard-batchai/j-42/2/node-1/jobmounts/logs/j-42/2/stdouterr"
    )
    absolute = batchai_env(launch_env(**{STDOUTERR_PREFIX_VAR: "/data/logs/"}))
    assert absolute["AZ_BATCHAI_STDOUTERR_DIR"] == "/data/logs/j-42/2/stdouterr"
    for prefix in ("az://logs/x", "$SOMEWHERE/logs", "relative/logs"):
        out = batchai_env(launch_env(**{STDOUTERR_PREFIX_VAR: prefix}))
        assert out["AZ_BATCHAI_STDOUTERR_DIR"] == "/scratch/trainyard-batchai/j-42/2/node-1/stdouterr"


def test_the_jobs_own_variables_referring_to_batchai_ones_are_expanded() -> None:
    env = launch_env(
        DATA_FILE="$AZ_BATCHAI_INPUT_SCRIPTS/numbers.txt",
        GPUS="${AZ_BATCHAI_NUM_GPUS} gpus",
        OTHER="$HOME/x",
        PLAIN="no refs",
        TOKEN="$AZ_BATCHAI_TASK_INDEX-secret",
    )
    out = batchai_env(env)
    assert out["DATA_FILE"] == "/w/j-42/inputs/SCRIPTS/numbers.txt"
    assert out["GPUS"] == "2 gpus"
    assert "OTHER" not in out and "PLAIN" not in out
    # With the spec, only its env is expanded, never a secret.
    spec = parse_job_spec(
        batchai_to_spec(
            job(
                environmentVariables=[{"name": "DATA_FILE", "value": "$AZ_BATCHAI_INPUT_SCRIPTS/numbers.txt"}],
                secrets=[{"name": "TOKEN", "value": "$AZ_BATCHAI_TASK_INDEX-secret"}],
            )
        )[0]
    )
    out = batchai_env(env, spec=spec)
    assert "DATA_FILE" in out and "TOKEN" not in out


# ----------------------------------------------------------------------------------------------
# End to end: translate, build the part's environment as the worker does, run the command


def part_environment(spec: dict[str, Any], tmp_path: Path, rank: int = 0, **launch: str) -> dict[str, str]:
    parsed = parse_job_spec(spec)
    env = {"PATH": os.environ["PATH"], **parsed.env, **parsed.secrets, **launch}
    env.update(
        {
            "TRAINYARD_JOB_ID": "j-1",
            "TRAINYARD_ATTEMPT": "1",
            "TRAINYARD_NODE_RANK": str(rank),
            "TRAINYARD_NUM_NODES": str(parsed.nodes),
            "CUDA_VISIBLE_DEVICES": "0",
            "TRAINYARD_HOSTFILE": str(tmp_path / "hostfile"),
            "RANK": str(rank),
        }
    )
    for kind, refs in (("INPUT", parsed.inputs), ("OUTPUT", parsed.outputs)):
        for ref in refs:
            local = tmp_path / kind.lower() / ref.id
            local.mkdir(parents=True, exist_ok=True)
            env[f"TRAINYARD_{kind}_{ref.id.upper()}"] = str(local)
    env.update(batchai_env(env, spec=parsed, scratch_dir=str(tmp_path / "scratch")))
    for var in LOCAL_DIR_VARIABLES:
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    return env


def test_io_example_runs_with_the_batchai_variables(tmp_path: Path) -> None:
    spec, _ = batchai_to_spec(example("io-env-secrets.json"), name="sum")
    env = part_environment(spec, tmp_path)
    (tmp_path / "input" / "DATA" / "numbers.txt").write_text((EXAMPLES / "data" / "numbers.txt").read_text())
    done = sh(spec["command"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "sum of numbers: 10\n"
    assert (tmp_path / "output" / "REPORT" / "report.txt").read_text() == "sum of numbers: 10\n"


def test_custom_toolkit_example_runs_prepare_then_command(tmp_path: Path) -> None:
    spec, _ = batchai_to_spec(example("custom-toolkit.json"))
    env = part_environment(spec, tmp_path)
    prepared = sh(spec["prepare"], env)
    assert prepared.returncode == 0, prepared.stderr
    done = sh(spec["command"], env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "task 0 of trainyard with 1 GPU(s)"
    assert lines[1] == f"preparing in {env['AZ_BATCHAI_JOB_TEMP']}"


def test_pytorch_example_runs_two_ranks_with_gloo(tmp_path: Path) -> None:
    """The Batch AI way of starting distributed PyTorch (rank, world size, backend and init URL on
    the command line from AZ_BATCHAI_* variables) works with what batchai_env derives."""
    pytest.importorskip("torch")

    spec, _ = batchai_to_spec(example("pytorch-gloo.json"), name="pt")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parts = []
    for rank in (0, 1):
        node = tmp_path / f"node{rank}"
        env = part_environment(spec, node, rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        staged = Path(env["AZ_BATCHAI_INPUT_SCRIPTS"])  # the input as the worker would stage it
        (staged / "train_pytorch.py").write_text((EXAMPLES / "scripts" / "train_pytorch.py").read_text())
        command = spec["command"].replace("python ", f"{shlex.quote(sys.executable)} ", 1)  # with torch
        parts.append(
            subprocess.Popen(
                ["/bin/sh", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=120) for p in parts]
    for part, (_, err) in zip(parts, outputs, strict=True):
        assert part.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["all_reduce"] for r in results] == [3.0, 3.0]
    assert results[1]["env"]["AZ_BATCHAI_PYTORCH_BACKEND"] == "gloo"
    assert results[1]["env"]["AZ_BATCHAI_PYTORCH_INIT_METHOD"] == f"tcp://127.0.0.1:{port}"
    written = json.loads((tmp_path / "node0" / "output" / "MODEL" / "result.json").read_text())
    assert written == {"world_size": 2, "all_reduce": 3.0}


def test_registry_credentials_become_a_login_whose_password_is_a_write_only_secret() -> None:
    doc = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "train"},
            "containerSettings": {
                "imageSourceRegistry": {
                    "serverUrl": "https://demo.azurecr.io",
                    "image": "demo.azurecr.io/team/train:1",
                    "credentials": {"username": "puller", "password": "canary-pw"},
                }
            },
        }
    }
    spec, warnings = batchai_to_spec(doc, name="acr")
    assert spec["image"] == "demo.azurecr.io/team/train:1"
    assert spec["container"]["registry"] == {
        "username": "puller",
        "server": "demo.azurecr.io",
        "password_secret": "AZ_BATCHAI_REGISTRY_PASSWORD",
    }
    assert spec["secrets"] == {"AZ_BATCHAI_REGISTRY_PASSWORD": "canary-pw"}
    assert any(w.startswith("containerSettings.imageSourceRegistry.credentials.password: kept as") for w in warnings)
    assert not any("canary-pw" in w for w in warnings)
    public = parse_job_spec(spec).public_dict()
    assert "canary-pw" not in json.dumps(public)
    assert public["secrets"] == {"AZ_BATCHAI_REGISTRY_PASSWORD": "***"}
