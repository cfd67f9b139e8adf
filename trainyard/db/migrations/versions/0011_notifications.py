"""notifications: `notify:` targets on jobs and sweeps, the webhook outbox, per-workspace settings

Revision ID: 0011_notifications
Revises: 0010_live_metrics
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_notifications"
down_revision = "0010_live_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notify", sa.JSON(), nullable=True))
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("notify", sa.JSON(), nullable=True))
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("subject_kind", sa.String(8), nullable=False),
        sa.Column("subject_id", sa.String(32), nullable=False),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_notifications_subject_id", "notifications", ["subject_id"])
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_at"])
    op.create_table(
        "workspace_settings",
        sa.Column("workspace", sa.String(64), primary_key=True),
        sa.Column("notify", sa.JSON(), nullable=True),
        sa.Column("signing_key_enc", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workspace_settings")
    op.drop_index("ix_notifications_due", table_name="notifications")
    op.drop_index("ix_notifications_subject_id", table_name="notifications")
    op.drop_table("notifications")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("notify")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notify")
