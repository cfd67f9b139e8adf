"""Flower with basic auth shows each job part as a `trainyard.run` task whose state follows the part.

A headless Chromium logs in (basic auth on every request the page makes), renders the tasks
page, and the test asserts on what the page shows and keeps a screenshot of it.
"""

from __future__ import annotations

import ast
import base64
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.security.cdp import Browser, chromium_available
from tests.integration.security.conftest import FlowerServer, api, wait_for_state
from tests.services import free_port, unavailable, wait_for_port
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

TRAINYARD = [sys.executable, "-m", "trainyard"]
SCREENSHOT_COPY_DIR = os.environ.get("TRAINYARD_TEST_SCREENSHOTS")  # also keep the screenshot there


def _submit(cluster: Cluster, name: str, command: str) -> str:
    with api(cluster, cluster.admin_token) as http:
        response = http.post("/v1/jobs", json={"name": name, "command": command, "max_retries": 0})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _flower_tasks(flower: FlowerServer) -> dict[str, Any]:
    tasks: dict[str, Any] = httpx.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=10).json()
    return tasks


def _wait_for_task_states(flower: FlowerServer, wanted: dict[str, str], timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = _flower_tasks(flower)
        states = {task_id: tasks.get(task_id, {}).get("state") for task_id in wanted}
        if states == wanted:
            return tasks
        assert time.monotonic() < deadline, f"Flower shows {states}, not {wanted}"
        time.sleep(0.3)


@pytest.fixture
def three_jobs(cluster: Cluster, flower: FlowerServer) -> Any:
    """A finished, a failed and a running job, submitted after Flower started."""
    finished = _submit(cluster, "flower-finished", "echo done")
    failed = _submit(cluster, "flower-failed", "exit 3")
    running = _submit(cluster, "flower-running", "sleep 120")
    wait_for_state(cluster, finished, {"succeeded"})
    wait_for_state(cluster, failed, {"failed"})
    wait_for_state(cluster, running, {"running"})
    yield {"finished": finished, "failed": failed, "running": running}
    with api(cluster, cluster.admin_token) as http:
        http.post(f"/v1/jobs/{running}:cancel")


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_each_part_is_a_task_whose_state_and_arguments_follow_the_job(
    cluster: Cluster, flower: FlowerServer, three_jobs: dict[str, str]
) -> None:
    task = {kind: f"{job_id}.1.0" for kind, job_id in three_jobs.items()}
    tasks = _wait_for_task_states(
        flower, {task["finished"]: "SUCCESS", task["failed"]: "FAILURE", task["running"]: "STARTED"}
    )
    for kind, job_id in three_jobs.items():
        shown = tasks[task[kind]]
        assert shown["name"] == "trainyard.run"
        kwargs = ast.literal_eval(shown["kwargs"])
        assert (kwargs["job_id"], kwargs["name"], kwargs["attempt"], kwargs["rank"]) == (job_id, f"flower-{kind}", 1, 0)


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_a_browser_logs_in_and_sees_a_running_and_a_finished_job(
    cluster: Cluster, flower: FlowerServer, three_jobs: dict[str, str], tmp_path: Path
) -> None:
    if not chromium_available():
        unavailable("chromium is not installed (scripts/install-chromium.sh)")
    task = {kind: f"{job_id}.1.0" for kind, job_id in three_jobs.items()}
    _wait_for_task_states(flower, {task["finished"]: "SUCCESS", task["running"]: "STARTED"})
    with Browser() as browser:
        assert browser.status_of(f"{flower.url}/tasks") == 401
        credentials = base64.b64encode(f"{flower.user}:{flower.password}".encode()).decode()
        browser.set_headers({"Authorization": f"Basic {credentials}"})
        browser.open(f"{flower.url}/tasks")
        text = browser.wait_for_text(
            task["finished"],
            task["running"],
            "SUCCESS",
            "STARTED",
            "flower-finished",
            "flower-running",
            "trainyard.run",
        )
        screenshot = browser.screenshot(tmp_path / "flower-tasks.png")
        html = browser.html()
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if SCREENSHOT_COPY_DIR:
        shutil.copy(screenshot, Path(SCREENSHOT_COPY_DIR) / screenshot.name)
    # The running job's row says STARTED and the finished one's SUCCESS.
    rows = {line for line in text.splitlines() if "trainyard.run" in line}
    assert any(task["running"] in row and "STARTED" in row for row in rows), rows
    assert any(task["finished"] in row and "SUCCESS" in row for row in rows), rows
    assert "'rank': 0" in html and "'attempt': 1" in html


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_flower_answers_401_without_the_right_credentials(flower: FlowerServer) -> None:
    for page in ("/", "/tasks", "/workers", "/api/tasks", "/api/workers", "/tasks/datatable"):
        assert httpx.get(f"{flower.url}{page}", timeout=10).status_code == 401, page
        assert httpx.get(f"{flower.url}{page}", auth=(flower.user, "wrong"), timeout=10).status_code == 401, page
    assert httpx.get(f"{flower.url}/api/workers", auth=flower.auth, timeout=10).status_code == 200
    # The credentials reach Flower through its environment, never its command line.
    for process in psutil.process_iter(["cmdline"]):
        assert flower.password not in " ".join(process.info["cmdline"] or [])


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_trainyard_flower_refuses_to_start_without_credentials(cluster: Cluster) -> None:
    env = {k: v for k, v in cluster.env.items() if k != "FLOWER_BASIC_AUTH"}
    for args in (["flower"], ["flower", "--basic-auth", "no-colon"]):
        result = subprocess.run(
            [*TRAINYARD, *args, "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result
        assert "basic-auth" in result.stderr or "user:password" in result.stderr, result.stderr


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_trainyard_flower_runs_open_only_with_no_auth(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in cluster.env.items() if k != "FLOWER_BASIC_AUTH"}
    with (tmp_path / "flower.log").open("wb") as log:
        process = subprocess.Popen(
            [*TRAINYARD, "flower", "--no-auth", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, timeout_s=30)
        assert httpx.get(f"http://127.0.0.1:{port}/workers", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert "without authentication" in (tmp_path / "flower.log").read_text()


def test_up_with_flower_starts_it_with_credentials_and_stops_it(tmp_path: Path, redis_server: str) -> None:
    home, api_port, flower_port = tmp_path / "home", free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "FLOWER_"))}
    env.update(TRAINYARD_HOME=str(home), TRAINYARD_REDIS_URL=redis_server.rsplit("/", 1)[0] + "/10")
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            [
                *TRAINYARD,
                "up",
                "--workers",
                "0",
                "--port",
                str(api_port),
                "--flower",
                "--flower-port",
                str(flower_port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops it" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        user, _, password = (home / "flower-auth").read_text().strip().partition(":")
        assert (home / "flower-auth").stat().st_mode & 0o777 == 0o600
        url = (home / "flower-url").read_text().strip()
        assert url == f"http://127.0.0.1:{flower_port}"
        assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/workers", auth=(user, password), timeout=10).status_code == 200
    finally:
        up.terminate()
        assert up.wait(timeout=60) == 0
    printed = (tmp_path / "up.log").read_text()
    assert f"Flower: {url}" in printed and password in printed
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthcheck", timeout=2)
