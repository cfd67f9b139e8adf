"""Fixtures of the security suite: tokens of every kind and objects of two workspaces on a real cluster."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from trainyard.up import Cluster, start_flower

WS_A = "sec-a"
WS_B = "sec-b"


def api(cluster: Cluster, token: str | None = None, timeout_s: float = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=cluster.api_url, headers=headers, timeout=timeout_s)


def create_token(cluster: Cluster, role: str, workspace: str | None, **extra: Any) -> dict[str, Any]:
    body = {"role": role, "workspace": workspace, **extra}
    with api(cluster, cluster.admin_token) as http:
        response = http.post("/v1/tokens", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def wait_for_state(cluster: Cluster, job_id: str, states: set[str], timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with api(cluster, cluster.admin_token) as http:
        while True:
            job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in states:
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']}, not {states}"
            time.sleep(0.2)


@dataclass
class World:
    """Tokens of each kind, and objects of workspace A that the others must not reach."""

    cluster: Cluster
    admin: str
    viewer_a: str
    user_a: str
    user_b: str
    admin_b: str
    expired: str
    deleted: str
    # Path parameter → (scope, id): "workspace" objects belong to A, "global" ones to nobody.
    objects: dict[str, tuple[str, str]] = field(default_factory=dict)


def _sweep_in(cluster: Cluster, workspace: str) -> str:
    """A sweep of `workspace`."""
    with api(cluster, cluster.admin_token) as http:
        template = {"name": "sec-sweep-{x}", "command": "true", "workspace": workspace}
        response = http.post("/v1/sweeps", json={"template": template, "grid": {"x": [1]}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _volume_in(cluster: Cluster, workspace: str) -> str:
    """A named volume of `workspace`."""
    with api(cluster, cluster.admin_token) as http:
        response = http.post(
            "/v1/volumes", json={"name": "sec-volume-a", "kind": "host", "path": "/srv/a", "workspace": workspace}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["name"])


def _make_world(cluster: Cluster) -> World:
    expired_after = time.monotonic() + 1.2  # the expired token lives 1 s
    tokens = {
        "viewer_a": create_token(cluster, "viewer", WS_A, name="sec-viewer-a"),
        "user_a": create_token(cluster, "user", WS_A, name="sec-user-a"),
        "user_b": create_token(cluster, "user", WS_B, name="sec-user-b"),
        "admin_b": create_token(cluster, "admin", WS_B, name="sec-admin-b"),
        "expired": create_token(cluster, "admin", None, name="sec-expired", expires_in=1),
        "deleted": create_token(cluster, "admin", None, name="sec-deleted"),
    }
    token_a = create_token(cluster, "viewer", WS_A, name="sec-target-a")
    with api(cluster, cluster.admin_token) as http:
        assert http.delete(f"/v1/tokens/{tokens['deleted']['id']}").status_code == 200
        job = http.post(
            "/v1/jobs",
            json={
                "name": "sec-job-a",
                "workspace": WS_A,
                "command": "echo a > $TRAINYARD_OUTPUT_RESULT/a.txt",
                "outputs": [{"id": "result", "uri": f"file://{cluster.home / 'outputs-a'}/"}],
            },
        ).json()
    objects = {
        "job_id": ("workspace", job["id"]),
        "token_id": ("workspace", token_a["id"]),
        "node_id": ("global", "node-1"),
        "name": ("global", "sec-pool"),
        "volume_name": ("workspace", _volume_in(cluster, WS_A)),
        "sweep_id": ("workspace", _sweep_in(cluster, WS_A)),
        "workspace": ("workspace", WS_A),  # the workspace itself (its notify settings)
    }
    assert wait_for_state(cluster, job["id"], {"succeeded", "failed"})["state"] == "succeeded"
    with api(cluster, cluster.admin_token) as http:
        outputs = http.get(f"/v1/jobs/{job['id']}/outputs")
    assert outputs.status_code == 200, outputs.text
    objects["key"] = ("workspace", outputs.json()["outputs"][0]["key"])  # an output file of job A, by its opaque key
    time.sleep(max(0.0, expired_after - time.monotonic()))
    return World(
        cluster=cluster,
        admin=cluster.admin_token,
        objects=objects,
        **{name: created["token"] for name, created in tokens.items()},
    )


@pytest.fixture(scope="session")
def world(cluster: Cluster) -> World:
    """One world per cluster (that is, per database backend)."""
    return _make_world(cluster)


@dataclass
class FlowerServer:
    url: str
    user: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password


@pytest.fixture(scope="session")
def flower(cluster: Cluster) -> Iterator[FlowerServer]:
    """`trainyard flower` (basic auth) on the cluster's Redis; it sees only what happens after it starts."""
    process = start_flower(cluster)
    user, _, password = cluster.flower_auth.partition(":")
    try:
        yield FlowerServer(cluster.flower_url, user, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
