"""dashboard sessions: the web dashboard's logins (session id and CSRF token per browser)

Revision ID: 0006_dashboard_sessions
Revises: 0005_host_volumes_node_setup
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_dashboard_sessions"
down_revision = "0005_host_volumes_node_setup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_dashboard_sessions_token_hash", "dashboard_sessions", ["token_hash"])
    op.create_index("ix_dashboard_sessions_expires_at", "dashboard_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_sessions_expires_at", table_name="dashboard_sessions")
    op.drop_index("ix_dashboard_sessions_token_hash", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
