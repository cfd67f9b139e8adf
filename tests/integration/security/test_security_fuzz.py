"""Schemathesis against the running API (real database and Redis): no 5xx, no response off its schema.

The API runs without worker nodes: fuzzed job specs are stored and queued, never run. Every
check but the two about input strictness runs (`positive_data_acceptance` and
`negative_data_rejection`: job specs are validated beyond what a JSON schema can say, and the
OpenAPI document shows the job body as a free-form object). Real ids of a job, a token and a
sweep are handed to schemathesis so that the routes behind them are reached, not only their 404s.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.security.conftest import api, create_token
from tests.services import private_postgres_database
from trainyard.up import Cluster, start_cluster

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 100
RUN_TIMEOUT_S = 240
# Redis database numbers of the session's private Redis used by these control planes.
REDIS_DB = {"sqlite": 5, "postgresql": 6}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: str
) -> Iterator[Cluster]:
    """API and scheduler only, on a database of their own."""
    home = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    redis_url = redis_server.rsplit("/", 1)[0] + f"/{REDIS_DB[request.param]}"
    env = {"TRAINYARD_REDIS_URL": redis_url, "TRAINYARD_ADMIN_TOKEN": "", "TRAINYARD_SECRET_KEY": ""}
    if request.param == "sqlite":
        yield from _started(home, {**env, "TRAINYARD_DATABASE_URL": f"sqlite:///{home / 'trainyard.db'}"})
        return
    with private_postgres_database() as database_url:
        yield from _started(home, {**env, "TRAINYARD_DATABASE_URL": database_url})


def _started(home: Path, env: dict[str, str]) -> Iterator[Cluster]:
    started = start_cluster(workers=0, home=home, extra_env=env)
    try:
        yield started
    finally:
        started.stop()


def _known_ids(cluster: Cluster) -> dict[str, str]:
    """Ids of real objects, so that fuzzing reaches past the 404s (the job is cancelled: a followed
    log of it ends at once)."""
    with api(cluster, cluster.admin_token) as http:
        job = http.post("/v1/jobs", json={"name": "fuzz-target", "command": "true", "pool": "none"}).json()
        http.post(f"/v1/jobs/{job['id']}:cancel")
        ids = {"job_id": job["id"], "token_id": create_token(cluster, "viewer", "fuzz")["id"]}
        template = {"name": "fuzz-{x}", "command": "true", "pool": "none"}
        sweep = http.post("/v1/sweeps", json={"template": template, "grid": {"x": [1]}})
        assert sweep.status_code == 201, sweep.text
        ids["sweep_id"] = sweep.json()["id"]
    return ids


def test_schemathesis_finds_no_server_error_and_no_response_off_schema(control_plane: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(f'{k} = "{v}"\n' for k, v in _known_ids(control_plane).items()))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{control_plane.api_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {control_plane.admin_token}",
        "--checks",
        "all",
        "--exclude-checks",
        "negative_data_rejection,positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        # One worker: several threads trip a CPython 3.11 `ast` thread-safety bug inside Hypothesis.
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20_000:]
    assert " passed" in output and "failed" not in output.split("SUMMARY")[-1], output[-5_000:]
