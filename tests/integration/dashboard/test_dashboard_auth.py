"""Every dashboard route, as every kind of caller, over plain HTTP: the dashboard's share of the security suite.

The dashboard's routes are not in the OpenAPI document (they are pages), so the route walk of
tests/integration/security does not see them: this walks them from the dashboard's own routers.
Without a session a page redirects to the login form and anything else is 401; an action needs
the session's CSRF token and the REST route's role (403); another workspace's objects are 404.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.integration.dashboard.conftest import WS_A, Tokens, api
from trainyard.api.dashboard import actions, logstream, pages
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

DASHBOARD_ROUTES = [
    (method, route.path)
    for router in (pages.router, actions.router, logstream.router)
    for route in router.routes
    if isinstance(route, APIRoute)
    for method in sorted(route.methods)
]
# Routes anyone may call: the login form itself, logging out (which only clears a cookie), and /ui,
# a plain redirect to /ui/jobs (which then asks for a session).
PUBLIC = {("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout"), ("GET", "/ui")}


@pytest.fixture(scope="module")
def objects(dash_cluster: Cluster, tokens: Tokens) -> dict[str, str]:
    """Ids of workspace A's objects to fill the routes' path parameters with."""
    with api(dash_cluster, tokens.user_a) as http:
        job = http.post("/v1/jobs", json={"name": "dash-auth-job", "command": "true", "workspace": WS_A}).json()
        template = {"name": "dash-auth-{x}", "command": "true", "workspace": WS_A}
        sweep = http.post("/v1/sweeps", json={"template": template, "grid": {"x": [1]}}).json()
    return {"job_id": job["id"], "sweep_id": sweep["id"], "node_id": "node-1", "name": "dash-auth-pool",
            "key": "0" * 32}  # fmt: skip


def _path(template: str, objects: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: objects[m.group(1)], template)


@contextmanager
def _session(cluster: Cluster, token: str) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP client logged in through the form, and its session's CSRF token."""
    with httpx.Client(base_url=cluster.api_url, timeout=30, follow_redirects=False) as http:
        yield http, _log_in(http, token)


def _log_in(http: httpx.Client, token: str) -> str:
    form = http.get("/ui/login")
    login_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert login_csrf is not None
    answer = http.post("/ui/login", data={"csrf": login_csrf.group(1), "token": token, "next": "/ui/jobs"})
    assert answer.status_code == 303, answer.text
    page = http.get("/ui/jobs")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf is not None
    return csrf.group(1)


@pytest.fixture
def viewer(dash_cluster: Cluster, tokens: Tokens) -> Iterator[tuple[httpx.Client, str]]:
    with _session(dash_cluster, tokens.viewer_a) as logged_in:
        yield logged_in


def test_the_walk_covers_every_kind_of_dashboard_route() -> None:
    paths = {path for _, path in DASHBOARD_ROUTES}
    expected = {
        "/ui/jobs",
        "/ui/jobs/{job_id}",
        "/ui/jobs/{job_id}/logs/events",
        "/ui/sweeps/{sweep_id}/plot.png",
        "/ui/nodes",
        "/ui/jobs/{job_id}/cancel",
        "/ui/nodes/{node_id}/drain",
        "/ui/pools/{name}/scale",
    }
    assert expected <= paths


@pytest.mark.parametrize(("method", "template"), [r for r in DASHBOARD_ROUTES if r not in PUBLIC])
def test_no_dashboard_route_answers_without_a_session(
    dash_cluster: Cluster, objects: dict[str, str], method: str, template: str
) -> None:
    with httpx.Client(base_url=dash_cluster.api_url, timeout=30, follow_redirects=False) as http:
        answer = http.request(method, _path(template, objects), cookies={"trainyard_session": "forged"})
    if method == "GET" and not template.endswith("/logs/events"):
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=")
    else:
        assert answer.status_code == 401
    assert "dash-auth" not in answer.text


@pytest.mark.parametrize(("method", "template"), [r for r in DASHBOARD_ROUTES if r[0] == "POST" and r not in PUBLIC])
def test_a_viewer_may_not_act_and_nobody_acts_without_the_csrf_token(
    viewer: tuple[httpx.Client, str],
    dash_cluster: Cluster,
    tokens: Tokens,
    objects: dict[str, str],
    method: str,
    template: str,
) -> None:
    http, csrf = viewer
    assert http.post(_path(template, objects), data={"csrf": csrf}).status_code == 403
    with _session(dash_cluster, tokens.admin) as (user, _user_csrf):
        for forged in ({}, {"csrf": csrf}, {"csrf": "x" * 43}):  # none, another session's, made up
            answer = user.post(_path(template, objects), data=forged)
            assert answer.status_code == 403, forged
            assert "CSRF" in answer.text


def test_another_workspaces_objects_are_not_found(
    dash_cluster: Cluster, tokens: Tokens, objects: dict[str, str]
) -> None:
    with _session(dash_cluster, tokens.user_b) as (http, csrf):
        for template in ("/ui/jobs/{job_id}", "/ui/jobs/{job_id}/status", "/ui/jobs/{job_id}/logs/events",
                         "/ui/jobs/{job_id}/outputs/{key}", "/ui/sweeps/{sweep_id}",
                         "/ui/sweeps/{sweep_id}/plot.png?metric=loss"):  # fmt: skip
            assert http.get(_path(template, objects)).status_code == 404, template
        for template in ("/ui/jobs/{job_id}/cancel", "/ui/sweeps/{sweep_id}/cancel"):
            assert http.post(_path(template, objects), data={"csrf": csrf}).status_code == 404, template
        listed = http.get("/ui/jobs", params={"workspace": WS_A})
        assert listed.status_code == 200 and objects["job_id"] not in listed.text


def test_a_deleted_token_ends_its_sessions(dash_cluster: Cluster, tokens: Tokens) -> None:
    with api(dash_cluster, tokens.admin) as admin:
        created: dict[str, Any] = admin.post("/v1/tokens", json={"role": "viewer", "workspace": WS_A}).json()
        with _session(dash_cluster, created["token"]) as (http, _csrf):
            assert http.get("/ui/jobs").status_code == 200
            assert admin.delete(f"/v1/tokens/{created['id']}").status_code == 200
            assert http.get("/ui/jobs").status_code == 303


def test_login_refuses_a_form_without_its_own_csrf_cookie(dash_cluster: Cluster, tokens: Tokens) -> None:
    with httpx.Client(base_url=dash_cluster.api_url, timeout=30, follow_redirects=False) as http:
        answer = http.post("/ui/login", data={"csrf": "x" * 43, "token": tokens.admin})
    assert answer.status_code == 403 and "trainyard_session" not in answer.headers.get("set-cookie", "")


def test_pages_are_not_cached_framed_or_scripted_from_elsewhere(dash_cluster: Cluster, tokens: Tokens) -> None:
    with _session(dash_cluster, tokens.viewer_a) as (http, _csrf):
        headers = http.get("/ui/jobs").headers
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in headers["content-security-policy"]
