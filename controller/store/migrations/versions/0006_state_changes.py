"""State changes: every change of a cluster's availability (online, offline), kept so
that a report can say how long each cluster was offline in any range
(controller/report.py). A new table; nothing else changes. Existing databases start
with no history: their clusters' offline time is counted from the first change stored
after the upgrade.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "state_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_state_changes_cluster_at", "state_changes", ["cluster", "at"])


def downgrade() -> None:
    op.drop_table("state_changes")
