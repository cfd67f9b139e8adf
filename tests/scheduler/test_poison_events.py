"""An event the database refuses is parked; the events around it are applied (real PostgreSQL and Redis).

PostgreSQL enforces column lengths and refuses NUL in text, which SQLite does not: a node that
registers with a pool name longer than the column is refused, and before this the whole batch
(and every later turn, as the batch was never acknowledged) failed with it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.services import private_postgres_database, private_redis
from trainyard import transport
from trainyard.config import load_settings
from trainyard.db.engine import make_sessionmaker, upgrade
from trainyard.db.models import Node
from trainyard.scheduler.events import PARKED_STREAM
from trainyard.scheduler.loop import Scheduler


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    with private_postgres_database() as database_url, private_redis(tmp_path / "redis") as (redis_url, _port):
        upgrade(database_url)
        settings = load_settings(
            {"TRAINYARD_DATABASE_URL": database_url, "TRAINYARD_REDIS_URL": redis_url}, home_files=False
        )
        started = Scheduler(settings)
        try:
            yield started
        finally:
            started.redis.close()
            started.engine.dispose()


def _register(client: object, node_id: str, pool: str, address: str = "127.0.0.2") -> None:
    event = {"kind": "node_register", "node": node_id, "session": "s1", "pool": pool, "address": address, "slots": 1}
    transport.publish_event(client, event)  # type: ignore[arg-type]


def _nodes(scheduler: Scheduler) -> dict[str, Node]:
    with make_sessionmaker(scheduler.engine)() as session:
        return {node.id: node for node in session.scalars(select(Node))}


def test_a_refused_event_is_parked_and_the_batch_around_it_is_applied(scheduler: Scheduler) -> None:
    client = scheduler.redis
    _register(client, "n-before", "default")
    _register(client, "n-refused", "p" * 100)  # pools are String(64)
    _register(client, "n-nul", "default", address="127.0.0.3\x00junk")  # NUL: PostgreSQL stores none in text
    _register(client, "n-after", "default")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not {"n-before", "n-nul", "n-after"} <= set(_nodes(scheduler)):
        scheduler.run_once()
    nodes = _nodes(scheduler)
    assert {"n-before", "n-nul", "n-after"} <= set(nodes) and "n-refused" not in nodes, sorted(nodes)
    assert nodes["n-nul"].address == "127.0.0.3\ufffdjunk"
    assert scheduler.events.parked == 1
    parked = client.xrange(PARKED_STREAM)
    assert len(parked) == 1
    record = parked[0][1]
    assert json.loads(record[b"data"])["node"] == "n-refused" and b"too long" in record[b"error"]
    # Nothing is left pending (acknowledgements ride with the next read): no turn trips over it again.
    scheduler.run_once()
    pending = client.xpending(transport.EVENTS_STREAM, transport.EVENTS_GROUP)
    assert pending["pending"] == 0
    scheduler.run_once()
    assert scheduler.events.parked == 1
