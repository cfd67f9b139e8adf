"""Job pages on both databases: every filter set and cursor gives exactly the matching jobs, newest first."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from trainyard.db.jobs import NewJob, create_jobs
from trainyard.db.models import Job
from trainyard.db.pages import index_columns, job_page
from trainyard.spec import parse_job_spec

STATES = ("queued", "running", "succeeded")


@pytest.mark.parametrize("page_size", [7])
def test_every_filter_set_pages_through_exactly_its_jobs_newest_first(
    sessions: sessionmaker[Session], page_size: int
) -> None:
    specs = [
        NewJob(
            parse_job_spec(
                {"name": f"n{i % 3}-{i}", "command": "true", "workspace": f"w{i % 2}", "experiment": f"e{i % 3}"}
            ),
            sweep_id=f"s{i % 4}",
        )
        for i in range(120)
    ]
    with sessions.begin() as session:
        ids = create_jobs(session, specs)
        for index, job_id in enumerate(ids):
            session.execute(update(Job).where(Job.id == job_id).values(state=STATES[index % 3]))
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.seq, Job.workspace, Job.experiment, Job.state, Job.sweep_id, Job.name)
        ).all()
    everyone = sorted(rows, key=lambda r: -r.seq)
    values: dict[str, list[Any]] = {"workspace": ["w1"], "experiment": ["e2"], "state": ["running"], "sweep_id": ["s3"]}
    for size in range(0, 4):
        for names in itertools.combinations(values, size):
            equals = {name: values[name][0] for name in names}
            for prefix in (None, "n1-"):
                expected = [
                    r.id
                    for r in everyone
                    if all(getattr(r, k) == v for k, v in equals.items())
                    and (prefix is None or r.name.startswith(prefix))
                ]
                assert _all_pages(sessions, equals, prefix, page_size) == expected, (equals, prefix)


def _all_pages(sessions: Any, equals: dict[str, Any], prefix: str | None, size: int) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        conditions = [Job.seq < cursor] if cursor is not None else []
        if prefix:
            conditions.append(Job.name.startswith(prefix, autoescape=True))
        with sessions() as session:
            page = job_page(session, equals, conditions, size)
        found += [job.id for job in page]
        if len(page) < size:
            return found
        cursor = page[-1].seq


def test_each_filter_set_is_served_by_an_index_of_its_own() -> None:
    assert index_columns({"sweep_id": "s", "state": "q", "workspace": "w"}) == ("sweep_id", "state")
    assert index_columns({"workspace": "w", "experiment": "e", "state": "q"}) == ("workspace", "experiment")
    assert index_columns({"workspace": "w", "state": "q"}) == ("workspace", "state")
    assert index_columns({"experiment": "e", "state": "q"}) == ("experiment",)
    assert index_columns({}) == ()
