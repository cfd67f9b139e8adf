"""Every trainyard service of docker-compose.yml starts, as a local process, with the compose environment.

The compose environment is translated for this machine: the hostnames redis, postgres, azurite
and api become 127.0.0.1 with the ports of this test's own servers (a Redis with the .env
password, a private PostgreSQL database, Azurite), 0.0.0.0 binds become 127.0.0.1 and worker
addresses become 127.0.0.x. Nothing else of the service's command or environment changes.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import BlobServer, free_port, private_postgres_database, redis_binary, wait_for_port
from tests.test_compose import env_example, load_compose, trainyard_services

pytestmark = pytest.mark.timeout(180)
STAY_UP_S = 4.0
ORDER = ["storage-init", "api", "scheduler-1", "scheduler-2", "worker-1", "worker-2", "flower"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Redis with the example password, a PostgreSQL database and Azurite, all on 127.0.0.1."""
    base = tmp_path_factory.mktemp("compose")
    env = env_example()
    port = free_port()
    redis_process = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(base),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--requirepass",
            env["REDIS_PASSWORD"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        with private_postgres_database() as database_url, BlobServer("azurite", base / "azurite") as azurite:
            yield {"base": base, "redis_port": port, "database_url": database_url, "azurite": azurite, "env": env}
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)


def translate_env(environment: dict[str, str], servers: dict[str, Any], api_port: int, home: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "AZURE_", "FLOWER_"))}
    for name, value in environment.items():
        value = value.replace("@redis:6379", f"@127.0.0.1:{servers['redis_port']}")
        value = value.replace("http://azurite:10000", f"http://127.0.0.1:{servers['azurite'].port}")
        value = value.replace("http://api:8642", f"http://127.0.0.1:{api_port}")
        env[name] = value
    # The compose database is PostgreSQL with the .env password; here: this test's own database.
    assert environment["TRAINYARD_DATABASE_URL"].startswith("postgresql://")
    env["TRAINYARD_DATABASE_URL"] = servers["database_url"]
    env["TRAINYARD_HOME"] = str(home)
    return env


def translate_command(command: list[str], api_port: int, flower_port: int, worker_address: str) -> list[str]:
    args = [a.replace("0.0.0.0", "127.0.0.1") for a in command]
    replacements = {"api": {"8642": str(api_port)}, "flower": {"5555": str(flower_port)}}.get(args[0], {})
    args = [replacements.get(a, a) for a in args]
    if args[0] == "worker":
        args[args.index("--address") + 1] = worker_address
    return [sys.executable, "-m", "trainyard", *args]


@pytest.fixture(scope="module")
def services(servers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    compose = load_compose(servers["env"])
    defined = trainyard_services(compose)
    assert set(defined) == set(ORDER), sorted(defined)
    api_port, flower_port = free_port(), free_port()
    started: dict[str, subprocess.Popen[bytes]] = {}
    envs: dict[str, dict[str, str]] = {}
    logs = contextlib.ExitStack()
    try:
        for index, name in enumerate(ORDER):
            service = defined[name]
            home = servers["base"] / "homes" / name
            home.mkdir(parents=True)
            env = translate_env(service["environment"], servers, api_port, home)
            args = translate_command(service["command"], api_port, flower_port, f"127.0.0.{20 + index}")
            log = logs.enter_context((servers["base"] / f"{name}.log").open("wb"))
            started[name] = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            envs[name] = env
            if name == "storage-init":
                assert started[name].wait(timeout=60) == 0, (servers["base"] / f"{name}.log").read_text()
            if name == "api":
                _wait_http(f"http://127.0.0.1:{api_port}/healthz", started[name], servers["base"] / "api.log")
        yield {
            "processes": started,
            "envs": envs,
            "api_port": api_port,
            "flower_port": flower_port,
            "base": servers["base"],
        }
    finally:
        for process in started.values():
            if process.poll() is None:
                process.terminate()
        for process in started.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logs.close()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered at {url}; see {log}")


def test_storage_init_created_the_blob_container(services: dict[str, Any], servers: dict[str, Any]) -> None:
    from azure.storage.blob import BlobServiceClient

    env = services["envs"]["api"]
    container = env["TRAINYARD_STORAGE_URL"].removeprefix("az://").split("/")[0]
    client = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
    assert client.get_container_client(container).exists()


def test_api_answers_and_workers_register(services: dict[str, Any]) -> None:
    api = f"http://127.0.0.1:{services['api_port']}"
    assert httpx.get(f"{api}/healthz").json()["ok"] is True
    token = services["envs"]["api"]["TRAINYARD_ADMIN_TOKEN"]
    assert httpx.get(f"{api}/v1/nodes").status_code == 401
    deadline, ids = time.monotonic() + 60, set[str]()
    while time.monotonic() < deadline and not {"worker-1", "worker-2"} <= ids:
        reply = httpx.get(f"{api}/v1/nodes", headers={"Authorization": f"Bearer {token}"})
        ids = {n["id"] for n in reply.json()["nodes"] if n["state"] == "up"}
        time.sleep(0.3)
    assert {"worker-1", "worker-2"} <= ids


def test_one_scheduler_takes_the_lease(services: dict[str, Any]) -> None:
    from trainyard.db.engine import make_engine, make_sessionmaker
    from trainyard.scheduler.lease import current_leader

    engine = make_engine(services["envs"]["scheduler-1"]["TRAINYARD_DATABASE_URL"])
    sessions = make_sessionmaker(engine)

    def leader() -> tuple[str, int] | None:
        with sessions() as session:
            return current_leader(session)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and leader() is None:
        time.sleep(0.2)
    assert leader() is not None
    engine.dispose()
    logs = [(services["base"] / f"scheduler-{n}.log").read_text() for n in (1, 2)]
    assert sum("leads" in text for text in logs) == 1, logs


def test_flower_wants_credentials(services: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{services['flower_port']}"
    _wait_http(f"{url}/healthcheck", services["processes"]["flower"], services["base"] / "flower.log")
    assert httpx.get(f"{url}/api/workers", timeout=5).status_code == 401
    user, password = services["envs"]["flower"]["FLOWER_BASIC_AUTH"].split(":", 1)
    assert httpx.get(f"{url}/healthcheck", auth=(user, password), timeout=5).status_code == 200


def test_every_service_stays_up(services: dict[str, Any]) -> None:
    time.sleep(STAY_UP_S)
    dead = {
        name: p.returncode
        for name, p in services["processes"].items()
        if name != "storage-init" and p.poll() is not None
    }
    assert not dead, {name: (services["base"] / f"{name}.log").read_text()[-2000:] for name in dead}
