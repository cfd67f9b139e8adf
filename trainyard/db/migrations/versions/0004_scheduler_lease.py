"""scheduler lease: the leader's epoch and lease, kept in the database so every scheduler write is fenced

Revision ID: 0004_scheduler_lease
Revises: 0003_list_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_scheduler_lease"
down_revision = "0003_list_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False, server_default=""),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("renewed_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("scheduler_lease")
