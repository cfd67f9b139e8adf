"""Fixtures of the scheduler tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.services import private_postgres_database
from trainyard.db.engine import make_engine, make_sessionmaker, upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A database of the test's own, on each backend: these tests take the scheduler lease, which a
    live cluster elsewhere in the session (on the shared test database) must not hold."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'scheduler.db'}"
        else:
            url = stack.enter_context(private_postgres_database())
        upgrade(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine)
        engine.dispose()
