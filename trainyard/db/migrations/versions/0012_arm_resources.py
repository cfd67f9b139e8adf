"""arm resources: Batch AI workspaces, experiments, job names, and deleted jobs awaiting removal

Revision ID: 0012_arm_resources
Revises: 0011_notifications
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_arm_resources"
down_revision = "0011_notifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arm_workspaces",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("resource_group", sa.String(90), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_arm_workspaces_group", "arm_workspaces", ["subscription_id", "resource_group", "name"])
    op.create_table(
        "arm_experiments",
        sa.Column(
            "workspace", sa.String(64), sa.ForeignKey("arm_workspaces.name", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "arm_jobs",
        sa.Column("workspace", sa.String(64), primary_key=True),
        sa.Column("experiment", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("body_digest", sa.String(64), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace", "experiment"], ["arm_experiments.workspace", "arm_experiments.name"], ondelete="CASCADE"
        ),
    )
    op.create_table(
        "arm_job_purges",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("purge_after", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_arm_job_purges_purge_after", "arm_job_purges", ["purge_after"])


def downgrade() -> None:
    op.drop_index("ix_arm_job_purges_purge_after", table_name="arm_job_purges")
    op.drop_table("arm_job_purges")
    op.drop_table("arm_jobs")
    op.drop_table("arm_experiments")
    op.drop_index("ix_arm_workspaces_group", table_name="arm_workspaces")
    op.drop_table("arm_workspaces")
