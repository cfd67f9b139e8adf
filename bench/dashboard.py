"""The dashboard's jobs page with a million jobs stored: server time of a page of 100, and a browser's load.

A private cluster's SQLite database is filled with 1,000,000 jobs (bulk rows through
trainyard/db/bulk.py, 1,000 experiments, two workspaces, mostly ended). Then, logged in through
the login form like a browser: the server time of `GET /ui/jobs` (100 jobs, newest first), filtered
by state, by an old experiment, and a page deep behind a cursor, beside `GET /v1/jobs?limit=100` (the
JSON the page is rendered from) as the baseline; and the load time of the same page in headless
Chromium (navigation start → load event, Playwright with Debian's chromium). Goal: under 1 s.

    .venv/bin/python bench/dashboard.py [--jobs 1000000] [--samples 20]
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from harness import emit, note, percentile, private_cluster

from trainyard.config import load_settings
from trainyard.db.bulk import insert_shared, reserve_seq
from trainyard.db.engine import make_engine, make_sessionmaker
from trainyard.db.jobs import NewJob, _row
from trainyard.db.models import Job, utcnow
from trainyard.spec import parse_job_spec

CHUNK_ROWS = 50_000
EXPERIMENTS = 1000
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
GOAL = "< 1000 ms"


def fill(database_url: str, total: int) -> tuple[int, float]:
    """Insert `total` jobs; returns the seq of the middle job (a cursor deep in the list) and seconds taken."""
    template = _row(NewJob(spec=parse_job_spec({"name": "bench", "command": "true"})), "x", 0, utcnow())
    varying = ("id", "name", "workspace", "experiment", "state", "seq")
    shared = {k: v for k, v in template.items() if k not in varying}
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    started = time.perf_counter()
    middle = 0
    try:
        for start in range(0, total, CHUNK_ROWS):
            count = min(CHUNK_ROWS, total - start)
            base = reserve_seq(count)
            rows = []
            for offset in range(count):
                index = start + offset
                state = "queued" if index % 50 == 0 else ("failed" if index % 13 == 0 else "succeeded")
                workspace = "team-b" if index % 10 == 0 else "default"
                experiment = f"exp-{index // (total // EXPERIMENTS):04d}"
                rows.append((f"b{index:011x}", f"bench-{index}", workspace, experiment, state, base + offset))
            if start <= total // 2 < start + count:
                middle = base + (total // 2 - start)
            with sessions.begin() as session:
                insert_shared(session, Job.__table__, varying, rows, shared)  # type: ignore[arg-type]
            note(f"{start + count:,} jobs stored")
    finally:
        engine.dispose()
    return middle, time.perf_counter() - started


def log_in(http: httpx.Client, token: str) -> None:
    form = http.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = http.post("/ui/login", data={"csrf": csrf.group(1), "token": token, "next": "/ui/jobs"})
    assert answer.status_code == 303, answer.text


def timed_ms(call: Callable[[], Any], samples: int) -> list[float]:
    call()  # warm: the first request compiles templates and fills caches
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def server_figures(api_url: str, token: str, middle: int, samples: int, stored: str) -> None:
    views = {"newest": {}, "state=queued": {"state": "queued"}, "old experiment": {"experiment": "exp-0003"},
             "deep cursor": {"cursor": str(middle)}}  # fmt: skip
    with (
        httpx.Client(base_url=api_url, timeout=60) as page,
        httpx.Client(base_url=api_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as rest,
    ):
        log_in(page, token)
        for view, params in views.items():

            def get_page(params: dict[str, str] = params) -> None:
                answer = page.get("/ui/jobs", params=params)
                assert answer.status_code == 200 and answer.text.count("<tr data-job-id=") == 100, answer.status_code

            def get_json(params: dict[str, str] = params) -> None:
                assert len(rest.get("/v1/jobs", params={**params, "limit": "100"}).json()["jobs"]) == 100

            dashboard, api = timed_ms(get_page, samples), timed_ms(get_json, samples)
            for pct in (50, 99):
                name = f"dashboard jobs page, 100 of {stored} jobs, {view}: server p{pct}"
                emit(name, percentile(dashboard, pct), "ms", GOAL, baseline=percentile(api, pct),
                     baseline_is=f"GET /v1/jobs?limit=100 p{pct}")  # fmt: skip


def browser_figures(api_url: str, token: str, samples: int, stored: str) -> None:
    if not Path(CHROMIUM).exists():
        note("no chromium: browser load not measured (scripts/install-chromium.sh)")
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(api_url + "/ui/login")
            page.fill("#token", token)
            page.click("#login")
            page.wait_for_url("**/ui/jobs")
            loads = []
            for _ in range(samples):
                page.goto(api_url + "/ui/jobs", wait_until="load")
                timing = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
                assert page.locator("#jobs-table tbody tr[data-job-id]").count() == 100
                loads.append(float(timing["loadEventEnd"] - timing["startTime"]))
        finally:
            browser.close()
    for pct in (50, 99):
        emit(f"dashboard jobs page, 100 of {stored} jobs: browser load p{pct}", percentile(loads, pct), "ms", GOAL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="100,000 jobs, 5 samples")
    args = parser.parse_args(argv)
    total, samples = (100_000, 5) if args.quick else (args.jobs, args.samples)
    with private_cluster(workers=0, slots=1) as cluster:
        settings = load_settings({"TRAINYARD_HOME": str(cluster.home)}, home_files=False)
        middle, fill_s = fill(settings.database_url.get_secret_value(), total)
        note(f"{total:,} jobs stored in {fill_s:.1f} s")
        stored = f"{total:,}"
        server_figures(cluster.api_url, cluster.admin_token, middle, samples, stored)
        browser_figures(cluster.api_url, cluster.admin_token, samples, stored)


if __name__ == "__main__":
    main()
