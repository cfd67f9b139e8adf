"""The /arm surface over HTTP (FastAPI's test client on a real database): envelopes, CloudErrors with
their field target, workspace scoping, 409s, paging, and signed download links with ranges."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.arm.served import Api, served
from trainyard import logstore
from trainyard.api.app import create_app
from trainyard.api.arm import job_view, links, purge
from trainyard.api.auth import new_token, token_hash
from trainyard.config import load_settings
from trainyard.db.models import ApiToken, ArmJobPurge, Attempt, Job, Node, Part, Volume, utcnow

ADMIN = "arm-test-admin-token"
SECRET = "s" * 44
Q = "?api-version=2018-05-01"
GROUP = "/arm/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.BatchAI"
WS = GROUP + "/workspaces"
JOB = {
    "properties": {
        "cluster": {
            "id": "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.BatchAI/workspaces/w1/clusters/default"
        },
        "nodeCount": 1,
        "customToolkitSettings": {"commandLine": "echo hello"},
    }
}


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = load_settings({
        "TRAINYARD_HOME": str(tmp_path / "home"),
        "TRAINYARD_DATABASE_URL": database_url,
        "TRAINYARD_STORAGE_URL": f"file://{tmp_path / 'blobs'}",
        "TRAINYARD_ADMIN_TOKEN": ADMIN,
        "TRAINYARD_SECRET_KEY": SECRET,
        "TRAINYARD_REDIS_URL": "redis://127.0.0.1:1/0",  # the scheduler's wake-up only: missing it is harmless
    }, home_files=False)  # fmt: skip
    app = create_app(settings, notifier=False)
    with served(app, ADMIN) as client:
        yield client


def _token(api: Api, role: str, workspace: str) -> dict[str, str]:
    token = new_token()
    with api.app.state.sessions.begin() as session:
        session.add(
            ApiToken(id="tk" + token[-8:], name="t", role=role, workspace=workspace, token_hash=token_hash(token))
        )
    return {"Authorization": f"Bearer {token}"}


def _workspace(api: Api, name: str = "w1", experiment: str | None = "e1") -> None:
    assert api.put(f"{WS}/{name}{Q}", json={"location": "eastus", "tags": {"team": "a"}}).status_code == 200
    if experiment:
        assert api.put(f"{WS}/{name}/experiments/{experiment}{Q}").status_code == 200


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def test_a_workspace_is_an_arm_resource_created_done_and_listed_by_group(api: Api) -> None:
    created = api.put(f"{WS}/w1{Q}", json={"location": "eastus", "tags": {"team": "a"}})
    assert created.status_code == 200
    body = created.json()
    assert body["id"] == "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.BatchAI/workspaces/w1"
    assert (body["name"], body["type"], body["location"], body["tags"]) == (
        "w1", "Microsoft.BatchAI/workspaces", "eastus", {"team": "a"})  # fmt: skip
    assert body["properties"]["provisioningState"] == "succeeded"
    patched = api.patch(f"{WS}/w1{Q}", json={"tags": {"team": "b"}}).json()
    assert patched["tags"] == {"team": "b"} and api.get(f"{WS}/w1{Q}").json()["tags"] == {"team": "b"}
    listed = api.get(f"/arm/subscriptions/sub-1/providers/Microsoft.BatchAI/workspaces{Q}").json()
    assert [w["name"] for w in listed["value"]] == ["w1"] and "nextLink" not in listed
    assert api.get(f"/arm/subscriptions/other/providers/Microsoft.BatchAI/workspaces{Q}").json() == {"value": []}
    assert api.delete(f"{WS}/w1{Q}").status_code == 200
    assert _error(api.get(f"{WS}/w1{Q}"))["code"] == "ResourceNotFound"


def test_api_version_is_required_and_must_be_2018_05_01(api: Api) -> None:
    missing = api.get(f"{WS}/w1")
    assert missing.status_code == 400 and _error(missing)["target"] == "api-version"
    wrong = api.get(f"{WS}/w1?api-version=2017-09-01-preview")
    assert wrong.status_code == 400 and _error(wrong)["code"] == "InvalidApiVersionParameter"


def test_a_bad_body_is_a_cloud_error_naming_the_field_and_nothing_is_stored(api: Api) -> None:
    refused = api.put(f"{WS}/w1{Q}", json={"location": 7})
    assert refused.status_code == 400
    assert (_error(refused)["code"], _error(refused)["target"]) == ("InvalidParameter", "location")
    assert api.get(f"{WS}/w1{Q}").status_code == 404
    _workspace(api)
    bad_job = {"properties": {**JOB["properties"], "nodeCount": "two"}}
    refused = api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=bad_job)
    assert refused.status_code == 400 and _error(refused)["target"] == "properties.nodeCount"
    assert api.get(f"{WS}/w1/experiments/e1/jobs/j1{Q}").status_code == 404
    with api.app.state.sessions() as session:
        assert session.query(Job).count() == 0


def test_errors_outside_arm_keep_trainyard_shapes(api: Api) -> None:
    assert api.get("/v1/jobs/jnope").json() == {"detail": "no job jnope"}
    assert "error" in api.get(f"/arm/nowhere{Q}").json()


def test_auth_errors_are_cloud_errors(api: Api) -> None:
    _workspace(api)
    anonymous = api.get(f"{WS}/w1{Q}", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and _error(anonymous)["code"] == "AuthenticationFailed"
    viewer = _token(api, "viewer", "w1")
    refused = api.put(f"{WS}/w1/experiments/e2{Q}", headers=viewer)
    assert refused.status_code == 403 and _error(refused)["code"] == "AuthorizationFailed"


def test_a_workspace_token_sees_only_its_workspace_and_others_are_not_found(api: Api) -> None:
    _workspace(api, "w1")
    _workspace(api, "w2")
    scoped = _token(api, "user", "w1")
    assert api.get(f"{WS}/w1/experiments/e1{Q}", headers=scoped).status_code == 200
    hidden = api.get(f"{WS}/w2/experiments/e1{Q}", headers=scoped)
    assert hidden.status_code == 404 and _error(hidden)["code"] == "ResourceNotFound"
    assert api.put(f"{WS}/w2/experiments/e1/jobs/j1{Q}", json=JOB, headers=scoped).status_code == 404
    listed = api.get(f"{WS}{Q}", headers=scoped).json()
    assert [w["name"] for w in listed["value"]] == ["w1"]


def test_a_workspace_name_lives_in_one_resource_group(api: Api) -> None:
    _workspace(api, "w1", None)
    elsewhere = "/arm/subscriptions/sub-1/resourceGroups/rg-2/providers/Microsoft.BatchAI/workspaces/w1"
    assert api.get(elsewhere + Q).status_code == 404
    taken = api.put(elsewhere + Q, json={"location": "eastus"})
    assert taken.status_code == 409 and _error(taken)["code"] == "Conflict"


def test_a_job_put_twice_is_the_same_job_and_another_body_is_a_conflict(api: Api) -> None:
    _workspace(api)
    first = api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB)
    assert first.status_code == 200, first.text
    props = first.json()["properties"]
    assert (props["executionState"], props["toolType"], props["nodeCount"]) == ("queued", "custom", 1)
    assert props["provisioningState"] == "succeeded" and props["cluster"] == JOB["properties"]["cluster"]
    again = api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB)
    assert again.status_code == 200 and again.json()["properties"]["creationTime"] == props["creationTime"]
    other = {"properties": {**JOB["properties"], "nodeCount": 2}}
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=other).status_code == 409
    with api.app.state.sessions() as session:
        job = session.query(Job).one()
        assert (job.workspace, job.experiment, job.name) == ("w1", "e1", "j1")


def test_terminate_then_delete_cancels_and_forgets_the_job(api: Api) -> None:
    _workspace(api)
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200
    assert api.post(f"{WS}/w1/experiments/e1/jobs/j1/terminate{Q}").status_code == 200
    props = api.get(f"{WS}/w1/experiments/e1/jobs/j1{Q}").json()["properties"]
    assert props["executionState"] == "failed"
    assert props["executionInfo"]["errors"][0]["code"] == "JobTerminated" if "executionInfo" in props else True
    assert api.delete(f"{WS}/w1/experiments/e1/jobs/j1{Q}").status_code == 200
    assert api.get(f"{WS}/w1/experiments/e1/jobs/j1{Q}").status_code == 404
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200  # the name is free again


def test_deleting_what_is_not_there_answers_204_and_another_workspaces_resources_are_left_alone(api: Api) -> None:
    _workspace(api, "w1")
    _workspace(api, "w2")
    assert api.put(f"{WS}/w2/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200
    missing = [f"{WS}/gone", f"{WS}/w1/experiments/gone", f"{WS}/w1/experiments/e1/jobs/gone",
               f"{WS}/gone/experiments/e1/jobs/j1", f"{WS}/w1/clusters/gone", f"{WS}/w1/fileServers/gone",
               f"{WS}/gone/clusters/c1", f"{WS}/gone/fileServers/f1"]  # fmt: skip
    for url in missing:
        answer = api.delete(url + Q)
        assert (answer.status_code, answer.content) == (204, b""), url
    scoped = _token(api, "admin", "w1")  # w2's resources exist; to w1's token they are as absent
    for url in (f"{WS}/w2", f"{WS}/w2/experiments/e1", f"{WS}/w2/experiments/e1/jobs/j1"):
        assert api.delete(url + Q, headers=scoped).status_code == 204, url
    assert api.get(f"{WS}/w2/experiments/e1/jobs/j1{Q}").json()["properties"]["executionState"] == "queued"
    assert api.delete(f"{WS}/w1/experiments/e1/jobs/j1{Q}", headers={"Authorization": ""}).status_code == 401


def test_deleting_an_experiment_retires_its_jobs(api: Api) -> None:
    _workspace(api)
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200
    assert api.delete(f"{WS}/w1/experiments/e1{Q}").status_code == 200
    assert api.get(f"{WS}/w1/experiments/e1{Q}").status_code == 404
    with api.app.state.sessions() as session:
        assert session.query(Job).one().state == "cancelled"


def test_lists_page_with_an_absolute_next_link_on_the_requests_base_url(api: Api) -> None:
    _workspace(api)
    for i in range(5):
        assert api.put(f"{WS}/w1/experiments/e1/jobs/j{i}{Q}", json=JOB).status_code == 200
    proxied = {"Host": "arm.example:8443", "X-Forwarded-Proto": "https"}  # as behind a TLS proxy
    names, url = [], f"{WS}/w1/experiments/e1/jobs{Q}&maxresults=2"
    for _ in range(5):
        page = api.get(url, headers=proxied).json()
        names += [j["name"] for j in page["value"]]
        if "nextLink" not in page:
            break
        assert (
            page["nextLink"].startswith("https://arm.example:8443/arm/")
            and "api-version=2018-05-01" in page["nextLink"]
        )
        url = page["nextLink"].removeprefix("https://arm.example:8443")
    assert names == ["j0", "j1", "j2", "j3", "j4"]
    bad = api.get(f"{WS}/w1/experiments/e1/jobs{Q}&$skiptoken=%%%")
    assert bad.status_code == 400 and _error(bad)["target"] == "$skiptoken"
    too_many = api.get(f"{WS}/w1/experiments/e1/jobs{Q}&maxresults=1001")
    assert too_many.status_code == 400 and _error(too_many)["target"] == "maxresults"


def _running_with_logs(api: Api, data: bytes) -> str:
    """The job j1, made to look started on a node, with `data` in its rank 0 stdout."""
    with api.app.state.sessions.begin() as session:
        job = session.query(Job).one()
        session.add(Node(id="n1", pool="default", address="10.0.0.7"))
        session.flush()
        session.add(Attempt(job_id=job.id, number=1, state="running", started_at=utcnow()))
        session.flush()
        session.add(Part(job_id=job.id, attempt=1, rank=0, node_id="n1", state="running"))
        job.state = "running"
        job_id = str(job.id)
    api.app.state.storage.put(logstore.segment_key(job_id, 1, 0, "stdout", 0), data)
    return job_id


def test_stdouterr_lists_live_logs_with_signed_links_that_honour_ranges(api: Api) -> None:
    _workspace(api)
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200
    job_id = _running_with_logs(api, b"0123456789")
    listed = api.post(
        f"{WS}/w1/experiments/e1/jobs/j1/listOutputFiles{Q}&outputdirectoryid=stdouterr&linkexpiryinminutes=5"
    )
    assert listed.status_code == 200, listed.text
    files = {f["name"]: f for f in listed.json()["value"]}
    assert set(files) == {"stdout.txt", "stderr.txt"}
    assert files["stdout.txt"]["properties"]["contentLength"] == 10 and files["stdout.txt"]["fileType"] == "file"
    url = files["stdout.txt"]["downloadUrl"]
    anonymous = {"Authorization": ""}
    assert api.get(url, headers=anonymous).content == b"0123456789"
    part = api.get(url, headers={**anonymous, "Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345" and part.headers["content-range"] == "bytes 2-5/10"
    assert api.get(url, headers={**anonymous, "Range": "bytes=-3"}).content == b"789"
    beyond = api.get(url, headers={**anonymous, "Range": "bytes=10-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == "bytes */10"
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert api.get(tampered, headers=anonymous).status_code == 403
    expired = links.sign(SECRET, links.FileRef(job_id, 1, 0, "stdout"), time.time() - 1)
    assert api.get(f"/arm/files/{expired}", headers=anonymous).status_code == 403
    foreign = links.sign("another-secret", links.FileRef(job_id, 1, 0, "stdout"), time.time() + 60)
    assert api.get(f"/arm/files/{foreign}", headers=anonymous).status_code == 403
    nodes = api.post(f"{WS}/w1/experiments/e1/jobs/j1/listRemoteLoginInformation{Q}").json()["value"]
    assert nodes == [{"nodeId": "n1", "ipAddress": "10.0.0.7", "port": 22}]


def test_an_output_directory_the_job_does_not_declare_is_not_found(api: Api) -> None:
    _workspace(api)
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200
    missing = api.post(f"{WS}/w1/experiments/e1/jobs/j1/listOutputFiles{Q}&outputdirectoryid=MODEL")
    assert missing.status_code == 404 and _error(missing)["code"] == "ResourceNotFound"
    short = api.post(
        f"{WS}/w1/experiments/e1/jobs/j1/listOutputFiles{Q}&outputdirectoryid=stdouterr&linkexpiryinminutes=1"
    )
    assert short.status_code == 400 and _error(short)["target"] == "linkexpiryinminutes"


def test_output_directories_on_mounts_are_listed_where_the_api_reads_their_storage_else_it_says_why(
    api: Api, tmp_path: Path
) -> None:
    _workspace(api)
    nfs, store = tmp_path / "nfs", tmp_path / "store"
    with api.app.state.sessions.begin() as session:
        session.add(Volume(workspace="w1", name="share", kind="host", definition={"path": str(nfs)}))
        session.add(Volume(workspace="w1", name="bucket", kind="sync", definition={"uri": f"file://{store}"}))
        session.add(Volume(workspace="w1", name="far", kind="host", definition={"path": "/srv/only-on-nodes"}))
    share = "https://acct.file.core.windows.net/"
    props = {**JOB["properties"], "mountVolumes": {
        "azureFileShares": [{"accountName": "acct", "azureFileUrl": share + "share", "relativeMountPath": "afs"},
                            {"accountName": "acct", "azureFileUrl": share + "far", "relativeMountPath": "far"}],
        "azureBlobFileSystems": [{"accountName": "acct", "containerName": "bucket", "relativeMountPath": "blobs"}],
    }, "outputDirectories": [
        {"id": "NFS", "pathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/afs/out"},
        {"id": "BLOB", "pathPrefix": "${AZ_BATCHAI_JOB_MOUNT_ROOT}/blobs", "pathSuffix": "m"},
        {"id": "FAR", "pathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/far"},
    ]}  # fmt: skip
    created = api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json={"properties": props})
    assert created.status_code == 200, created.text
    (nfs / "out" / "j1" / "sub").mkdir(parents=True)
    (nfs / "out" / "j1" / "model.bin").write_bytes(b"weights")
    (nfs / "out" / "j1" / "sub" / "x.txt").write_bytes(b"x")
    (nfs / "out" / "j1" / "leak").symlink_to("/etc/hostname")  # a link out of the readable directory
    (store / "j1" / "m").mkdir(parents=True)
    (store / "j1" / "m" / "a.txt").write_bytes(b"synced")
    url = f"{WS}/w1/experiments/e1/jobs/j1/listOutputFiles{Q}&outputdirectoryid="
    settings = api.app.state.settings
    api.app.state.settings = settings.model_copy(update={"arm_readable_paths": str(nfs)})

    listed = api.post(url + "NFS")
    assert listed.status_code == 200, listed.text
    files = {f["name"]: f for f in listed.json()["value"]}
    assert set(files) == {"model.bin", "sub"} and files["sub"]["fileType"] == "directory"
    assert api.get(files["model.bin"]["downloadUrl"], headers={"Authorization": ""}).content == b"weights"
    inside = api.post(url + "NFS&directory=sub").json()["value"]
    assert [f["name"] for f in inside] == ["x.txt"]
    for output_id, why in (("BLOB", str(store)), ("FAR", "/srv/only-on-nodes/j1")):  # not readable here
        refused = api.post(url + output_id)
        assert refused.status_code == 400 and _error(refused)["code"] == "OutputDirectoryNotReadable", refused.text
        assert why in _error(refused)["message"] and "TRAINYARD_ARM_READABLE_PATHS" in _error(refused)["message"]

    api.app.state.settings = settings.model_copy(update={"arm_readable_paths": f"{nfs},{store}"})
    synced = api.post(url + "BLOB").json()["value"]
    assert [f["name"] for f in synced] == ["a.txt"]
    assert api.get(synced[0]["downloadUrl"], headers={"Authorization": ""}).content == b"synced"


def test_a_deleted_job_keeps_its_logs_for_the_retention_time_then_is_purged(api: Api) -> None:
    _workspace(api)
    assert api.put(f"{WS}/w1/experiments/e1/jobs/j1{Q}", json=JOB).status_code == 200
    job_id = _running_with_logs(api, b"kept for a while")
    assert api.delete(f"{WS}/w1/experiments/e1/jobs/j1{Q}").status_code == 200
    sessions, storage = api.app.state.sessions, api.app.state.storage
    with sessions.begin() as session:  # the node reports the cancelled part ended
        job = session.get(Job, job_id)
        assert job is not None and job.cancel_requested
        job.state, job.ended_at = "cancelled", utcnow()
    assert purge.purge_once(sessions, storage) == 0  # within TRAINYARD_ARM_DELETE_RETENTION_S (1 h)
    assert list(storage.list(f"logs/{job_id}/"))
    with sessions.begin() as session:
        session.get(ArmJobPurge, job_id).purge_after = utcnow() - timedelta(seconds=1)
    assert purge.purge_once(sessions, storage) == 1
    assert not list(storage.list(f"logs/{job_id}/"))
    with sessions() as session:
        assert session.get(Job, job_id) is None and session.get(ArmJobPurge, job_id) is None


RECIPES = Path(__file__).resolve().parents[1] / "data" / "batchai-recipes"
# The recipes' storage (`<AZURE_BATCHAI_STORAGE_ACCOUNT>` shares and containers), as volumes of the workspace.
RECIPE_VOLUMES = {"logs": ("host", "/srv/batchai/logs"), "scripts": ("host", "/srv/batchai/scripts"),
                  "data": ("blob", "az://data"), "external": ("host", "/srv/batchai/external")}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.json")))
def test_every_official_recipe_job_file_is_created_with_its_mounts_on_the_workspaces_volumes(
    api: Api, recipe: str
) -> None:
    _workspace(api)
    with api.app.state.sessions.begin() as session:
        for name, (kind, where) in RECIPE_VOLUMES.items():
            definition = {"path": where} if kind == "host" else {"uri": where}
            session.add(Volume(workspace="w1", name=name, kind=kind, definition=definition))
    doc = json.loads((RECIPES / recipe).read_text())
    doc.pop("$schema", None)
    doc["properties"]["cluster"] = JOB["properties"]["cluster"]
    created = api.put(f"{WS}/w1/experiments/e1/jobs/recipe{Q}", json={"properties": doc["properties"]})
    assert created.status_code == 200, created.text
    tool = next(k for k in doc["properties"] if k.endswith("Settings") and k != "containerSettings")
    assert created.json()["properties"]["toolType"] == job_view.TOOL_TYPES[tool]


def test_racing_puts_of_one_job_name_make_one_job(api: Api) -> None:
    _workspace(api)
    bodies = [JOB if i % 2 == 0 else {"properties": {**JOB["properties"], "nodeCount": 2}} for i in range(8)]
    answers: list[httpx.Response] = []

    def put(body: dict[str, Any]) -> None:
        with httpx.Client(base_url=str(api.base_url), headers=dict(api.headers), timeout=60) as http:
            answers.append(http.put(f"{WS}/w1/experiments/e1/jobs/raced{Q}", json=body))

    threads = [threading.Thread(target=put, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 4 + [409] * 4, [a.text for a in answers]  # one body won the name; the other is 409
    assert len({a.json()["properties"]["creationTime"] for a in answers if a.status_code == 200}) == 1
    with api.app.state.sessions() as session:
        assert session.query(Job).count() == 1
