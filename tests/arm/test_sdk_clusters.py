"""Azure's Batch AI SDKs (azure-mgmt-batchai 7.0.0 and 2.0.0) on clusters, file servers, operations and usages.

Each test runs an unchanged SDK script in its pinned venv against a real trainyard cluster over HTTPS
(tests/arm/conftest.py): only the base URL and the credential differ from what it would do on Azure.
A manual cluster's node is started for real by the scheduler's autoscaler (local provider).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.arm.clients import ArmTarget, run_client
from tests.arm.conftest import TlsFiles
from trainyard.up import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PRELUDE = """
import sys, time
from clients import emit, target_from_env, {factory}
from azure.mgmt.batchai import models
target = target_from_env()
client, rg, ws = {factory}(), target.resource_group, sys.argv[1]
user = models.UserAccountSettings(admin_user_name="ops", admin_user_password="not-echoed-pw")
"""

SDK7_CLUSTERS = """
client.workspaces.begin_create(rg, ws, models.WorkspaceCreateParameters(location="eastus")).result()
manual = models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=1))
created = client.clusters.begin_create(rg, ws, "manual", models.ClusterCreateParameters(
    vm_size="Standard_D1_v2", user_account_settings=user, scale_settings=manual)).result()
got, deadline = created, time.time() + 180
while time.time() < deadline and (got.node_state_counts.idle_node_count or 0) < 1:
    time.sleep(1)
    got = client.clusters.get(rg, ws, "manual")
logins = [n.as_dict() for n in client.clusters.list_remote_login_information(rg, ws, "manual")]
auto = models.ScaleSettings(auto_scale=models.AutoScaleSettings(minimum_node_count=0, maximum_node_count=2,
                                                               initial_node_count=0))
autoscaled = client.clusters.begin_create(rg, ws, "auto", models.ClusterCreateParameters(
    vm_size="Standard_NC6", vm_priority="lowpriority", user_account_settings=user, scale_settings=auto)).result()
shrink = models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=0,
                                                               node_deallocation_option="waitforjobcompletion"))
updated = client.clusters.update(rg, ws, "manual", models.ClusterUpdateParameters(scale_settings=shrink))
pages = [[c.name for c in page] for page in client.clusters.list_by_workspace(
    rg, ws, models.ClustersListByWorkspaceOptions(max_results=1)).by_page()]
shrunk, deadline = updated, time.time() + 120
while time.time() < deadline and shrunk.current_node_count:
    time.sleep(1)
    shrunk = client.clusters.get(rg, ws, "manual")
client.clusters.begin_delete(rg, ws, "auto").result()
client.clusters.begin_delete(rg, ws, "manual").result()
try:
    client.clusters.get(rg, ws, "auto")
    missing = None
except Exception as exc:
    missing = getattr(exc, "status_code", None)
try:
    client.clusters.begin_create(rg, ws, "bad", models.ClusterCreateParameters(
        vm_size="Standard_Unknown", user_account_settings=user, scale_settings=manual)).result()
    refused = None
except Exception as exc:
    refused = [getattr(exc, "status_code", None), exc.error.code, exc.error.target]
emit({"created": created.as_dict(), "got": got.as_dict(), "logins": logins, "auto": autoscaled.as_dict(),
      "updated": updated.as_dict(), "pages": pages, "shrunk": shrunk.as_dict(), "missing": missing, "refused": refused})
"""

SDK2_CLUSTERS = """
client.workspaces.create(rg, ws, "eastus").result()
auto = models.ScaleSettings(auto_scale=models.AutoScaleSettings(minimum_node_count=0, maximum_node_count=3))
created = client.clusters.create(rg, ws, "two", models.ClusterCreateParameters(
    vm_size="Standard_NC12", user_account_settings=user, scale_settings=auto)).result()
manual = models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=0,
                                                               node_deallocation_option="terminate"))
updated = client.clusters.update(rg, ws, "two", scale_settings=manual)
client.clusters.create(rg, ws, "three", models.ClusterCreateParameters(
    vm_size="Standard_D2_v2", user_account_settings=user, scale_settings=manual)).result()
one_per_page = models.ClustersListByWorkspaceOptions(max_results=1)
names = [c.name for c in client.clusters.list_by_workspace(rg, ws, one_per_page)]
got = client.clusters.get(rg, ws, "two")
client.clusters.delete(rg, ws, "two").result()
client.clusters.delete(rg, ws, "three").result()
left = [c.name for c in client.clusters.list_by_workspace(rg, ws)]
emit({"created": created.as_dict(), "updated": updated.as_dict(), "names": names, "got": got.as_dict(), "left": left})
"""

FILE_SERVERS = """
client.{create_workspace}
disks = models.DataDisks(disk_size_in_gb=10, disk_count=1, storage_account_type="Standard_LRS")
ssh = models.SshConfiguration(user_account_settings=user)
params = models.FileServerCreateParameters(vm_size="Standard_D2_v2", ssh_configuration=ssh, data_disks=disks)
created = client.file_servers.{create}(rg, ws, sys.argv[2], params).result()
listed = [s.name for s in client.file_servers.list_by_workspace(rg, ws)]
out = {{"created": created.as_dict(), "listed": listed}}
if hasattr(client.file_servers, "get"):
    out["got"] = client.file_servers.get(rg, ws, sys.argv[2]).as_dict()
    client.file_servers.delete(rg, ws, sys.argv[2]).result()
    out["after"] = [s.name for s in client.file_servers.list_by_workspace(rg, ws)]
emit(out)
"""

PROVIDER = """
operations = [op.name for op in client.operations.list()]
usages = {u.name.value: [u.current_value, u.limit] for u in client.usages.list("westeurope")}
emit({"operations": operations, "usages": usages})
"""


def _workspace() -> str:
    return f"sdk-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def started_pools(arm_cluster: Cluster) -> Iterator[list[str]]:
    """Pools whose nodes the autoscaler may have started: stopped when the module ends, whatever happened."""
    pools: list[str] = []
    yield pools
    from trainyard.scheduler.providers.local import LocalProvider

    provider = LocalProvider(home=arm_cluster.home)
    for pool in pools:
        provider.stop_all(pool)


def _script(factory: str, body: str) -> str:
    return PRELUDE.format(factory=factory) + body


def test_sdk7_creates_manual_and_autoscale_clusters_sees_the_node_resizes_lists_and_deletes(
    arm_target: ArmTarget, started_pools: list[str]
) -> None:
    ws = _workspace()
    started_pools.extend([f"{ws}.manual", f"{ws}.auto"])
    out: dict[str, Any] = run_client("sdk7", None, ws, target=arm_target, code=_script("sdk7_client", SDK7_CLUSTERS))
    created = out["created"]
    assert created["provisioning_state"] == "succeeded" and created["vm_size"] == "Standard_D1_v2"
    assert created["id"].endswith(f"/workspaces/{ws}/clusters/manual")
    assert created["scale_settings"]["manual"] == {"target_node_count": 1, "node_deallocation_option": "requeue"}
    assert "admin_user_password" not in created["user_account_settings"]
    got = out["got"]  # the node the autoscaler started registered and is idle
    assert got["current_node_count"] == 1 and got["node_state_counts"]["idle_node_count"] == 1, got
    assert got["allocation_state"] == "steady"
    assert [login["port"] for login in out["logins"]] == [22] and out["logins"][0]["ip_address"].startswith("127.")
    auto = out["auto"]
    assert auto["vm_priority"] == "lowpriority"
    assert auto["scale_settings"]["auto_scale"] == {"minimum_node_count": 0, "maximum_node_count": 2,
                                                    "initial_node_count": 0}  # fmt: skip
    wait = {"target_node_count": 0, "node_deallocation_option": "waitforjobcompletion"}
    assert out["updated"]["scale_settings"]["manual"] == wait
    assert out["pages"] == [["auto"], ["manual"]]  # one cluster per page, followed through nextLink
    assert out["shrunk"]["current_node_count"] == 0, out["shrunk"]
    assert out["missing"] == 404
    assert out["refused"] == [400, "InvalidParameter", "properties.vmSize"]


def test_sdk2_creates_updates_lists_in_pages_and_deletes_clusters(
    arm_target: ArmTarget, started_pools: list[str]
) -> None:
    ws = _workspace()
    started_pools.extend([f"{ws}.two", f"{ws}.three"])
    out: dict[str, Any] = run_client("sdk2", None, ws, target=arm_target, code=_script("sdk2_client", SDK2_CLUSTERS))
    assert out["created"]["provisioning_state"] == "succeeded"
    assert out["created"]["scale_settings"]["auto_scale"]["maximum_node_count"] == 3
    assert out["updated"]["scale_settings"]["manual"] == {
        "target_node_count": 0,
        "node_deallocation_option": "terminate",
    }
    assert out["names"] == ["three", "two"]
    assert out["got"]["node_state_counts"] == {"idle_node_count": 0, "running_node_count": 0,
                                               "preparing_node_count": 0, "unusable_node_count": 0,
                                               "leaving_node_count": 0}  # fmt: skip
    assert out["left"] == []


def _register_host_volume(arm_cluster: Cluster, tls_files: TlsFiles, workspace: str, name: str, path: Path) -> None:
    headers = {"Authorization": f"Bearer {arm_cluster.admin_token}"}
    with httpx.Client(base_url=arm_cluster.api_url, headers=headers, verify=str(tls_files.ca), timeout=30) as http:
        answer = http.post(
            "/v1/volumes", json={"name": name, "workspace": workspace, "kind": "host", "path": str(path)}
        )
        assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("venv", ["sdk7", "sdk2"])
def test_a_file_server_is_a_registered_nfs_volume_through_either_sdk(
    venv: str, arm_target: ArmTarget, arm_cluster: Cluster, tls_files: TlsFiles, tmp_path: Path
) -> None:
    ws = _workspace()
    if venv == "sdk7":
        create = 'workspaces.begin_create(rg, ws, models.WorkspaceCreateParameters(location="eastus")).result()'
        calls = {"create_workspace": create, "create": "begin_create"}
    else:
        calls = {"create_workspace": 'workspaces.create(rg, ws, "eastus").result()', "create": "create"}
    code = _script(f"{venv}_client", FILE_SERVERS.format(**calls))
    refused = run_client(venv, None, ws, "nfs", target=arm_target, code=code, check=False)
    assert refused.returncode != 0 and "VolumeNotRegistered" in refused.stdout + refused.stderr
    _register_host_volume(arm_cluster, tls_files, ws, "nfs", tmp_path)
    out: dict[str, Any] = run_client(venv, None, ws, "nfs", target=arm_target, code=code)
    created = out["created"]
    assert created["provisioning_state"] == "succeeded"
    assert created["mount_settings"]["mount_point"] == str(tmp_path)
    assert created["data_disks"]["disk_count"] == 1 and out["listed"] == ["nfs"]
    if venv == "sdk2":
        assert out["got"]["mount_settings"] == created["mount_settings"] and out["after"] == []


@pytest.mark.parametrize("venv", ["sdk7", "sdk2"])
def test_operations_and_usages_through_either_sdk(venv: str, arm_target: ArmTarget) -> None:
    out: dict[str, Any] = run_client(venv, None, "unused", target=arm_target, code=_script(f"{venv}_client", PROVIDER))
    assert "Microsoft.BatchAI/workspaces/clusters/write" in out["operations"]
    usages = out["usages"]
    dedicated = usages["Total Cluster Dedicated Regional vCPUs"]
    assert dedicated[1] >= 8  # the suite's cluster registers two nodes of 4 slots each
    assert usages["Standard NC Family Cluster LowPriority vCPUs"][0] >= 0 and "Clusters" in usages


def test_az_batchai_clusters_with_a_file_server_mount_resize_autoscale_usage_and_delete(
    arm_target: ArmTarget, arm_cluster: Cluster, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """az's own file-server create and --nfs call file_servers.get, which its SDK (7.0.0) lacks, and its
    `cluster auto-scale` calls update() the 2.0.0 way: those fail inside az on Azure too. So the file server
    is made over HTTPS here, the cluster names it in a --config-file (as Batch AI's docs did), and only
    `cluster resize` changes the scale."""
    from tests.arm.test_az_cli import Az, az_login

    az = Az(arm_target, tmp_path / "azure-config")
    az_login(arm_target, az.config_dir, arm_target.token)
    ws, group = _workspace(), arm_target.resource_group
    where = ("-g", group, "-w", ws)
    az("batchai", "workspace", "create", "-g", group, "-n", ws, "-l", "eastus")
    _register_host_volume(arm_cluster, tls_files, ws, "share", tmp_path / "nfs")
    server_id = (f"/subscriptions/{arm_target.subscription_id}/resourceGroups/{group}/providers/Microsoft.BatchAI"
                 f"/workspaces/{ws}/fileServers/share")  # fmt: skip
    disks = {"diskSizeInGB": 10, "diskCount": 1, "storageAccountType": "Standard_LRS"}
    ssh = {"userAccountSettings": {"adminUserName": "ops"}}
    server = {"properties": {"vmSize": "Standard_D2_v2", "sshConfiguration": ssh, "dataDisks": disks}}
    headers = {"Authorization": f"Bearer {arm_cluster.admin_token}"}
    with httpx.Client(base_url=arm_cluster.api_url, headers=headers, verify=str(tls_files.ca), timeout=30) as http:
        made = http.put(f"/arm{server_id}", params={"api-version": "2018-05-01"}, json=server)
        assert made.status_code == 200, made.text
    assert [s["mountSettings"]["mountPoint"] for s in az("batchai", "file-server", "list", *where)] == [
        str(tmp_path / "nfs")
    ]
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps({"properties": {
        "vmSize": "Standard_NC6", "vmPriority": "lowpriority",
        "scaleSettings": {"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 2}},
        "nodeSetup": {"setupTask": {"commandLine": "echo ready", "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/nfs"},
                      "mountVolumes": {"fileServers": [{"fileServer": {"id": server_id}, "relativeMountPath": "nfs"}]}},
    }}))  # fmt: skip
    cluster = az("batchai", "cluster", "create", *where, "-n", "gpus", "-f", str(config), "-u", "ops", "-p", "Pw-1")
    assert cluster["provisioningState"] == "succeeded" and cluster["vmSize"] == "Standard_NC6"
    assert cluster["scaleSettings"]["autoScale"]["maximumNodeCount"] == 2 and cluster["vmPriority"] == "lowpriority"
    assert cluster["nodeSetup"]["mountVolumes"]["fileServers"][0]["relativeMountPath"] == "nfs"
    with httpx.Client(base_url=arm_cluster.api_url, headers=headers, verify=str(tls_files.ca), timeout=30) as http:
        pools = {p["name"]: p for p in http.get("/v1/pools").json()["pools"]}
    settings = pools[f"{ws}.gpus"]["settings"]
    assert settings["volumes"][0]["path"] == str(tmp_path / "nfs") and settings["setup"]["command"] == "echo ready"
    resized = az("batchai", "cluster", "resize", *where, "-n", "gpus", "-t", "0")
    assert resized["scaleSettings"]["manual"]["targetNodeCount"] == 0
    assert az("batchai", "cluster", "show", *where, "-n", "gpus")["currentNodeCount"] == 0
    assert [c["name"] for c in az("batchai", "cluster", "list", *where)] == ["gpus"]
    assert az("batchai", "cluster", "node", "list", *where, "-c", "gpus") == []
    usages = {u["name"]["value"]: u["currentValue"] for u in az("batchai", "list-usages", "-l", "eastus")}
    assert usages["Clusters"] >= 1
    az.text("batchai", "cluster", "delete", *where, "-n", "gpus", "-y")
    assert az("batchai", "cluster", "list", *where) == []
