"""Batch AI clusters, file servers, operations and usages under /arm, through the app on a real database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.arm.served import Api, served
from trainyard.api.app import create_app
from trainyard.api.arm.fileservers import nfs_server
from trainyard.api.arm.sizes import VmSizeTable, family_of
from trainyard.config import load_settings
from trainyard.crypto import new_secret_key
from trainyard.db.arm_clusters import ArmCluster, forget_workspace, pool_name
from trainyard.db.models import ArmWorkspace, Job, Node, Part, Pool, Volume, utcnow

ADMIN = "admin-token-for-arm-cluster-tests"
SUB = "00000000-0000-0000-0000-000000000001"
GROUP = "rg-clusters"
WS = "vision"
V = {"api-version": "2018-05-01"}
BASE = f"/arm/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.BatchAI"
WORKSPACE = f"{BASE}/workspaces/{WS}"
USER = {"adminUserName": "ops", "adminUserPassword": "hunter2-not-echoed"}


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = load_settings({
        "TRAINYARD_HOME": str(tmp_path / "home"),
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_ADMIN_TOKEN": ADMIN,
        "TRAINYARD_SECRET_KEY": new_secret_key(),
        "TRAINYARD_REDIS_URL": "redis://127.0.0.1:1/0",  # never used by these routes
        "TRAINYARD_ARM_VM_SIZES": json.dumps({"Custom_G2": {"cpus": 3, "gpus": 2, "memory_gib": 9}}),
    }, home_files=False)  # fmt: skip
    app = create_app(settings, notifier=False)
    with app.state.sessions.begin() as session:
        session.add(ArmWorkspace(name=WS, subscription_id=SUB, resource_group=GROUP, location="eastus"))
    with served(app, ADMIN) as client:
        yield client


def _cluster(vm_size: str = "Standard_NC6", **props: Any) -> dict[str, Any]:
    scale = props.pop("scaleSettings", {"manual": {"targetNodeCount": 2, "nodeDeallocationOption": "requeue"}})
    return {"properties": {"vmSize": vm_size, "userAccountSettings": USER, "scaleSettings": scale, **props}}


def _put(api: Api, name: str, body: dict[str, Any]) -> Any:
    return api.put(f"{WORKSPACE}/clusters/{name}", params=V, json=body)


def _pool(api: Api, name: str) -> Pool:
    with api.app.state.sessions() as session:
        pool = session.get(Pool, name)
        assert isinstance(pool, Pool)
        return pool


def _nodes(api: Api, pool: str, states: dict[str, str], slots: int = 6) -> None:
    """Register nodes in a pool: node id → state; `busy` is a node that is up with a running part."""
    with api.app.state.sessions.begin() as session:
        for node_id, state in states.items():
            session.add(Node(id=node_id, pool=pool, address="127.0.0.9", slots=slots, gpus=[0],
                             state="up" if state == "busy" else state, state_detail="setup exited 3"
                             if state == "unusable" else None))  # fmt: skip
        session.flush()
        for node_id, state in states.items():
            if state == "busy":
                session.add(Part(job_id=f"job-{node_id}", attempt=1, rank=0, node_id=node_id, active=True))


def test_a_manual_cluster_is_a_pool_of_that_size_with_the_vm_sizes_resources(api: Api) -> None:
    answer = _put(api, "nc", _cluster())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (
        body["id"]
        == f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.BatchAI/workspaces/{WS}/clusters/nc"
    )
    assert body["type"] == "Microsoft.BatchAI/workspaces/clusters"
    props = body["properties"]
    assert props["provisioningState"] == "succeeded"
    assert props["scaleSettings"] == {"manual": {"targetNodeCount": 2, "nodeDeallocationOption": "requeue"}}
    assert (props["vmSize"], props["vmPriority"], props["currentNodeCount"]) == ("Standard_NC6", "dedicated", 0)
    assert props["allocationState"] == "resizing"  # asked for 2, none registered yet
    assert props["userAccountSettings"] == {"adminUserName": "ops"}  # the password is never shown
    pool = _pool(api, pool_name(WS, "nc"))
    assert pool.name == "vision.nc" and (pool.min_nodes, pool.max_nodes) == (2, 2)
    keys = ("target", "autoscale", "deallocation", "slots_per_node", "gpus_per_node")
    assert [pool.settings[k] for k in keys] == [2, False, "requeue", 6, 1]


def test_get_counts_the_pools_registered_nodes_by_batch_ai_state(api: Api) -> None:
    assert _put(api, "counted", _cluster(scaleSettings={"manual": {"targetNodeCount": 5}})).status_code == 200
    states = {"n-idle": "up", "n-busy": "busy", "n-prep": "preparing", "n-bad": "unusable"}
    _nodes(api, "vision.counted", {**states, "n-drain": "draining", "n-lost": "lost", "n-gone": "removed"})
    props = api.get(f"{WORKSPACE}/clusters/counted", params=V).json()["properties"]
    assert props["nodeStateCounts"] == {"idleNodeCount": 1, "runningNodeCount": 1, "preparingNodeCount": 1,
                                        "unusableNodeCount": 1, "leavingNodeCount": 1}  # fmt: skip
    assert props["currentNodeCount"] == 5 and props["allocationState"] == "resizing"  # one is leaving
    logins = api.post(f"{WORKSPACE}/clusters/counted/listRemoteLoginInformation", params={**V, "maxresults": 4})
    assert [n["nodeId"] for n in logins.json()["value"]] == ["n-bad", "n-busy", "n-drain", "n-idle"]
    assert logins.json()["value"][0] == {"nodeId": "n-bad", "ipAddress": "127.0.0.9", "port": 22}
    rest = api.post(logins.json()["nextLink"]).json()
    assert [n["nodeId"] for n in rest["value"]] == ["n-prep"] and "nextLink" not in rest  # not lost, not removed
    assert props["errors"] == [{"code": "NodeSetupFailed", "message": "setup exited 3",
                                "details": [{"name": "nodeId", "value": "n-bad"}]}]  # fmt: skip


def test_an_autoscale_cluster_autoscales_its_pool_between_min_and_max(api: Api) -> None:
    scale = {"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 3, "initialNodeCount": 1}}
    props = _put(api, "auto", _cluster("Standard_D2_v2", scaleSettings=scale)).json()["properties"]
    assert props["scaleSettings"] == scale and props["allocationState"] == "steady"
    pool = _pool(api, "vision.auto")
    assert (pool.min_nodes, pool.max_nodes, pool.settings["autoscale"], pool.settings["target"]) == (0, 3, True, None)
    assert (pool.settings["slots_per_node"], pool.settings["gpus_per_node"]) == (2, 0)
    with api.app.state.sessions.begin() as session:  # a queued gang of 2: the pool grows to it
        session.add(Job(id="gang", name="gang", pool="vision.auto", state="queued", nodes=2, cpus=1.0, gpus=0,
                        spec={}, spec_digest="d", seq=1))  # fmt: skip
    assert api.get(f"{WORKSPACE}/clusters/auto", params=V).json()["properties"]["allocationState"] == "resizing"
    _nodes(api, "vision.auto", {"a1": "up", "a2": "up"}, slots=2)
    props = api.get(f"{WORKSPACE}/clusters/auto", params=V).json()["properties"]
    assert (props["allocationState"], props["currentNodeCount"]) == ("steady", 2)


def test_patch_changes_the_scale_and_what_shrinking_does(api: Api) -> None:
    assert _put(api, "resize", _cluster()).status_code == 200
    wait = {"targetNodeCount": 1, "nodeDeallocationOption": "waitforjobcompletion"}
    patch = {"properties": {"scaleSettings": {"manual": wait}}}
    answer = api.patch(f"{WORKSPACE}/clusters/resize", params=V, json=patch)
    assert answer.status_code == 200, answer.text
    assert answer.json()["properties"]["scaleSettings"] == patch["properties"]["scaleSettings"]
    pool = _pool(api, "vision.resize")
    assert (pool.min_nodes, pool.max_nodes, pool.settings["target"], pool.settings["deallocation"]) == (1, 1, 1, "wait")
    assert pool.settings["gpus_per_node"] == 1  # the vmSize still sizes each node
    terminate = {
        "properties": {"scaleSettings": {"manual": {"targetNodeCount": 0, "nodeDeallocationOption": "terminate"}}}
    }
    assert api.patch(f"{WORKSPACE}/clusters/resize", params=V, json=terminate).status_code == 200
    assert _pool(api, "vision.resize").settings["deallocation"] == "terminate"
    refused = api.patch(f"{WORKSPACE}/clusters/resize", params=V, json={"properties": {"vmSize": "Standard_NC12"}})
    assert refused.status_code == 400 and refused.json()["error"]["target"] == "properties.vmSize"


def test_delete_scales_the_pool_to_zero_and_forgets_the_cluster(api: Api) -> None:
    assert _put(api, "gone", _cluster()).status_code == 200
    assert api.delete(f"{WORKSPACE}/clusters/gone", params=V).status_code == 200
    pool = _pool(api, "vision.gone")
    assert (pool.max_nodes, pool.settings["target"], pool.settings["deallocation"]) == (0, 0, "terminate")
    missing = api.get(f"{WORKSPACE}/clusters/gone", params=V)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ResourceNotFound"
    assert api.delete(f"{WORKSPACE}/clusters/gone", params=V).status_code == 204


def test_clusters_list_by_workspace_in_pages_linked_by_next_link(api: Api) -> None:
    for name in ("c1", "c2", "c3"):
        assert _put(api, name, _cluster()).status_code == 200
    first = api.get(f"{WORKSPACE}/clusters", params={**V, "maxresults": 2}).json()
    assert [c["name"] for c in first["value"]] == ["c1", "c2"]
    assert first["nextLink"].startswith("http") and "maxresults=2" in first["nextLink"]
    second = api.get(first["nextLink"]).json()
    assert [c["name"] for c in second["value"]] == ["c3"] and "nextLink" not in second
    other = api.get(f"{BASE}/workspaces/nope/clusters", params=V)
    assert other.status_code == 404 and other.json()["error"]["code"] == "ResourceNotFound"


@pytest.mark.parametrize(
    ("change", "target"),
    [
        ({"vmSize": None}, "properties.vmSize"),
        ({"vmSize": "Standard_Z99"}, "properties.vmSize"),
        ({"vmPriority": "spot"}, "properties.vmPriority"),
        ({"scaleSettings": {"manual": {"targetNodeCount": -1}}}, "properties.scaleSettings.manual.targetNodeCount"),
        ({"scaleSettings": {"manual": {"targetNodeCount": 1, "nodeDeallocationOption": "later"}}},
         "properties.scaleSettings.manual.nodeDeallocationOption"),
        ({"scaleSettings": {"autoScale": {"minimumNodeCount": 3, "maximumNodeCount": 1}}},
         "properties.scaleSettings.autoScale.minimumNodeCount"),
        ({"scaleSettings": {"manual": {"targetNodeCount": 1}, "autoScale": {"minimumNodeCount": 0,
                                                                             "maximumNodeCount": 1}}},
         "properties.scaleSettings"),
        ({"nodeSetup": {"setupTask": {"stdOutErrPathPrefix": "/tmp"}}}, "properties.nodeSetup.setupTask.commandLine"),
        ({"nodeSetup": {"mountVolumes": {"azureBlobFileSystems": [
            {"accountName": "acct", "containerName": "unregistered", "relativeMountPath": "data"}]}}},
         "properties.nodeSetup.mountVolumes.azureBlobFileSystems[0]"),
        ({"colour": "blue"}, "properties.colour"),
    ],
)  # fmt: skip
def test_a_bad_cluster_body_is_a_cloud_error_400_naming_the_field(
    api: Api, change: dict[str, Any], target: str
) -> None:
    body = _cluster()
    body["properties"].update(change)
    body["properties"] = {k: v for k, v in body["properties"].items() if v is not None}
    answer = _put(api, "bad", body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["target"] == target and error["code"] == "InvalidParameter", error
    if "Blob" in target:
        assert "--volume" not in error["message"] and "/v1/volumes" in error["message"]
    assert api.get(f"{WORKSPACE}/clusters/bad", params=V).status_code == 404  # nothing was stored
    assert _put(api, "bad", {"properties": "no"}).json()["error"]["target"] == "properties"


def _file_server(disks: int, storage: str = "Standard_LRS") -> dict[str, Any]:
    disk = {"diskSizeInGB": 10, "diskCount": disks, "storageAccountType": storage}
    return {"properties": {"vmSize": "Standard_D2_v2", "sshConfiguration": {"userAccountSettings": USER},
                           "dataDisks": disk}}  # fmt: skip


def _register_volume(api: Api, name: str, kind: str, **definition: Any) -> None:
    with api.app.state.sessions.begin() as session:
        session.add(Volume(workspace=WS, name=name, kind=kind, definition=definition, created_by="t",
                           created_at=utcnow()))  # fmt: skip


def test_node_setup_mounts_file_servers_and_registered_volumes_and_keeps_secrets(api: Api, tmp_path: Path) -> None:
    _register_volume(api, "nfsdata", "host", path=str(tmp_path / "nfs"), read_only=False)
    _register_volume(api, "images", "blob", uri="s3://bucket/images", read_only=True)
    server = _file_server(disks=1)
    assert api.put(f"{WORKSPACE}/fileServers/nfsdata", params=V, json=server).status_code == 200
    setup = {
        "setupTask": {"commandLine": "echo ready", "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/nfs",
                      "environmentVariables": [{"name": "STAGE", "value": "1"}],
                      "secrets": [{"name": "TOKEN", "value": "s3cr3t-value"}]},
        "mountVolumes": {
            "fileServers": [{"fileServer": {"id": f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/"
                                                  f"Microsoft.BatchAI/workspaces/{WS}/fileServers/nfsdata"},
                             "sourceDirectory": "sub/dir", "relativeMountPath": "nfs"}],
            "azureBlobFileSystems": [{"accountName": "acct", "containerName": "images", "relativeMountPath": "img",
                                      "credentials": {"accountKey": "k3y-not-echoed"}}],
        },
    }  # fmt: skip
    answer = _put(api, "setup", _cluster(nodeSetup=setup))
    assert answer.status_code == 200, answer.text
    text = answer.text
    assert "s3cr3t-value" not in text and "k3y-not-echoed" not in text and "hunter2" not in text
    echoed = answer.json()["properties"]["nodeSetup"]
    assert echoed["setupTask"]["secrets"] == [{"name": "TOKEN"}]
    settings = _pool(api, "vision.setup").settings
    assert settings["setup"]["command"] == "echo ready" and settings["setup"]["secrets"] == {"TOKEN": "***"}
    assert settings["setup"]["env"]["STAGE"] == "1" and settings["setup"]["secrets_enc"]
    mounts = {v["mount_path"]: v for v in settings["volumes"]}
    assert mounts[".batchai/mounts/nfs"]["path"] == f"{tmp_path / 'nfs'}/sub/dir"
    assert (mounts[".batchai/mounts/img"]["kind"], mounts[".batchai/mounts/img"]["uri"]) == (
        "blob",
        "s3://bucket/images",
    )
    again = _put(api, "setup", _cluster())  # PUT replaces the whole cluster: no setup task, no volumes
    assert again.status_code == 200 and "setup" not in _pool(api, "vision.setup").settings


def test_an_output_directory_on_a_cluster_mount_of_a_file_server_is_listed_when_the_api_may_read_it(
    api: Api, tmp_path: Path
) -> None:
    _register_volume(api, "nfsdata", "host", path=str(tmp_path / "nfs"))
    assert api.put(f"{WORKSPACE}/fileServers/nfsdata", params=V, json=_file_server(disks=1)).status_code == 200
    server = (
        f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.BatchAI/workspaces/{WS}/fileServers/nfsdata"
    )
    setup = {"mountVolumes": {"fileServers": [{"fileServer": {"id": server}, "relativeMountPath": "nfs"}]}}
    assert _put(api, "mounted", _cluster(nodeSetup=setup)).status_code == 200
    assert api.put(f"{WORKSPACE}/experiments/e1", params=V).status_code == 200
    output = {"id": "OUT", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/nfs/runs"}  # the cluster's mount: the pool's volume
    job = {"properties": {"cluster": {"id": f"{WORKSPACE}/clusters/mounted"}, "nodeCount": 1,
                          "customToolkitSettings": {"commandLine": "true"}, "outputDirectories": [output]}}  # fmt: skip
    assert api.put(f"{WORKSPACE}/experiments/e1/jobs/j1", params=V, json=job).status_code == 200, "created"
    (tmp_path / "nfs" / "runs" / "j1").mkdir(parents=True)
    (tmp_path / "nfs" / "runs" / "j1" / "result.json").write_text("{}")
    url = f"{WORKSPACE}/experiments/e1/jobs/j1/listOutputFiles"
    refused = api.post(url, params={**V, "outputdirectoryid": "OUT"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "OutputDirectoryNotReadable"
    assert f"{tmp_path / 'nfs'}/runs/j1" in refused.json()["error"]["message"]
    settings = api.app.state.settings
    api.app.state.settings = settings.model_copy(update={"arm_readable_paths": str(tmp_path / "nfs")})
    listed = api.post(url, params={**V, "outputdirectoryid": "OUT"})
    assert [f["name"] for f in listed.json()["value"]] == ["result.json"], listed.text


def test_a_low_priority_cluster_marks_its_pools_work_preemptible(api: Api) -> None:
    props = _put(api, "cheap", _cluster("custom_g2", vmPriority="lowpriority")).json()["properties"]
    assert (props["vmPriority"], props["vmSize"]) == ("lowpriority", "custom_g2")  # as given
    settings = _pool(api, "vision.cheap").settings
    assert (settings["preemptible"], settings["slots_per_node"], settings["gpus_per_node"]) == (True, 3, 2)
    with api.app.state.sessions() as session:
        cluster = session.get(ArmCluster, (WS, "cheap"))
        assert cluster is not None and cluster.lowpriority


def test_jobs_on_a_low_priority_cluster_are_submitted_preemptible_and_a_dedicated_clusters_are_not(api: Api) -> None:
    assert _put(api, "cheap", _cluster("custom_g2", vmPriority="lowpriority")).status_code == 200
    assert _put(api, "steady", _cluster("custom_g2")).status_code == 200
    assert api.put(f"{WORKSPACE}/experiments/e1", params=V).status_code == 200
    for cluster in ("cheap", "steady"):
        job = {"properties": {"cluster": {"id": f"{WORKSPACE}/clusters/{cluster}"}, "nodeCount": 1,
                              "customToolkitSettings": {"commandLine": "echo hi"}}}  # fmt: skip
        created = api.put(f"{WORKSPACE}/experiments/e1/jobs/on-{cluster}", params=V, json=job)
        assert created.status_code == 200, created.text
    with api.app.state.sessions() as session:
        jobs = {job.name: (job.pool, job.preemptible) for job in session.query(Job)}
    assert jobs == {"on-cheap": ("vision.cheap", True), "on-steady": ("vision.steady", False)}


def test_file_servers_are_registered_host_volumes(api: Api, tmp_path: Path) -> None:
    body = _file_server(disks=2, storage="Premium_LRS")
    url = f"{WORKSPACE}/fileServers/shared"
    unregistered = api.put(url, params=V, json=body)
    assert unregistered.status_code == 400 and unregistered.json()["error"]["code"] == "VolumeNotRegistered"
    _register_volume(api, "shared", "host", path=str(tmp_path))
    created = api.put(url, params=V, json=body)
    assert created.status_code == 200, created.text
    props = created.json()["properties"]
    assert props["provisioningState"] == "succeeded" and props["mountSettings"]["mountPoint"] == str(tmp_path)
    assert props["dataDisks"]["diskCount"] == 2 and "hunter2" not in created.text
    assert created.json()["type"] == "Microsoft.BatchAI/workspaces/fileservers"
    assert api.get(url, params=V).json() == created.json()
    listed = api.get(f"{WORKSPACE}/fileServers", params=V).json()
    assert [s["name"] for s in listed["value"]] == ["shared"]
    bad = {"properties": {**body["properties"], "dataDisks": {"diskSizeInGB": 10, "diskCount": 0,
                                                              "storageAccountType": "Standard_LRS"}}}  # fmt: skip
    refused = api.put(url, params=V, json=bad)
    assert refused.status_code == 400 and refused.json()["error"]["target"] == "properties.dataDisks.diskCount"
    assert api.delete(url, params=V).status_code == 200
    assert api.get(url, params=V).status_code == 404 and api.delete(url, params=V).status_code == 204


def test_the_nfs_server_of_a_volume_is_the_mount_holding_its_path() -> None:
    mounts = ("/dev/sda1 / ext4 rw 0 0\n10.0.0.4:/export /mnt/nfs nfs4 rw,vers=4.2 0 0\n"
              "[fd00::5]:/data /mnt/v6 nfs rw 0 0\n")  # fmt: skip
    assert nfs_server("/mnt/nfs/data/a", mounts) == "10.0.0.4"
    assert nfs_server("/mnt/nfs", mounts) == "10.0.0.4"
    assert nfs_server("/mnt/v6/x", mounts) == "fd00::5"
    assert nfs_server("/home/x", mounts) is None and nfs_server("/mnt/nfsx", mounts) is None


def test_operations_are_listed_in_pages(api: Api) -> None:
    first = api.get("/arm/providers/Microsoft.BatchAI/operations", params={**V, "maxresults": 5}).json()
    names = [op["name"] for op in first["value"]]
    link = first.get("nextLink")
    while link:
        page = api.get(link).json()
        names += [op["name"] for op in page["value"]]
        link = page.get("nextLink")
    assert len(names) == len(set(names)) > 5
    assert {"Microsoft.BatchAI/workspaces/clusters/write", "Microsoft.BatchAI/workspaces/fileservers/read"} <= set(
        names
    )
    assert (
        api.get("/arm/providers/Microsoft.BatchAI/operations").json()["error"]["code"] == "MissingApiVersionParameter"
    )


def test_usages_count_cluster_vcpus_by_family_and_priority_against_registered_nodes(api: Api) -> None:
    assert _put(api, "gpu", _cluster("Standard_NC6s_v3")).status_code == 200
    assert _put(api, "cpu", _cluster("Standard_D4_v2", vmPriority="lowpriority")).status_code == 200
    _nodes(api, "vision.gpu", {"g1": "up", "g2": "busy"}, slots=6)
    _nodes(api, "vision.cpu", {"d1": "up", "d2": "lost"}, slots=8)
    _nodes(api, "default", {"plain": "up"}, slots=4)
    answer = api.get(f"/arm/subscriptions/{SUB}/providers/Microsoft.BatchAI/locations/eastus/usages", params=V)
    assert answer.status_code == 200, answer.text
    usages = {u["name"]["value"]: (u["currentValue"], u["limit"]) for u in answer.json()["value"]}
    total = 6 + 6 + 8 + 4  # every live registered node's slots; the lost one holds none
    assert usages["Clusters"][0] == 2
    assert usages["Total Cluster Dedicated Regional vCPUs"] == (12, total)
    assert usages["Standard NCv3 Family Cluster Dedicated vCPUs"] == (12, total)
    assert usages["Total Cluster LowPriority Regional vCPUs"] == (8, total)
    assert usages["Standard Dv2 Family Cluster LowPriority vCPUs"] == (8, total)
    assert usages["Standard NC Family Cluster Dedicated vCPUs"] == (0, total)
    other = api.get("/arm/subscriptions/another/providers/Microsoft.BatchAI/locations/eastus/usages", params=V)
    assert {u["name"]["value"]: u["currentValue"] for u in other.json()["value"]}["Clusters"] == 0


def test_vm_sizes_come_from_the_defaults_and_the_setting(tmp_path: Path) -> None:
    table = VmSizeTable.from_setting(None)
    nc = table.get("standard_nc24rs_v3")
    assert nc is not None and (nc.cpus, nc.gpus, nc.family) == (24, 4, "Standard NCv3 Family")
    file = tmp_path / "sizes.json"
    file.write_text(json.dumps({"STANDARD_NC6": {"cpus": 8, "gpus": 2, "memory_gib": 64, "family": "Lab"}}))
    mine = VmSizeTable.from_setting(str(file)).get("Standard_NC6")
    assert mine is not None and (mine.cpus, mine.gpus, mine.family) == (8, 2, "Lab")
    with pytest.raises(ValueError, match=r"Custom.*cpus"):
        VmSizeTable.from_setting('{"Custom": {"gpus": 1, "memory_gib": 1}}')
    assert (
        family_of("Standard_D4_v2") == "Standard Dv2 Family"
        and family_of("Standard_ND40rs_v2") == "Standard NDv2 Family"
    )


def test_pool_names_are_workspace_dot_cluster_or_shortened_with_a_digest() -> None:
    assert pool_name("vision", "nc6") == "vision.nc6"
    long = pool_name("w" * 64, "c" * 64)
    assert len(long) <= 64 and long.startswith("w") and long != pool_name("w" * 64, "c" * 63)
    odd = pool_name("_team", "größe")
    assert len(odd) <= 64 and odd[0].isalnum() and odd.isascii()


def test_forgetting_a_workspace_empties_its_clusters_pools(api: Api, tmp_path: Path) -> None:
    assert _put(api, "kept", _cluster()).status_code == 200
    _register_volume(api, "fs", "host", path=str(tmp_path))
    assert api.put(f"{WORKSPACE}/fileServers/fs", params=V, json=_file_server(disks=1)).status_code == 200
    with api.app.state.sessions.begin() as session:
        assert forget_workspace(session, WS) == ["vision.kept"]
    pool = _pool(api, "vision.kept")
    assert (pool.max_nodes, pool.settings["target"]) == (0, 0)
    assert api.get(f"{WORKSPACE}/clusters", params=V).json()["value"] == []
    assert api.get(f"{WORKSPACE}/fileServers", params=V).json()["value"] == []
