"""`az batchai` from azure-cli 2.91.0 against trainyard: only the cloud and the credential change.

The user's path, exactly as the README gives it: register trainyard as a cloud from its ARM endpoint
alone (it serves the cloud metadata), turn off MSAL's instance discovery (it would ask
login.microsoftonline.com), log in as a "service principal" whose secret is a trainyard token, then
the Batch AI commands as against Azure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.arm.clients import ArmTarget, ClientFailed, run_az
from trainyard.api.arm.identity import SUBSCRIPTION_ID

pytestmark = pytest.mark.integration

RESOURCE_GROUP = "az-rg"
WORKSPACE = "az-ws"
EXPERIMENT = "az-exp"
CLUSTER = "az-cluster"
JOB_WAIT_S = 120.0


@dataclass(frozen=True)
class Az:
    """`az` logged in to the cluster: `az(*args)` answers the JSON it printed, `az.text(*args)` its text."""

    target: ArmTarget
    config_dir: Path

    def __call__(self, *args: str) -> Any:
        out = self.text(*args, "-o", "json")
        return json.loads(out) if out.strip() else None

    def text(self, *args: str) -> str:
        return run_az(self.target, *args, config_dir=self.config_dir).stdout


def _job_file(tmp_path: Path, command_line: str) -> Path:
    path = tmp_path / "job.json"
    body = {"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": command_line},
                           "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP"}}  # fmt: skip
    path.write_text(json.dumps(body))
    return path


def az_login(target: ArmTarget, config_dir: Path, token: str) -> Any:
    """The README's four commands; answers what `az login` printed (the accounts)."""
    run_az(target, "cloud", "register", "-n", "trainyard", "--endpoint-resource-manager", f"{target.base_url}/",
           config_dir=config_dir)  # fmt: skip
    run_az(target, "cloud", "set", "-n", "trainyard", config_dir=config_dir)
    run_az(target, "config", "set", "core.instance_discovery=false", config_dir=config_dir)
    login = ["login", "--service-principal", "-u", "trainyard", "-p", token, "--tenant", "trainyard", "-o", "json"]
    return json.loads(run_az(target, *login, config_dir=config_dir).stdout)


@pytest.fixture(scope="module")
def az(arm_target: ArmTarget, tmp_path_factory: pytest.TempPathFactory) -> Az:
    """`az` logged in to the cluster with the admin token, its configuration private to this module."""
    config_dir = tmp_path_factory.mktemp("azure-config")
    az_login(arm_target, config_dir, arm_target.token)
    return Az(arm_target, config_dir)


@pytest.fixture(scope="module")
def experiment(az: Az) -> str:
    az("batchai", "workspace", "create", "-g", RESOURCE_GROUP, "-n", WORKSPACE, "-l", "eastus")
    az("batchai", "experiment", "create", "-g", RESOURCE_GROUP, "-w", WORKSPACE, "-n", EXPERIMENT)
    az("batchai", "cluster", "create", "-g", RESOURCE_GROUP, "-w", WORKSPACE, "-n", CLUSTER,
       "-s", "STANDARD_D1_V2", "-t", "1", "-u", "trainyard", "-p", "Not-used-1")  # fmt: skip
    return EXPERIMENT


def _job_args(name: str) -> tuple[str, ...]:
    return ("-g", RESOURCE_GROUP, "-w", WORKSPACE, "-e", EXPERIMENT, "-n", name)


def _wait_for_state(az: Az, name: str, states: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_WAIT_S
    while True:
        job: dict[str, Any] = az("batchai", "job", "show", *_job_args(name))
        if job["executionState"] in states or time.monotonic() > deadline:
            return job
        time.sleep(1)


def test_az_registers_trainyard_as_a_cloud_from_its_arm_endpoint_and_logs_in_with_a_token(
    arm_target: ArmTarget, tmp_path: Path
) -> None:
    accounts = az_login(arm_target, tmp_path, arm_target.token)
    assert [(a["id"], a["cloudName"], a["user"]["type"]) for a in accounts] == [
        (SUBSCRIPTION_ID, "trainyard", "servicePrincipal")
    ]
    cloud = json.loads(run_az(arm_target, "cloud", "show", "-n", "trainyard", config_dir=tmp_path).stdout)
    assert cloud["endpoints"]["activeDirectory"] == f"{arm_target.base_url}/identity"
    assert cloud["endpoints"]["resourceManager"] == f"{arm_target.base_url}/"


def test_az_login_takes_the_token_as_federated_token_too(arm_target: ArmTarget, tmp_path: Path) -> None:
    az_login(arm_target, tmp_path, arm_target.token)
    login = ["login", "--service-principal", "-u", "ci", "--federated-token", arm_target.token, "--tenant", "trainyard"]
    accounts = json.loads(run_az(arm_target, *login, "-o", "json", config_dir=tmp_path).stdout)
    assert [(a["id"], a["user"]["name"]) for a in accounts] == [(SUBSCRIPTION_ID, "ci")]
    workspaces = run_az(arm_target, "batchai", "workspace", "list", "-o", "json", config_dir=tmp_path).stdout
    assert isinstance(json.loads(workspaces), list)


def test_az_login_refuses_a_secret_that_is_no_trainyard_token(arm_target: ArmTarget, tmp_path: Path) -> None:
    with pytest.raises(ClientFailed, match="not a valid trainyard token"):
        az_login(arm_target, tmp_path, "not-a-trainyard-token")


def test_the_token_endpoint_grants_only_client_credentials_for_a_valid_token(arm_target: ArmTarget) -> None:
    url = f"{arm_target.base_url}/identity/trainyard/oauth2/v2.0/token"
    verify = str(arm_target.ca_bundle)
    granted = httpx.post(url, data={"grant_type": "client_credentials", "client_id": "x",
                                    "client_secret": arm_target.token}, verify=verify)  # fmt: skip
    assert granted.status_code == 200 and granted.json()["access_token"] == arm_target.token
    password = httpx.post(url, data={"grant_type": "password", "username": "u", "password": "p"}, verify=verify)
    assert (password.status_code, password.json()["error"]) == (400, "unsupported_grant_type")


def test_az_batchai_creates_lists_and_shows_workspaces_and_experiments(az: Az, experiment: str) -> None:
    workspace = az("batchai", "workspace", "show", "-g", RESOURCE_GROUP, "-n", WORKSPACE)
    assert (workspace["name"], workspace["location"], workspace["provisioningState"]) == (
        WORKSPACE, "eastus", "succeeded"
    )  # fmt: skip
    assert WORKSPACE in [w["name"] for w in az("batchai", "workspace", "list")]
    experiments = az("batchai", "experiment", "list", "-g", RESOURCE_GROUP, "-w", WORKSPACE)
    assert [e["name"] for e in experiments] == [experiment]


def test_az_batchai_runs_a_job_lists_its_files_and_streams_its_output(az: Az, experiment: str, tmp_path: Path) -> None:
    job_file = _job_file(tmp_path, "echo hello-from-az; echo to-stderr >&2")
    created = az("batchai", "job", "create", *_job_args("hello"), "-c", CLUSTER, "-f", str(job_file))
    assert created["name"] == "hello" and created["toolType"] == "custom"
    job = _wait_for_state(az, "hello", {"succeeded", "failed"})
    assert (job["executionState"], job["executionInfo"]["exitCode"]) == ("succeeded", 0), job
    listed = az("batchai", "job", "list", "-g", RESOURCE_GROUP, "-w", WORKSPACE, "-e", experiment)
    assert "hello" in [j["name"] for j in listed]
    files = {f["name"]: f for f in az("batchai", "job", "file", "list", "-g", RESOURCE_GROUP, "-w", WORKSPACE,
                                       "-e", experiment, "-j", "hello")}  # fmt: skip
    assert {"stdout.txt", "stderr.txt"} <= set(files)
    assert files["stdout.txt"]["downloadUrl"].startswith("https://")
    stream = ("batchai", "job", "file", "stream", "-g", RESOURCE_GROUP, "-w", WORKSPACE, "-e", experiment,
              "-j", "hello", "-f", "stdout.txt")  # fmt: skip
    assert az.text(*stream).strip() == "hello-from-az"


def test_az_batchai_job_terminate_ends_a_running_job(az: Az, experiment: str, tmp_path: Path) -> None:
    az("batchai", "job", "create", *_job_args("sleeper"), "-c", CLUSTER, "-f", str(_job_file(tmp_path, "sleep 300")))
    assert _wait_for_state(az, "sleeper", {"running", "succeeded", "failed"})["executionState"] == "running"
    az("batchai", "job", "terminate", *_job_args("sleeper"), "-y")
    job = _wait_for_state(az, "sleeper", {"succeeded", "failed"})
    assert job["executionState"] == "failed", job
    assert [e["code"] for e in job["executionInfo"]["errors"]] == ["JobTerminated"]
