"""The 17 official Batch AI recipe job files (tests/data/batchai-recipes, MIT), translated as published.

Their storage (`<AZURE_BATCHAI_STORAGE_ACCOUNT>` shares and containers) is mapped onto trainyard
volumes by --volume KEY=TARGET; everything else is the file as its users wrote it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from trainyard.batchai import (
    OWN_MPIRUN_VAR,
    TF_LAYOUT_VAR,
    batchai_env,
    batchai_file_to_spec,
    parse_volume_target,
)
from trainyard.spec import SpecError, parse_job_spec

RECIPES = Path(__file__).parent / "data" / "batchai-recipes"
MAPPING = {
    "logs": "host:/srv/batchai/logs",
    "scripts": "host:/srv/batchai/scripts",
    "data": "az://data",
    "external": "volume:team-external",
}
J = ".batchai/jobmounts/"
LS = {"bai_logs": J + "logs", "bai_scripts": J + "scripts"}
LSD = {**LS, "bai_data": J + "data"}
EXT = {"bai_cluster_external": ".batchai/mounts/external"}

# file: (launcher, nodes, processes per node, volumes {name: mount_path}, image, env the job file implies)
EXPECTED: dict[str, tuple[str, int, int, dict[str, str], str, dict[str, str]]] = {
    "Batch-Scoring__Distributed-Batch-Scoring-in-Tensorflow-with-GPU__job.json": (
        "mpi",
        2,
        1,
        LSD,
        "tensorflow/tensorflow:1.7.0-gpu",
        {
            "AZ_BATCHAI_INPUT_SCRIPT": "$AZ_BATCHAI_JOB_MOUNT_ROOT/scripts/classification_samples",
            "AZ_BATCHAI_INPUT_IMAGES": "$AZ_BATCHAI_JOB_MOUNT_ROOT/data/unlabeled_images",
            "AZ_BATCHAI_INPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/data/pretained_models",
            "AZ_BATCHAI_OUTPUT_LABEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/scoring",
        },
    ),
    "CNTK__CNTK-GPU-BrainScript-Distributed__job.json": (
        "mpi",
        2,
        1,
        EXT,
        "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0",
        {
            "AZ_BATCHAI_INPUT_DATASET": "$AZ_BATCHAI_MOUNT_ROOT/external/mnist_database",
            "AZ_BATCHAI_INPUT_CONFIG": "$AZ_BATCHAI_MOUNT_ROOT/external/cntk_samples",
            "AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_MOUNT_ROOT/external/brainscript-2/Models",
        },
    ),
    "CNTK__CNTK-GPU-BrainScript__job.json": (
        "process",
        1,
        1,
        EXT,
        "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_MOUNT_ROOT/external/brainscript/Models"},
    ),
    "CNTK__CNTK-GPU-Python-Distributed-Infiniband__job.json": (
        "mpi",
        2,
        4,
        LS,
        "batchaitraining/cntk:2.3-gpu-1bitsgd-py36-cuda8-cudnn6-intelmpi",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/cntk-ib"},
    ),
    "CNTK__CNTK-GPU-Python-Distributed__job.json": (
        "mpi",
        2,
        1,
        LS,
        "microsoft/cntk:2.5.1-gpu-python2.7-cuda9.0-cudnn7.0",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/cntk-2"},
    ),
    "CNTK__CNTK-GPU-Python__job.json": (
        "process",
        1,
        1,
        LSD,
        "microsoft/cntk:2.5.1-gpu-python2.7-cuda9.0-cudnn7.0",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/cntk"},
    ),
    "Caffe2__Caffe2-GPU-Distributed__job.json": ("process", 2, 1, LSD, "caffe2ai/caffe2", {}),
    "Chainer__Chainer-GPU-Distributed-Infiniband__job.json": (
        "mpi",
        2,
        4,
        LS,
        "batchaitraining/chainermn:IntelMPI",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/chainer-ib"},
    ),
    "Chainer__Chainer-GPU-Distributed__job.json": (
        "mpi",
        2,
        1,
        LS,
        "batchaitraining/chainermn:openMPI",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/chainer"},
    ),
    "Horovod__Horovod-Infiniband-Benchmark__job.json": ("horovod", 2, 4, LS, "tensorflow/tensorflow:1.8.0-gpu", {}),
    "Horovod__Horovod-PyTorch__job.json": (
        "horovod",
        2,
        1,
        {**LS, **EXT},
        "batchaitraining/pytorch:0.4.0-cp36-cuda9-cudnn7",
        {"AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_MOUNT_ROOT/external/hvd-pytorch/Models"},
    ),
    "Horovod__Horovod-Tensorflow__job.json": ("horovod", 2, 1, LS, "tensorflow/tensorflow:1.8.0-gpu", {}),
    "Keras__Keras-GPU__job_cntk.json": ("process", 1, 1, LS, "microsoft/cntk:2.5.1-gpu-python2.7-cuda9.0-cudnn7.0", {}),
    "Keras__Keras-GPU__job_tensorflow.json": ("process", 1, 1, LS, "tensorflow/tensorflow:1.8.0-gpu", {}),
    "PyTorch__PyTorch-GPU-Distributed-Gloo__job.json": (
        "torchrun",
        2,
        1,
        LS,
        "pytorch/pytorch:0.4_cuda9_cudnn7",
        {"AZ_BATCHAI_PYTORCH_BACKEND": "gloo"},
    ),
    "TensorFlow__TensorFlow-GPU-Distributed__job.json": (
        "process",
        2,
        1,
        LSD,
        "tensorflow/tensorflow:1.8.0-gpu",
        {
            TF_LAYOUT_VAR: "1,2",
            "AZ_BATCHAI_OUTPUT_MODEL": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/tf-ps/Models",
            "AZ_BATCHAI_OUTPUT_TENSORBOARD": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs/tf-ps/Logs",
        },
    ),
    "TensorFlow__TensorFlow-GPU__job.json": ("process", 1, 1, LS, "tensorflow/tensorflow:1.8.0-gpu", {}),
}
NAMES = {
    "Batch-Scoring__Distributed-Batch-Scoring-in-Tensorflow-with-GPU__job.json": "scoring",
    "CNTK__CNTK-GPU-BrainScript-Distributed__job.json": "brainscript-2",
    "CNTK__CNTK-GPU-BrainScript__job.json": "brainscript",
    "CNTK__CNTK-GPU-Python-Distributed__job.json": "cntk-2",
    "CNTK__CNTK-GPU-Python-Distributed-Infiniband__job.json": "cntk-ib",
    "CNTK__CNTK-GPU-Python__job.json": "cntk",
    "Chainer__Chainer-GPU-Distributed-Infiniband__job.json": "chainer-ib",
    "Chainer__Chainer-GPU-Distributed__job.json": "chainer",
    "Horovod__Horovod-PyTorch__job.json": "hvd-pytorch",
    "TensorFlow__TensorFlow-GPU-Distributed__job.json": "tf-ps",
}
SOURCES = {
    "bai_logs": {"kind": "host", "path": "/srv/batchai/logs"},
    "bai_scripts": {"kind": "host", "path": "/srv/batchai/scripts"},
    "bai_data": {"kind": "blob", "uri": "az://data"},
    "bai_cluster_external": {"volume": "team-external"},
}


def test_all_seventeen_recipes_are_here_with_their_license() -> None:
    assert sorted(p.name for p in RECIPES.glob("*.json")) == sorted(EXPECTED)
    assert "MIT License" in (RECIPES / "LICENSE").read_text()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_recipe_translates_to_its_launcher_nodes_processes_mounts_and_variables(name: str) -> None:
    launcher, nodes, per_node, volumes, image, env = EXPECTED[name]
    mapping = {k: v for k, v in MAPPING.items() if f"bai_{k}" in volumes or f"bai_cluster_{k}" in volumes}
    spec, warnings = batchai_file_to_spec(RECIPES / name, name=NAMES.get(name), volumes=mapping, gpus=1)
    parse_job_spec(spec)
    assert (spec["launcher"], spec["nodes"], spec["processes_per_node"]) == (launcher, nodes, per_node)
    assert {v["name"]: v["mount_path"] for v in spec["volumes"]} == volumes
    for volume in spec["volumes"]:
        assert {k: v for k, v in volume.items() if k not in ("name", "mount_path")} == SOURCES[volume["name"]]
    assert spec["image"] == image
    assert {k: spec["env"].get(k) for k in env} == env
    prefix = spec["env"]["AZ_BATCHAI_STDOUTERR_PREFIX"]
    assert prefix.startswith(("$AZ_BATCHAI_JOB_MOUNT_ROOT/", "$AZ_BATCHAI_MOUNT_ROOT/"))
    assert spec["resources"] == {"gpus": 1} and spec["max_retries"] == 0
    assert not [w for w in warnings if "not used" in w and "--volume" in w], warnings


def test_recipes_run_their_job_preparation_in_the_jobs_container() -> None:
    spec, warnings = batchai_file_to_spec(
        RECIPES / "Horovod__Horovod-Tensorflow__job.json", volumes={"logs": "host:/l", "scripts": "host:/s"}
    )
    assert "prepare" not in spec
    assert "pip install horovod" in spec["command"] and spec["command"].endswith("tensorflow_mnist.py")
    assert any(w.startswith("jobPreparation: runs in the job's container") for w in warnings)


def test_a_recipe_job_preparation_runs_once_per_container_before_the_command(tmp_path: Path) -> None:
    spec, _ = batchai_file_to_spec(
        RECIPES / "Keras__Keras-GPU__job_tensorflow.json", volumes={"logs": "host:/l", "scripts": "host:/s"}
    )
    command = (
        spec["command"]
        .replace("pip install keras", f"echo prep >> {tmp_path}/log")
        .replace("python $AZ_BATCHAI_JOB_MOUNT_ROOT/scripts/keras/mnist_cnn.py", f"echo run >> {tmp_path}/log")
    )
    env = {"PATH": "/usr/bin:/bin", "TRAINYARD_JOB_ID": uuid.uuid4().hex, "TRAINYARD_ATTEMPT": "1"}
    for _ in range(2):
        subprocess.run(["/bin/sh", "-c", command], env=env, check=True, timeout=10)
    assert (tmp_path / "log").read_text() == "prep\nrun\nrun\n"


def test_without_a_mapping_each_mount_is_refused_by_name_with_the_option() -> None:
    with pytest.raises(SpecError) as info:
        batchai_file_to_spec(RECIPES / "TensorFlow__TensorFlow-GPU-Distributed__job.json")
    problems = {p["field"]: p["reason"] for p in info.value.problems}
    assert set(problems) == {
        "mountVolumes.azureFileShares[0]",
        "mountVolumes.azureFileShares[1]",
        "mountVolumes.azureBlobFileSystems[0]",
        "outputDirectories[0].pathPrefix",
        "outputDirectories[1].pathPrefix",
    }
    assert "on no mountVolumes entry" in problems["outputDirectories[0].pathPrefix"]
    assert "--volume logs=host:/srv/logs" in problems["mountVolumes.azureFileShares[0]"]
    assert "blob container 'data'" in problems["mountVolumes.azureBlobFileSystems[0]"]


def test_mounts_are_found_by_share_or_container_name_too() -> None:
    spec, _ = batchai_file_to_spec(
        RECIPES / "CNTK__CNTK-GPU-Python__job.json",
        volumes={
            "https://<AZURE_BATCHAI_STORAGE_ACCOUNT>.file.core.windows.net/logs": "sync:file:///srv/logs",
            "scripts": "/srv/scripts",
            "data": "blob:s3://bucket/data",
        },
    )
    assert [(v["name"], v.get("kind"), v.get("uri") or v.get("path")) for v in spec["volumes"]] == [
        ("bai_logs", "sync", "file:///srv/logs"),
        ("bai_scripts", "host", "/srv/scripts"),
        ("bai_data", "blob", "s3://bucket/data"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("volume:team-data", {"volume": "team-data"}),
        ("host:/mnt/nfs", {"kind": "host", "path": "/mnt/nfs"}),
        ("/mnt/nfs", {"kind": "host", "path": "/mnt/nfs"}),
        ("file:///mnt/nfs", {"kind": "host", "path": "/mnt/nfs"}),
        ("az://c/p", {"kind": "blob", "uri": "az://c/p"}),
        ("sync:az://c/p", {"kind": "sync", "uri": "az://c/p"}),
        ("sync:file:///x", {"kind": "sync", "uri": "file:///x"}),
    ],
)
def test_volume_targets(text: str, expected: dict[str, Any]) -> None:
    assert parse_volume_target(text) == expected


@pytest.mark.parametrize("text", ["volume:", "relative/dir", "http://x/y", "host:/a/../b"])
def test_bad_volume_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_volume_target(text)


def test_inputs_and_outputs_on_mounts_are_expanded_at_launch() -> None:
    scoring = RECIPES / "Batch-Scoring__Distributed-Batch-Scoring-in-Tensorflow-with-GPU__job.json"
    spec, _ = batchai_file_to_spec(scoring, name="scoring", volumes=MAPPING)
    env = {
        **spec["env"],
        "TRAINYARD_JOB_ID": "j-1",
        "TRAINYARD_ATTEMPT": "1",
        "TRAINYARD_NODE_RANK": "1",
        "TRAINYARD_NODE_HOSTS": "127.0.0.2,127.0.0.3",
        "WORLD_SIZE": "2",
        "TRAINYARD_HOSTFILE": "/w/hostfile",
    }
    out = batchai_env(env, scratch_dir="/w/.batchai")
    assert out["AZ_BATCHAI_INPUT_SCRIPT"] == "/w/.batchai/jobmounts/scripts/classification_samples"
    assert out["AZ_BATCHAI_OUTPUT_LABEL"] == "/w/.batchai/jobmounts/logs/scoring"
    assert out["AZ_BATCHAI_STDOUTERR_DIR"] == "/w/.batchai/jobmounts/logs/j-1/1/stdouterr"
    assert out["AZ_BATCH_HOST_LIST"] == "127.0.0.2,127.0.0.3"
    assert out["AZ_BATCHAI_MPI_HOST_FILE"] == "/w/hostfile"


def test_a_multi_node_job_without_an_mpi_launcher_gets_a_hostfile_too(tmp_path: Path) -> None:
    from trainyard.batchai import hostfile_text, prepare_part_files

    spec, _ = batchai_file_to_spec(RECIPES / "Caffe2__Caffe2-GPU-Distributed__job.json", volumes=MAPPING)
    env = {
        **spec["env"],
        "TRAINYARD_JOB_ID": "j",
        "TRAINYARD_NODE_RANK": "0",
        "WORLD_SIZE": "4",
        "TRAINYARD_NODE_HOSTS": "127.0.0.2,127.0.0.3",
    }
    merged = {**env, **batchai_env(env, scratch_dir=str(tmp_path / ".batchai"))}
    prepare_part_files(merged)
    assert Path(merged["AZ_BATCHAI_MPI_HOST_FILE"]).read_text() == "127.0.0.2 slots=2\n127.0.0.3 slots=2\n"
    assert hostfile_text(merged).count("slots") == 2
    assert Path(merged["AZ_BATCHAI_SHARED_JOB_TEMP"]).is_dir()


def test_cluster_names_the_pool_and_pool_overrides() -> None:
    doc = json.loads((RECIPES / "TensorFlow__TensorFlow-GPU__job.json").read_text())
    doc["properties"]["cluster"] = {
        "id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.BatchAI/workspaces/w/clusters/nc6"
    }
    doc["properties"]["constraints"] = {"maxWallClockTime": "7 days, 0:00:00"}
    doc["properties"]["containerSettings"]["shmSize"] = "8G"
    doc["name"] = "ws/exp/mnist-tf"
    path = Path(f"/tmp/bai/{doc['name'].rsplit('/', 1)[-1]}.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    mapping = {"logs": "host:/l", "scripts": "host:/s"}
    spec, _ = batchai_file_to_spec(path, volumes=mapping)
    assert (spec["name"], spec["pool"], spec["max_wall_clock"]) == ("mnist-tf", "nc6", 7 * 86400)
    assert spec["container"] == {"shm_size": "8G"}
    assert batchai_file_to_spec(path, volumes=mapping, pool="cpu")[0]["pool"] == "cpu"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainyard", "job", "submit", "--format", "batchai", "--dry-run", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_dry_run_prints_the_spec_and_every_warning() -> None:
    done = _cli(
        str(RECIPES / "PyTorch__PyTorch-GPU-Distributed-Gloo__job.json"),
        "--volume",
        "logs=host:/srv/logs",
        "--volume",
        "scripts=host:/srv/scripts",
        "--pool",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)
    assert (spec["name"], spec["launcher"], spec["nodes"], spec["pool"]) == (
        "PyTorch__PyTorch-GPU-Distributed-Gloo__job",
        "torchrun",
        2,
        "cpu",
    )
    assert (
        "warning: mountVolumes.azureFileShares[0]: Azure file share 'logs' mounted at "
        "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs from host:/srv/logs (--volume logs)" in done.stderr
    )
    assert "warning: stdOutErrPathPrefix:" in done.stderr


def test_dry_run_exits_2_naming_what_cannot_be_honoured() -> None:
    done = _cli(str(RECIPES / "Horovod__Horovod-Tensorflow__job.json"), "--volume", "logs=host:/srv/logs")
    assert done.returncode == 2 and done.stdout == ""
    stderr = " ".join(done.stderr.split())
    assert "mountVolumes.azureFileShares[1]: no storage given for Azure file share 'scripts'" in stderr
    assert "--volume scripts=host:/srv/scripts" in stderr
    assert "mountVolumes.azureFileShares[0]:" not in stderr.split("invalid job spec:")[1]
    # What it could translate is still warned about, before the refusal.
    warned = stderr.split("invalid job spec:")[0]
    assert "warning: mountVolumes.azureFileShares[0]: Azure file share 'logs' mounted at" in warned
    assert "warning: stdOutErrPathPrefix:" in warned


def test_own_mpirun_marker_is_set_for_multi_node_custom_toolkit_jobs_only() -> None:
    for name in EXPECTED:
        spec, _ = batchai_file_to_spec(RECIPES / name, volumes=MAPPING)
        assert OWN_MPIRUN_VAR not in spec["env"]
