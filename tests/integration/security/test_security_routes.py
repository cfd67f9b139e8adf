"""Every route of the OpenAPI document, called as every kind of caller: 401, 403 and 404 as SPEC §8 says.

The routes come from the running API's /openapi.json, so a route added later is covered
without touching this file; each operation's least role is read from its security requirement
(`security: [{HTTPBearer: [role]}]`, which `trainyard.api.auth.require` declares).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.security.conftest import WS_A, World, api
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

ROLES = ("viewer", "user", "admin")
PUBLIC = {("get", "/healthz")}
# The routes SPEC §8 names, and those the security world builds objects for: the walk below only
# covers what the document lists, so a route that went missing must fail here instead.
REQUIRED = {
    ("post", "/v1/jobs"), ("post", "/v1/jobs:batch"), ("get", "/v1/jobs"), ("get", "/v1/jobs/{job_id}"),
    ("post", "/v1/jobs/{job_id}:cancel"), ("get", "/v1/jobs/{job_id}/logs"), ("post", "/v1/sweeps"),
    ("get", "/v1/sweeps/{sweep_id}"), ("get", "/v1/nodes"), ("post", "/v1/nodes/{node_id}:drain"),
    ("get", "/v1/pools"), ("put", "/v1/pools/{name}"), ("get", "/healthz"), ("get", "/metrics"),
    ("post", "/v1/volumes"), ("get", "/v1/volumes/{volume_name}"), ("get", "/v1/jobs/{job_id}/outputs"),
    ("get", "/v1/jobs/{job_id}/outputs/{key}"), ("delete", "/v1/tokens/{token_id}"),
    ("post", "/v1/jobs/{job_id}:rerun"), ("post", "/v1/sweeps/{sweep_id}:rerun"),
}  # fmt: skip
# Bodies for operations that take one: each aims at workspace A, so another workspace's caller
# is refused and no call by a caller that may act has lasting effects beyond workspace A.
_TEMPLATE_A = {"name": "sec-forbidden", "command": "true", "workspace": WS_A}
BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/jobs"): _TEMPLATE_A,
    ("post", "/v1/jobs:batch"): {"jobs": [_TEMPLATE_A]},
    ("post", "/v1/tokens"): {"role": "viewer", "workspace": WS_A},
    ("post", "/v1/sweeps"): {"template": {**_TEMPLATE_A, "name": "sec-forbidden-{x}"}, "grid": {"x": [1]}},
    ("post", "/v1/sweeps/{sweep_id}/points"): {"points": [{"x": 2}]},
    ("post", "/v1/sweeps/{sweep_id}:rerun"): {"failed": True},
    ("put", "/v1/pools/{name}"): {"min_nodes": 0, "max_nodes": 0},
    ("put", "/v1/pools/{name}/setup"): {"command": "true"},
    ("put", "/v1/pools/{name}/volumes"): {"volumes": []},
    ("post", "/v1/volumes"): {"name": "sec-forbidden", "kind": "host", "path": "/srv/x", "workspace": WS_A},
    ("put", "/v1/workspaces/{workspace}/notify"): {"notify": []},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    role: str | None  # the least role; None for a public route
    params: tuple[str, ...]
    has_body: bool
    responses: frozenset[str]

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


def _least_role(operation: dict[str, Any]) -> str | None:
    requirements = operation.get("security") or []
    if not requirements:
        return None
    scopes = [scope for requirement in requirements for scope in requirement.get("HTTPBearer", [])]
    # A token of any role (no scope) is the same as the viewer role.
    return max(scopes, key=ROLES.index) if scopes else "viewer"


def operations(cluster: Cluster) -> list[Operation]:
    document = httpx.get(f"{cluster.api_url}/openapi.json", timeout=30).json()
    found = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            params = tuple(p["name"] for p in operation.get("parameters", []) if p["in"] == "path")
            found.append(
                Operation(
                    method,
                    path,
                    _least_role(operation),
                    params,
                    "requestBody" in operation,
                    frozenset(operation.get("responses", {})),
                )
            )
    return found


def call(world: World, operation: Operation, headers: dict[str, str]) -> httpx.Response:
    path = operation.path
    for name in operation.params:
        if name not in world.objects:
            pytest.fail(f"{operation}: no object for path parameter {name!r}; add one to World.objects")
        path = path.replace("{" + name + "}", world.objects[name][1])
    body = None
    if operation.has_body:
        if (operation.method, operation.path) not in BODIES:
            pytest.fail(f"{operation}: add a request body aimed at workspace A to BODIES")
        body = BODIES[(operation.method, operation.path)]
    with httpx.Client(base_url=world.cluster.api_url, timeout=30) as http:
        return http.request(operation.method.upper(), path, json=body, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _secured(world: World) -> list[Operation]:
    return [op for op in operations(world.cluster) if op.role is not None]


def _touches_workspace_object(world: World, operation: Operation) -> bool:
    return any(world.objects.get(p, ("", ""))[0] == "workspace" for p in operation.params)


def test_only_healthz_is_public_and_every_other_route_declares_401_and_403(world: World) -> None:
    ops = operations(world.cluster)
    assert REQUIRED - {(op.method, op.path) for op in ops} == set(), "routes missing from the API"
    assert {(op.method, op.path) for op in ops if op.role is None} == PUBLIC
    for op in ops:
        if op.role is not None:
            assert {"401", "403"} <= op.responses, f"{op} does not declare 401 and 403"
    assert httpx.get(f"{world.cluster.api_url}/healthz").status_code == 200


@pytest.mark.parametrize(
    "credentials",
    ["none", "malformed", "forged", "wrong-scheme", "expired", "deleted"],
)
def test_every_route_answers_401_without_a_valid_token(world: World, credentials: str) -> None:
    headers = {
        "none": {},
        "malformed": {"Authorization": "Bearer"},
        "forged": bearer("ty_" + "A" * 43),
        "wrong-scheme": {"Authorization": "Basic " + base64.b64encode(f"admin:{world.admin}".encode()).decode()},
        "expired": bearer(world.expired),
        "deleted": bearer(world.deleted),
    }[credentials]
    for op in _secured(world):
        response = call(world, op, headers)
        assert response.status_code == 401, f"{op} as {credentials}: {response.status_code} {response.text}"
        assert response.headers.get("www-authenticate") == "Bearer", op


def test_a_viewer_may_read_but_not_act(world: World) -> None:
    for op in _secured(world):
        response = call(world, op, bearer(world.viewer_a))
        if op.role == "viewer":
            assert response.status_code == 200, f"{op} as viewer: {response.status_code} {response.text}"
        else:
            assert response.status_code == 403, f"{op} as viewer: {response.status_code} {response.text}"


def test_another_workspaces_user_finds_none_of_its_objects(world: World) -> None:
    for op in _secured(world):
        response = call(world, op, bearer(world.user_b))
        if op.role == "admin":
            expected = {403}
        elif _touches_workspace_object(world, op):
            expected = {404}
        elif (op.method, op.path) in BODIES:  # creating something in workspace A: refused, nothing stored
            expected = {403, 422}
        else:  # not about any workspace's objects (nodes, pools, metrics, code upload)
            expected = {200, 201}
        assert response.status_code in expected, f"{op} as user of B: {response.status_code} {response.text}"
    with api(world.cluster, world.admin) as http:
        assert http.get("/v1/jobs", params={"name_prefix": "sec-forbidden"}).json()["jobs"] == []


def test_another_workspaces_admin_finds_none_of_its_objects(world: World) -> None:
    for op in _secured(world):
        if _touches_workspace_object(world, op):
            response = call(world, op, bearer(world.admin_b))
            assert response.status_code == 404, f"{op} as admin of B: {response.status_code} {response.text}"


def test_lists_show_another_workspace_nothing(world: World) -> None:
    job_a = world.objects["job_id"][1]
    token_a = world.objects["token_id"][1]
    with api(world.cluster, world.user_b) as http:
        for query in ({}, {"workspace": WS_A}):
            jobs = http.get("/v1/jobs", params=query).json()["jobs"]
            assert job_a not in {j["id"] for j in jobs}
            assert {j["workspace"] for j in jobs} <= {"sec-b"}
    with api(world.cluster, world.admin_b) as http:
        assert token_a not in {t["id"] for t in http.get("/v1/tokens").json()["tokens"]}
        events = http.get("/v1/audit", params={"limit": 1000}).json()["events"]
        assert job_a not in {e["job_id"] for e in events}
    with api(world.cluster, world.admin) as http:
        assert token_a in {t["id"] for t in http.get("/v1/tokens").json()["tokens"]}


def test_the_owner_reaches_the_same_objects(world: World) -> None:
    """The positive control: the 404s above come from the workspace check, not from bad ids."""
    for op in _secured(world):
        if op.method == "get" and op.role in ("viewer",) and _touches_workspace_object(world, op):
            response = call(world, op, bearer(world.viewer_a))
            assert response.status_code == 200, f"{op} as viewer of A: {response.status_code} {response.text}"
    with api(world.cluster, world.user_a) as http:
        assert http.get(f"/v1/jobs/{world.objects['job_id'][1]}").status_code == 200
        # A token of one workspace submits there when the spec names none.
        job = http.post("/v1/jobs", json={"name": "sec-default-ws", "command": "true"}).json()
        assert job["workspace"] == WS_A


def test_a_workspace_admin_mints_tokens_for_its_own_workspace_only(world: World) -> None:
    with api(world.cluster, world.admin_b) as http:
        assert http.post("/v1/tokens", json={"role": "viewer", "workspace": WS_A}).status_code == 403
        assert http.post("/v1/tokens", json={"role": "admin"}).json()["workspace"] == "sec-b"
        minted = http.post("/v1/tokens", json={"role": "user", "name": "b-user"})
    assert minted.status_code == 201 and minted.json()["workspace"] == "sec-b"
    with api(world.cluster, minted.json()["token"]) as http:
        assert http.get(f"/v1/jobs/{world.objects['job_id'][1]}").status_code == 404
