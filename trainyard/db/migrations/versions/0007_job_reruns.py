"""job reruns: a job made by `rerun` names the job it reruns

Revision ID: 0007_job_reruns
Revises: 0006_dashboard_sessions
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_job_reruns"
down_revision = "0006_dashboard_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rerun_of", sa.String(32), nullable=True))
    op.create_index("ix_jobs_rerun_of", "jobs", ["rerun_of"])


def downgrade() -> None:
    op.drop_index("ix_jobs_rerun_of", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rerun_of")
