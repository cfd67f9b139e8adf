"""A cluster of a test module's own: SQLite in its home, its own database number on the session's Redis."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from trainyard.up import Cluster, start_cluster


@contextmanager
def own_cluster(
    home: Path,
    redis_url: str,
    redis_db: int,
    *,
    workers: int,
    slots: int,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """`trainyard up` with `workers` nodes of `slots` slots, no admin token or secret key from the
    environment (the cluster makes its own), stopped on exit."""
    started = start_cluster(
        workers=workers,
        slots=slots,
        home=home,
        extra_env={
            "TRAINYARD_DATABASE_URL": f"sqlite:///{home / 'trainyard.db'}",
            "TRAINYARD_REDIS_URL": redis_url.rsplit("/", 1)[0] + f"/{redis_db}",
            "TRAINYARD_ADMIN_TOKEN": "",
            "TRAINYARD_SECRET_KEY": "",
            **(extra_env or {}),
        },
    )
    try:
        yield started
    finally:
        started.stop()
