"""sweeps: the sweeps table, a job's params and reported metrics, indexes for sweep and list queries

Revision ID: 0002_sweeps
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sweeps"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("workspace", sa.String(length=64), nullable=False),
        sa.Column("experiment", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("secrets_enc", sa.Text(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sweeps_workspace", "sweeps", ["workspace", "seq"], unique=False)
    op.create_index("ix_sweeps_idempotency", "sweeps", ["workspace", "idempotency_key"], unique=True)
    # ADD COLUMN of a nullable column: no table rewrite on SQLite or PostgreSQL.
    op.add_column("jobs", sa.Column("params", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("metrics", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("metrics_step", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_sweep", "jobs", ["sweep_id", "state", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_sweep", table_name="jobs")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("metrics_step")
        batch_op.drop_column("metrics")
        batch_op.drop_column("params")
    op.drop_index("ix_sweeps_idempotency", table_name="sweeps")
    op.drop_index("ix_sweeps_workspace", table_name="sweeps")
    op.drop_table("sweeps")
