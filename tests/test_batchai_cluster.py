"""Batch AI cluster files (ClusterCreateParameters 2018-05-01) as a pool's scale, volumes and setup task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainyard.api.pools import PoolScale, PoolSetup, PoolVolumes
from trainyard.batchai import gpus_of_pool
from trainyard.batchai_cluster import batchai_cluster_to_pool, cluster_envelope_name
from trainyard.spec import SpecError

CLUSTER = Path(__file__).parent / "data" / "batchai-clusters" / "nc6-manual.json"
MAPPING = {"afs": "host:/srv/afs", "data": "sync:az://data"}


def cluster() -> dict[str, Any]:
    return dict(json.loads(CLUSTER.read_text()))


def problems(doc: dict[str, Any], **options: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        batchai_cluster_to_pool(doc, **{"name": "gpu", **options})
    return {p["field"]: p["reason"] for p in caught.value.problems}


def test_a_manual_cluster_becomes_a_fixed_size_pool_with_its_volumes_and_setup_task() -> None:
    pool, warnings = batchai_cluster_to_pool(cluster(), name="gpu", volumes=MAPPING)
    assert pool.scale == {
        "min_nodes": 2,
        "max_nodes": 2,
        "target": 2,
        "autoscale": False,
        "deallocation": "wait",
        "provider": "local",
        "slots_per_node": 2,
        "gpus_per_node": 1,  # STANDARD_NC6
    }
    assert pool.volumes == [
        {"name": "bai_cluster_afs", "mount_path": ".batchai/mounts/afs", "kind": "host", "path": "/srv/afs"},
        {"name": "bai_cluster_bfs", "mount_path": ".batchai/mounts/bfs", "kind": "sync", "uri": "az://data"},
    ]
    assert pool.setup == {
        "command": "echo setup $GREETING > $AZ_BATCHAI_MOUNT_ROOT/afs/x",
        # The node gives a cluster file's setup task Batch AI's variables (batchai_setup_env).
        "env": {
            "GREETING": "hello",
            "AZ_BATCHAI_COMPAT": "2018-05-01",
            "AZ_BATCHAI_STDOUTERR_PREFIX": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        },
        "secrets": {"TOKEN": "s3cret"},
    }
    # What the pool routes accept, field for field.
    PoolScale(**pool.scale)
    PoolVolumes(volumes=pool.volumes)
    PoolSetup(**pool.setup)
    fields = {w.split(":", 1)[0] for w in warnings}
    assert {"vmSize", "vmPriority", "userAccountSettings", "nodeSetup.setupTask.stdOutErrPathPrefix"} <= fields
    assert "nodeSetup.setupTask.commandLine" not in fields  # $AZ_BATCHAI_MOUNT_ROOT is set for the setup task
    assert any(w.startswith("nodeSetup.setupTask: .batchai/mounts/bfs (sync volume) is mounted") for w in warnings)
    assert "hunter2" not in json.dumps(pool.public_dict()) + " ".join(warnings)
    assert "s3cret" not in json.dumps(pool.public_dict())


def test_autoscale_settings_and_the_envelope_name() -> None:
    doc = {
        "name": "ws/gpu-auto",
        "type": "Microsoft.BatchAI/workspaces/clusters",
        "properties": {
            "vmSize": "Standard_NC24rs_v3",
            "scaleSettings": {"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 8, "initialNodeCount": 2}},
        },
    }
    assert cluster_envelope_name(doc) == "gpu-auto"
    pool, warnings = batchai_cluster_to_pool(doc, slots=8, provider="docker")
    assert pool.name == "gpu-auto" and pool.volumes == [] and pool.setup is None
    assert pool.scale is not None
    assert (pool.scale["min_nodes"], pool.scale["max_nodes"], pool.scale["autoscale"]) == (0, 8, True)
    assert (pool.scale["gpus_per_node"], pool.scale["slots_per_node"], pool.scale["provider"]) == (4, 8, "docker")
    assert any(w.startswith("scaleSettings.autoScale.initialNodeCount:") for w in warnings)
    pool, _ = batchai_cluster_to_pool(doc, gpus=2)
    assert pool.scale is not None and pool.scale["gpus_per_node"] == 2


def test_a_cluster_without_scale_settings_leaves_the_pool_size_alone() -> None:
    pool, warnings = batchai_cluster_to_pool({"properties": {"vmSize": "STANDARD_D2_V2"}}, name="cpu")
    assert pool.scale is None
    assert any(w.startswith("scaleSettings: not given") for w in warnings)
    assert any(w.startswith("vmSize:") and "GPU" not in w for w in warnings)


def test_what_cannot_be_honoured_is_refused_by_field() -> None:
    found = problems(cluster())
    assert "no storage given" in found["nodeSetup.mountVolumes.azureFileShares[0]"]
    assert "--volume" in found["nodeSetup.mountVolumes.azureBlobFileSystems[0]"]

    both = {"scaleSettings": {"manual": {"targetNodeCount": 1}, "autoScale": {"minimumNodeCount": 0}}}
    assert "not both" in problems({"properties": both})["scaleSettings"]
    upside_down = {"scaleSettings": {"autoScale": {"minimumNodeCount": 4, "maximumNodeCount": 2}}}
    assert "exceeds" in problems({"properties": upside_down})["scaleSettings.autoScale.minimumNodeCount"]
    option = {"scaleSettings": {"manual": {"targetNodeCount": 1, "nodeDeallocationOption": "later"}}}
    assert "waitforjobcompletion" in problems({"properties": option})["scaleSettings.manual.nodeDeallocationOption"]
    expression = {"scaleSettings": {"manual": {"targetNodeCount": "[parameters('nodes')]"}}}
    assert "ARM template" in problems({"properties": expression})["scaleSettings.manual.targetNodeCount"]

    doc = cluster()
    task = doc["properties"]["nodeSetup"]["setupTask"]
    task["secrets"] = [{"name": "T", "valueSecretReference": {"secretUrl": "https://vault/x"}}]
    task["environmentVariables"] = [{"name": "TRAINYARD_X", "value": "1"}]
    del task["commandLine"]
    found = problems(doc, volumes=MAPPING)
    assert "Key Vault" in found["nodeSetup.setupTask.secrets[0].valueSecretReference"]
    assert "reserved" in found["nodeSetup.setupTask.environmentVariables[0].name"]
    assert found["nodeSetup.setupTask.commandLine"] == "required field is missing"

    assert (
        "registered volume" in problems(cluster(), volumes={**MAPPING, "afs": "volume:team"})["nodeSetup.mountVolumes"]
    )
    assert "no name" in problems({"properties": {}}, name="")["name"]


def test_unknown_fields_are_warned_about_not_dropped() -> None:
    doc = {
        "properties": {"vmSize": "STANDARD_NC6", "spotPrice": 1, "scaleSettings": {"manual": {"targetNodeCount": 1}}}
    }
    _pool, warnings = batchai_cluster_to_pool(doc, name="gpu", volumes={"nope": "host:/x"})
    assert "spotPrice: not a field of Batch AI 2018-05-01 ClusterCreateParameters; ignored" in warnings
    assert any("--volume nope" in w for w in warnings)


NODES = [
    {"pool": "gpu", "state": "up", "gpus": [0, 1, 2, 3]},
    {"pool": "gpu", "state": "preparing", "gpus": [0, 1]},
    {"pool": "gpu", "state": "lost", "gpus": []},
    {"pool": "cpu", "state": "up", "gpus": []},
]


def test_gpus_per_node_come_from_the_pools_live_nodes_else_its_settings() -> None:
    count, note = gpus_of_pool("gpu", NODES, [])
    assert count == 2 and "2 to 4" in note and "--gpus" in note
    count, note = gpus_of_pool("gpu", NODES[:1], [])
    assert count == 4 and "to" not in note.split(":")[0]
    assert gpus_of_pool("cpu", NODES, [])[0] == 0
    pools = [{"name": "auto", "settings": {"gpus_per_node": 8}}]
    assert gpus_of_pool("auto", NODES, pools)[0] == 8
    count, note = gpus_of_pool("empty", NODES, [{"name": "empty", "settings": {}}])
    assert count is None and "no nodes" in note
