"""retry rules and sweep reruns: a job's `retry:` rules and per-rule counts, the rule that retried
each attempt; a sweep point's rerun inside its sweep, and the sweep's count of points rerun

Revision ID: 0009_retry_rules
Revises: 0008_job_dependencies
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_retry_rules"
down_revision = "0008_job_dependencies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry_rules", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("retries_by_rule", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("superseded_by", sa.String(32), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("retried_by", sa.String(16), nullable=True))
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("superseded", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("superseded")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("retried_by")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("superseded_by")
        batch.drop_column("retries_by_rule")
        batch.drop_column("retry_rules")
