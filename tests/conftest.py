"""Shared fixtures: one private Redis per test session; databases on SQLite and PostgreSQL."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import private_postgres_database, private_redis

# Leaks fail every suite (pyproject's filterwarnings). The cluster suites hold objects for long
# and free them late; these fixtures collect as their tests and modules end, so a leak fails the
# test that made it rather than a quick test the collector happens to run in later.
CLUSTER_SUITES = ("integration", "chaos", "netns")


@pytest.fixture(autouse=True, scope="module")
def _collect_module_leaks_where_made(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect garbage as a cluster module ends (after its module-wide clusters stop)."""
    yield
    if _in_cluster_suite(request.path):
        gc.collect()


@pytest.fixture(autouse=True)
def _collect_leaks_where_made(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if _in_cluster_suite(request.path):
        gc.collect()


def _in_cluster_suite(path: Path) -> bool:
    tests_dir = Path(__file__).parent
    parts = path.relative_to(tests_dir).parts if path.is_relative_to(tests_dir) else ()
    return bool(parts) and parts[0] in CLUSTER_SUITES


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private Redis for the whole session (tests use their own DB numbers/prefixes)."""
    with private_redis(tmp_path_factory.mktemp("redis")) as (url, _port):
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with private_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database on each backend."""
    from trainyard.db.engine import upgrade

    url = f"sqlite:///{tmp_path / 'test.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    upgrade(url)
    if request.param == "postgresql":  # one database per session: start each test from empty tables
        from sqlalchemy import text

        from trainyard.db.engine import make_engine
        from trainyard.db.models import Base

        engine = make_engine(url)
        with engine.begin() as conn:
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
        engine.dispose()
    return url
