"""volumes: named volumes per workspace (`trainyard volume create`, /v1/volumes)

Revision ID: 0004_volumes
Revises: 0003_list_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_volumes"
down_revision = "0003_list_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("workspace", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("volumes")
