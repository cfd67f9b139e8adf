"""A cluster for the dashboard tests, tokens of three kinds, and a headless Chromium driven by Playwright.

Playwright (PyPI) drives Debian's chromium through `executable_path`: it never downloads a browser.
A failed test leaves a screenshot of its page under tests-artifacts/dashboard/ (or
$TRAINYARD_TEST_ARTIFACTS); with TRAINYARD_DASHBOARD_SCREENSHOTS=docs the tests also save the
README's screenshots of each main page there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clusters import own_cluster
from tests.services import unavailable
from trainyard.up import Cluster

CHROMIUM = "/usr/bin/chromium"
# Headless as root on a machine without network (TESTBED.md); Playwright adds --headless itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[3]
WS_A = "dash-a"
WS_B = "dash-b"
REDIS_DB = 7
VIEWPORT = {"width": 1440, "height": 900}


@dataclass
class Tokens:
    admin: str
    user_a: str
    viewer_a: str
    user_b: str


def artifacts_dir() -> Path:
    return Path(os.environ.get("TRAINYARD_TEST_ARTIFACTS") or REPO / "tests-artifacts") / "dashboard"


def api(cluster: Cluster, token: str) -> httpx.Client:
    return httpx.Client(base_url=cluster.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _token(cluster: Cluster, role: str, workspace: str) -> str:
    with api(cluster, cluster.admin_token) as http:
        response = http.post("/v1/tokens", json={"role": role, "workspace": workspace, "name": f"dash-{role}"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@pytest.fixture(scope="package")
def dash_cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Cluster]:
    with own_cluster(
        tmp_path_factory.mktemp("dashboard-cluster"), redis_server, REDIS_DB, workers=2, slots=4
    ) as started:
        yield started


@pytest.fixture(scope="package")
def tokens(dash_cluster: Cluster) -> Tokens:
    return Tokens(
        admin=dash_cluster.admin_token,
        user_a=_token(dash_cluster, "user", WS_A),
        viewer_a=_token(dash_cluster, "viewer", WS_A),
        user_b=_token(dash_cluster, "user", WS_B),
    )


@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        unavailable("chromium is not installed (scripts/install-chromium.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (requirements.lock)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; a screenshot of it is kept when the test fails."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        if request.node.stash.get(_FAILED, False):
            target = artifacts_dir() / f"{request.node.name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            opened.screenshot(path=str(target), full_page=True)
            print(f"screenshot of the failed test's page: {target}")
        context.close()


def docs_screenshot(page: Any, name: str) -> None:
    """Save the README's screenshot of a main page when TRAINYARD_DASHBOARD_SCREENSHOTS names a folder."""
    folder = os.environ.get("TRAINYARD_DASHBOARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=False)


def login(page: Any, cluster: Cluster, token: str, path: str = "/ui/jobs") -> None:
    page.goto(cluster.api_url + path)
    page.wait_for_url("**/ui/login**")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"**{path}")
