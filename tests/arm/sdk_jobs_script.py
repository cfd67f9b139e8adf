"""Client side of test_sdk_jobs.py: Batch AI job work through azure-mgmt-batchai 7.0.0 or 2.0.0, as the
official recipes wrote it, only base URL and credential changed (tests/arm/clients.py).

Run in a client venv: `python sdk_jobs_script.py <sdk7|sdk2> <mode> <args.json>`; it emits one JSON result.
Modes: `jobs` (create each given job file, wait for the ends, page the list, read stdout.txt by link),
`live` (a running job's stdout.txt by range, then terminate and delete), `sweep` (bulk creation of a
parameter sweep, as the recipes' utilities did).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any

import requests  # the clients' own transport dependency
from clients import emit, sdk2_client, sdk7_client, target_from_env

ENDED = ("succeeded", "failed")


class Batch:
    """The few calls the modes make, over either SDK (7.0.0's begin_*/options, 2.0.0's pollers)."""

    def __init__(self, flavor: str, workspace: str, experiment: str):
        self.flavor, self.target = flavor, target_from_env()
        self.client = sdk7_client() if flavor == "sdk7" else sdk2_client()
        self.models = importlib.import_module("azure.mgmt.batchai.models")
        self.rg, self.ws, self.exp = self.target.resource_group, workspace, experiment

    def _wait(self, poller: Any) -> Any:
        return poller.result()

    def setup(self) -> None:
        m = self.models
        if self.flavor == "sdk7":
            self._wait(
                self.client.workspaces.begin_create(self.rg, self.ws, m.WorkspaceCreateParameters(location="eastus"))
            )
            self._wait(self.client.experiments.begin_create(self.rg, self.ws, self.exp))
        else:
            self._wait(self.client.workspaces.create(self.rg, self.ws, "eastus"))
            self._wait(self.client.experiments.create(self.rg, self.ws, self.exp))

    def create(self, name: str, parameters: Any, wait: bool = True) -> Any:
        if isinstance(parameters, dict):
            parameters = self.models.JobCreateParameters.deserialize(parameters)
        jobs = self.client.jobs
        poller = (jobs.begin_create if self.flavor == "sdk7" else jobs.create)(
            self.rg, self.ws, self.exp, name, parameters
        )
        return self._wait(poller) if wait else poller

    def get(self, name: str) -> Any:
        return self.client.jobs.get(self.rg, self.ws, self.exp, name)

    def wait_ended(self, names: list[str], timeout_s: float) -> dict[str, Any]:
        deadline, jobs = time.monotonic() + timeout_s, {}
        while time.monotonic() < deadline:
            jobs = {n: self.get(n) for n in names}
            if all(j.execution_state in ENDED for j in jobs.values()):
                break
            time.sleep(1)
        return jobs

    def wait_state(self, name: str, state: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.get(name)
            if job.execution_state == state:
                return job
            time.sleep(0.5)
        return self.get(name)

    def list_names(self, page_size: int) -> tuple[list[str], int]:
        options = self.models.JobsListByExperimentOptions(max_results=page_size)
        pages = (
            self.client.jobs.list_by_experiment(self.rg, self.ws, self.exp, options).by_page()
            if self.flavor == "sdk7"
            else None
        )
        if pages is not None:
            listed = [[j.name for j in page] for page in pages]
            return [n for page in listed for n in page], len(listed)
        paged = self.client.jobs.list_by_experiment(self.rg, self.ws, self.exp, options)
        return [j.name for j in paged], -1

    def files(self, name: str, directory_id: str = "stdouterr") -> dict[str, Any]:
        options = self.models.JobsListOutputFilesOptions(outputdirectoryid=directory_id, linkexpiryinminutes=10)
        return {f.name: f for f in self.client.jobs.list_output_files(self.rg, self.ws, self.exp, name, options)}

    def terminate(self, name: str) -> None:
        jobs = self.client.jobs
        self._wait(
            (jobs.begin_terminate if self.flavor == "sdk7" else jobs.terminate)(self.rg, self.ws, self.exp, name)
        )

    def delete(self, name: str) -> None:
        jobs = self.client.jobs
        self._wait((jobs.begin_delete if self.flavor == "sdk7" else jobs.delete)(self.rg, self.ws, self.exp, name))

    def missing(self, name: str) -> bool:
        try:
            self.get(name)
        except Exception as exc:  # ResourceNotFoundError (7.0.0) or CloudError (2.0.0): both carry the 404
            return (
                "404" in str(getattr(exc, "status_code", ""))
                or "404" in repr(getattr(exc, "response", exc))
                or "not found" in str(exc).lower()
            )
        return False


def fetch(url: str, byte_range: str | None = None) -> tuple[int, bytes]:
    """A download link as `az batchai job file stream` fetches it: no Authorization header."""
    headers = {"Range": byte_range} if byte_range else {}
    answer = requests.get(url, headers=headers, verify=str(target_from_env().ca_bundle), timeout=30)
    return answer.status_code, answer.content


def mode_jobs(batch: Batch, args: dict[str, Any]) -> dict[str, Any]:
    names = list(args["jobs"])
    for name, doc in args["jobs"].items():
        batch.create(name, doc)
    jobs = batch.wait_ended(names, args.get("timeout_s", 240))
    listed, pages = batch.list_names(2)
    first = batch.files(names[0])
    status, head = fetch(first["stdout.txt"].download_url, "bytes=0-15")
    outputs: dict[str, Any] = {}
    if args.get("output_id"):  # a declared output directory of the first job: its files, each one's bytes
        listed_files = batch.files(names[0], args["output_id"])
        outputs = {n: fetch(f.download_url)[1].decode(errors="replace") if f.download_url else "(directory)"
                   for n, f in listed_files.items()}  # fmt: skip
    return {
        "outputs": outputs,
        "states": {n: j.execution_state for n, j in jobs.items()},
        "exit_codes": {n: (j.execution_info.exit_code if j.execution_info else None) for n, j in jobs.items()},
        "tool_types": {n: j.tool_type for n, j in jobs.items()},
        "listed": listed,
        "pages": pages,
        "files": sorted(first),
        "stdout_status": status,
        "stdout_head": head.decode(errors="replace"),
        "stdout": fetch(first["stdout.txt"].download_url)[1].decode(errors="replace"),
        "stderr": {
            n: fetch(batch.files(n)["stderr.txt"].download_url)[1].decode(errors="replace")[-2000:]
            for n in names
            if jobs[n].execution_state != "succeeded"
        },
    }


def mode_live(batch: Batch, args: dict[str, Any]) -> dict[str, Any]:
    name = args["name"]
    batch.create(name, args["job"])
    running = batch.wait_state(name, "running", 120)
    seen = b""
    deadline = time.monotonic() + 60
    while b"tick 3" not in seen and time.monotonic() < deadline:
        files = batch.files(name)
        if "stdout.txt" in files and files["stdout.txt"].content_length:
            seen = fetch(files["stdout.txt"].download_url)[1]
        time.sleep(0.5)
    files = batch.files(name)
    status, middle = fetch(files["stdout.txt"].download_url, "bytes=7-12")
    still = batch.get(name).execution_state
    listed, _pages = batch.list_names(2)
    batch.terminate(name)
    ended = batch.wait_state(name, "failed", 60)
    batch.delete(name)
    return {
        "running": running.execution_state,
        "while_running": still,
        "seen": seen.decode(errors="replace"),
        "range_status": status,
        "range": middle.decode(errors="replace"),
        "files": sorted(files),
        "listed": listed,
        "after_terminate": ended.execution_state,
        "deleted": batch.missing(name),
    }


def mode_sweep(batch: Batch, args: dict[str, Any]) -> dict[str, Any]:
    m = batch.models
    cluster = m.ResourceId(id=args["cluster_id"])
    names = []
    pollers = []
    for lr in args["learning_rates"]:
        name = "sweep_lr_" + str(lr).replace(".", "_")
        parameters = m.JobCreateParameters(
            cluster=cluster,
            node_count=1,
            std_out_err_path_prefix="$AZ_BATCHAI_JOB_MOUNT_ROOT/logs",
            environment_variables=[m.EnvironmentVariable(name="LEARNING_RATE", value=str(lr))],
            custom_toolkit_settings=m.CustomToolkitSettings(command_line="echo training with lr=$LEARNING_RATE"),
        )
        pollers.append(batch.create(name, parameters, wait=False))
        names.append(name)
    for poller in pollers:
        batch._wait(poller)
    jobs = batch.wait_ended(names, args.get("timeout_s", 240))
    outputs = {n: fetch(batch.files(n)["stdout.txt"].download_url)[1].decode().strip() for n in names}
    return {"states": {n: j.execution_state for n, j in jobs.items()}, "stdout": outputs}


def main() -> None:
    flavor, mode, args_file = sys.argv[1:4]
    with open(args_file) as handle:
        args = json.load(handle)
    batch = Batch(flavor, args["workspace"], args["experiment"])
    batch.setup()
    emit({"jobs": mode_jobs, "live": mode_live, "sweep": mode_sweep}[mode](batch, args))


if __name__ == "__main__":
    main()
