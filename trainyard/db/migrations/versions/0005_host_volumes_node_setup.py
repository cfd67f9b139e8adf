"""host volumes and node setup: jobs' host paths, nodes' declared host volumes, setup state

Revision ID: 0005_host_volumes_node_setup
Revises: 0004_scheduler_lease, 0004_volumes (joins the two heads)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_host_volumes_node_setup"
down_revision = ("0004_scheduler_lease", "0004_volumes")
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("host_paths", sa.JSON(), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("host_volumes", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("state_detail", sa.String(500), nullable=True))
        batch.add_column(sa.Column("setup_log", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("setup_log")
        batch.drop_column("state_detail")
        batch.drop_column("host_volumes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("host_paths")
