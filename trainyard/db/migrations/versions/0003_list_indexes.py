"""list indexes: one (filter, seq) index per job-list filter, so pages stay short walks at a million jobs

Revision ID: 0003_list_indexes
Revises: 0002_sweeps
"""

from __future__ import annotations

from alembic import op

revision = "0003_list_indexes"
down_revision = "0002_sweeps"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_jobs_sweep_seq": ["sweep_id", "seq"],
    "ix_jobs_state_seq": ["state", "seq"],
    "ix_jobs_experiment_seq": ["experiment", "seq"],
    "ix_jobs_workspace_seq": ["workspace", "seq"],
    "ix_jobs_workspace_state_seq": ["workspace", "state", "seq"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns, unique=False)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")
