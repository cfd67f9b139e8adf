"""Alembic environment: runs trainyard's migrations against the configured URL."""

from __future__ import annotations

from alembic import context

from trainyard.db.engine import make_engine
from trainyard.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            if connection.dialect.name == "postgresql":
                # Several services may start at once; the advisory lock makes them migrate in turn.
                connection.exec_driver_sql("SELECT pg_advisory_lock(864200)")
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()  # a failed migration must not leave its pooled connection behind either


run_migrations_online()
