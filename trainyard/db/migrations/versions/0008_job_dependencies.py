"""job dependencies: `depends_on` edges, per-job counts the queue and the dependency gate read

Revision ID: 0008_job_dependencies
Revises: 0007_job_reruns
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_job_dependencies"
down_revision = "0007_job_reruns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_dependencies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("target_kind", sa.String(8), nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("on", sa.String(16), nullable=False),
        sa.Column("status", sa.String(8), nullable=False, server_default="waiting"),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_job_dependencies_job_id", "job_dependencies", ["job_id"])
    op.create_index("ix_job_dependencies_target", "job_dependencies", ["target_id", "status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("waiting_on", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("dependants_waiting", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("end_reason", sa.String(32), nullable=True))
    op.create_index("ix_jobs_ready", "jobs", ["state", "waiting_on", "priority", "seq"])
    op.create_index("ix_jobs_dependants", "jobs", ["state", "dependants_waiting"])
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("dependants_waiting", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_sweeps_dependants", "sweeps", ["dependants_waiting"])


def downgrade() -> None:
    op.drop_index("ix_sweeps_dependants", table_name="sweeps")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("dependants_waiting")
    op.drop_index("ix_jobs_dependants", table_name="jobs")
    op.drop_index("ix_jobs_ready", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("end_reason")
        batch.drop_column("dependants_waiting")
        batch.drop_column("waiting_on")
    op.drop_index("ix_job_dependencies_target", table_name="job_dependencies")
    op.drop_index("ix_job_dependencies_job_id", table_name="job_dependencies")
    op.drop_table("job_dependencies")
