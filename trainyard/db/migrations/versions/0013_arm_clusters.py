"""arm clusters and file servers: Batch AI cluster names → trainyard pools, file server names → volumes

Revision ID: 0013_arm_clusters
Revises: 0012_arm_resources
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_arm_clusters"
down_revision = "0012_arm_resources"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arm_clusters",
        sa.Column(
            "workspace", sa.String(64), sa.ForeignKey("arm_workspaces.name", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False, unique=True),
        sa.Column("vm_size", sa.String(64), nullable=False),
        sa.Column("vm_priority", sa.String(16), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("scaled_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "arm_file_servers",
        sa.Column(
            "workspace", sa.String(64), sa.ForeignKey("arm_workspaces.name", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("volume", sa.String(63), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("arm_file_servers")
    op.drop_table("arm_clusters")
