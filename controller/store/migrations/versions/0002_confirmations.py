"""Confirmations: per play and cluster, whether the cluster confirmed the play
(controller/confirmations.py). A new table; nothing else changes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "confirmations",
        sa.Column("play_id", sa.String(128), primary_key=True),
        sa.Column("cluster", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sends", sa.Integer, nullable=False),
        sa.Column("last_sent", TZ),
        sa.Column("command_id", sa.String(64)),
        sa.Column("confirmed_at", TZ),
        sa.Column("refusal", sa.Text),
        sa.Column("missed_at", TZ),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_confirmations_cluster_state", "confirmations", ["cluster", "state"])
    op.create_index("ix_confirmations_state", "confirmations", ["state", "play_id"])
    op.create_index("ix_confirmations_command", "confirmations", ["command_id"])


def downgrade() -> None:
    op.drop_table("confirmations")
