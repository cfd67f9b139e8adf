"""The dashboard in a real browser (headless Chromium through Playwright) against a real cluster.

Log in by pasting a token, watch a running job's log lines arrive, cancel a job and see it end,
see a sweep's leaderboard and plot, and be refused (403) as a viewer; another workspace's job is
a 404; without a session every page leads to the login form.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.integration.dashboard.conftest import WS_A, Tokens, api, docs_screenshot, login
from trainyard.up import Cluster

pytestmark = pytest.mark.integration

PY = shlex.quote(sys.executable)


def submit(cluster: Cluster, token: str, spec: dict[str, Any]) -> str:
    with api(cluster, token) as http:
        response = http.post("/v1/jobs", json={"workspace": WS_A, **spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_state(cluster: Cluster, token: str, job_id: str) -> str:
    with api(cluster, token) as http:
        return str(http.get(f"/v1/jobs/{job_id}").json()["state"])


def wait_for_state(cluster: Cluster, token: str, job_id: str, states: set[str], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := job_state(cluster, token, job_id)) not in states:
        assert time.monotonic() < deadline, f"job {job_id} is still {state}"
        time.sleep(0.2)
    return state


def _drawn_width(page: Any, selector: str, timeout_s: float = 30) -> int:
    """The natural width of an image once the browser has loaded and decoded it (0 never counts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        width = int(page.locator(selector).evaluate("img => (img.complete ? img.naturalWidth : 0)"))
        if width > 0 or time.monotonic() > deadline:
            return width
        time.sleep(0.2)


def test_every_page_without_a_session_leads_to_the_login_form(page: Any, dash_cluster: Cluster) -> None:
    for path in ("/", "/ui/jobs", "/ui/jobs/j000000000000", "/ui/sweeps", "/ui/nodes"):
        page.goto(dash_cluster.api_url + path)
        assert "/ui/login" in page.url, path
        assert page.locator("#token").is_visible()
    assert page.context.cookies() == [] or all(c["name"] != "trainyard_session" for c in page.context.cookies())


def test_logging_in_keeps_the_session_in_an_httponly_strict_cookie_and_the_token_out_of_urls(
    page: Any, dash_cluster: Cluster, tokens: Tokens
) -> None:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(dash_cluster.api_url + "/ui/login")
    page.fill("#token", "ty_not-a-token")
    page.click("#login")
    assert "not valid" in page.inner_text(".problem")
    login(page, dash_cluster, tokens.user_a, "/ui/nodes")
    assert WS_A in page.inner_text("#whoami")
    (session,) = [c for c in page.context.cookies() if c["name"] == "trainyard_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert "trainyard_session" not in page.evaluate("document.cookie")  # scripts cannot read it
    assert tokens.user_a not in session["value"]
    assert urls and not [url for url in urls if tokens.user_a in url]
    page.click("text=Log out")
    page.wait_for_url("**/ui/login")
    page.goto(dash_cluster.api_url + "/ui/jobs")
    assert "/ui/login" in page.url


def test_a_running_job_shows_its_log_lines_as_they_are_printed(
    page: Any, dash_cluster: Cluster, tokens: Tokens
) -> None:
    command = "for i in $(seq 1 40); do echo line-$i; echo err-$i >&2; sleep 0.25; done"
    job_id = submit(dash_cluster, tokens.user_a, {"name": "dash-live-log", "command": command})
    login(page, dash_cluster, tokens.user_a, f"/ui/jobs/{job_id}")
    expect(page.locator("#log-0-stdout")).to_contain_text("line-3\n")
    # Seen while the job still runs: the lines arrived live, not at the end.
    assert "line-40" not in page.inner_text("#log-0-stdout")
    assert job_state(dash_cluster, tokens.user_a, job_id) == "running"
    expect(page.locator("#log-0-stderr")).to_contain_text("err-5")
    docs_screenshot(page, "job")
    expect(page.locator("#log-0-stdout")).to_have_attribute("data-ended", "1", timeout=60_000)
    text = page.inner_text("#log-0-stdout")
    assert text.split() == [f"line-{i}" for i in range(1, 41)]  # every line once, in order
    page.wait_for_selector("#job-status .state-succeeded", timeout=30_000)
    assert page.inner_text("#log-state-0-stdout") == "complete"
    assert "exit" in page.inner_text("#attempts")


def test_cancelling_a_job_from_its_page_ends_it(page: Any, dash_cluster: Cluster, tokens: Tokens) -> None:
    job_id = submit(dash_cluster, tokens.user_a, {"name": "dash-cancel-me", "command": "echo started; sleep 300"})
    login(page, dash_cluster, tokens.user_a, f"/ui/jobs/{job_id}")
    page.wait_for_selector("#job-status .state-running", timeout=30_000)
    expect(page.locator("#log-0-stdout")).to_contain_text("started")
    page.click("#cancel")
    page.wait_for_selector("#job-status .state-cancelled", timeout=30_000)
    assert job_state(dash_cluster, tokens.user_a, job_id) == "cancelled"
    assert "cancelled" in page.inner_text("#attempts")
    expect(page.locator("#log-0-stdout")).to_have_attribute("data-ended", "1", timeout=30_000)
    assert page.locator("#cancel").count() == 0
    page.click("#rerun")  # a finished job's page offers a rerun: the new job's page names this one
    page.wait_for_url(lambda url: f"/ui/jobs/{job_id}" not in url, timeout=30_000)
    assert f"rerun of {job_id}" in page.inner_text("p.meta")
    rerun_id = page.url.rstrip("/").rsplit("/", 1)[1]
    with api(dash_cluster, tokens.user_a) as http:
        rerun = http.get(f"/v1/jobs/{rerun_id}").json()
        assert rerun["rerun_of"] == job_id and rerun["name"] == "dash-cancel-me"
        http.post(f"/v1/jobs/{rerun_id}:cancel")


def test_a_viewer_sees_a_job_but_its_actions_are_refused(page: Any, dash_cluster: Cluster, tokens: Tokens) -> None:
    job_id = submit(dash_cluster, tokens.user_a, {"name": "dash-viewer-sees", "command": "sleep 300"})
    try:
        login(page, dash_cluster, tokens.viewer_a, f"/ui/jobs/{job_id}")
        assert "dash-viewer-sees" in page.inner_text("h1")
        with page.expect_response(lambda r: r.url.endswith(f"/ui/jobs/{job_id}/cancel")) as answer:
            page.click("#cancel")
        assert answer.value.status == 403
        assert "needs user" in page.inner_text("#error-detail")
        assert job_state(dash_cluster, tokens.admin, job_id) in ("queued", "scheduled", "running")
        page.goto(dash_cluster.api_url + "/ui/nodes")
        with page.expect_response(lambda r: r.url.endswith("/drain")) as answer:
            page.locator("button.drain").first.click()
        assert answer.value.status == 403
        with api(dash_cluster, tokens.admin) as http:
            assert {n["state"] for n in http.get("/v1/nodes").json()["nodes"]} == {"up"}
    finally:
        with api(dash_cluster, tokens.admin) as http:
            http.post(f"/v1/jobs/{job_id}:cancel")


def test_another_workspaces_job_is_not_found(page: Any, dash_cluster: Cluster, tokens: Tokens) -> None:
    job_id = submit(dash_cluster, tokens.user_a, {"name": "dash-hidden-from-b", "command": "true"})
    login(page, dash_cluster, tokens.user_b)
    assert "dash-hidden-from-b" not in page.inner_text("#jobs-table")
    response = page.goto(f"{dash_cluster.api_url}/ui/jobs/{job_id}")
    assert response is not None and response.status == 404
    response = page.goto(f"{dash_cluster.api_url}/ui/jobs?workspace={WS_A}")
    assert response is not None and "dash-hidden-from-b" not in page.inner_text("#jobs-table")


def test_the_jobs_list_filters_by_experiment_and_state_and_pages_by_cursor(
    page: Any, dash_cluster: Cluster, tokens: Tokens
) -> None:
    specs = [{"name": f"dash-page-{i}", "command": "true", "experiment": "dash-paging"} for i in range(105)]
    with api(dash_cluster, tokens.user_a) as http:
        assert http.post("/v1/jobs:batch", json={"jobs": specs}).status_code == 201
    login(page, dash_cluster, tokens.user_a)
    page.fill("input[name=experiment]", "dash-paging")
    page.click("text=Filter")
    page.wait_for_url("**experiment=dash-paging**")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(100)
    first = page.locator("#jobs-table tbody tr td:nth-child(2)").all_inner_texts()
    assert first[0] == "dash-page-104" and first[-1] == "dash-page-5"
    page.click("#older")
    page.wait_for_url("**cursor=**")
    rest = page.locator("#jobs-table tbody tr td:nth-child(2)").all_inner_texts()
    assert rest == [f"dash-page-{i}" for i in range(4, -1, -1)]
    assert page.locator("#older").count() == 0
    deadline = time.monotonic() + 60
    page.goto(f"{dash_cluster.api_url}/ui/jobs?experiment=dash-paging&state=succeeded")
    while page.locator("#jobs-table tbody tr[data-job-id]").count() < 100:
        assert time.monotonic() < deadline, "the paging jobs did not all succeed"
        time.sleep(1)
        page.reload()
    states = page.locator("#jobs-table tbody tr .state").all_inner_texts()
    assert set(states) == {"succeeded"}
    docs_screenshot(page, "jobs")


def test_a_sweep_page_shows_progress_a_leaderboard_and_a_plot(page: Any, dash_cluster: Cluster, tokens: Tokens) -> None:
    report = f"{PY} -c 'import trainyard; trainyard.report(step=10 * {{bs}}, loss={{lr}} * {{bs}})'"
    body = {
        "template": {"name": "dash-sweep-lr{lr}-bs{bs}", "command": report, "workspace": WS_A},
        "grid": {"lr": [0.1, 0.01, 0.001], "bs": [1, 2]},
    }
    with api(dash_cluster, tokens.user_a) as http:
        response = http.post("/v1/sweeps", json=body)
        assert response.status_code == 201, response.text
        sweep_id = response.json()["id"]
        deadline = time.monotonic() + 90
        while http.get(f"/v1/sweeps/{sweep_id}").json()["state"] != "finished":
            assert time.monotonic() < deadline, "the sweep did not finish"
            time.sleep(0.5)
    login(page, dash_cluster, tokens.user_a, "/ui/sweeps")
    page.click(f"text={sweep_id}")
    page.wait_for_selector("#leaderboard")
    names = page.locator("#leaderboard tbody tr td:nth-child(2)").all_inner_texts()
    assert names[0] == "dash-sweep-lr0.001-bs1" and len(names) == 6
    width = _drawn_width(page, "#sweep-plot")
    assert width >= 3 * 300  # three panels: lr, bs and step
    assert page.get_attribute("#sweep-progress-bar", "value") == "1.0"
    docs_screenshot(page, "sweep")


def test_nodes_and_pools_show_usage_and_an_admin_drains_and_scales(
    page: Any, dash_cluster: Cluster, tokens: Tokens
) -> None:
    dash_cluster.add_worker("dash-extra", "127.0.0.9", pool="dash-extra", slots=2)
    login(page, dash_cluster, tokens.admin, "/ui/nodes")
    page.wait_for_selector("#nodes tr[data-node-id='dash-extra']", timeout=30_000)
    row = page.inner_text("#nodes tr[data-node-id='node-1']")
    assert "up" in row and "/ 4" in row and "ago" in row
    page.locator("#nodes tr[data-node-id='dash-extra'] button.drain").click()
    page.wait_for_url("**/ui/nodes")
    assert "draining" in page.inner_text("#nodes tr[data-node-id='dash-extra']")
    form = page.locator("#pools tr[data-pool='dash-extra'] form")
    form.locator("input[name=min_nodes]").fill("0")
    form.locator("input[name=max_nodes]").fill("0")
    form.locator("input[name=target]").fill("0")
    form.locator("input[name=autoscale]").uncheck()
    form.locator("button").click()
    page.wait_for_url("**/ui/nodes")
    assert "0 to 0, target 0" in page.inner_text("#pools tr[data-pool='dash-extra']")
    with api(dash_cluster, tokens.admin) as http:
        pools = {p["name"]: p for p in http.get("/v1/pools").json()["pools"]}
    assert pools["dash-extra"]["max_nodes"] == 0 and pools["dash-extra"]["settings"]["target"] == 0
    docs_screenshot(page, "nodes")
