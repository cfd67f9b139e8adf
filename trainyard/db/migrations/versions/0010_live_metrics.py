"""live metrics and early stopping: every point a job's rank 0 reports while it runs, how far each
attempt's series reaches, and a sweep's early stopping rule

Revision ID: 0010_live_metrics
Revises: 0009_retry_rules
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_live_metrics"
down_revision = "0009_retry_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("sweep_id", sa.String(32), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
    )
    op.create_index("ix_metric_points_job", "metric_points", ["job_id", "attempt", "id"])
    op.create_index("ix_metric_points_sweep", "metric_points", ["sweep_id", "job_id", "attempt"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("metrics_points", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("metrics_offset", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("early_stopping", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("early_stopping")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("metrics_offset")
        batch.drop_column("metrics_points")
    op.drop_index("ix_metric_points_sweep", table_name="metric_points")
    op.drop_index("ix_metric_points_job", table_name="metric_points")
    op.drop_table("metric_points")
