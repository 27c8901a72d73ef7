"""Live sessions: an event's seconds (of silence for a gap, of audio aired at the end of
a live session), so that reports count live minutes per cluster. One nullable column;
every existing event keeps its row, without seconds.

Revision ID: 0005
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as events:
        events.add_column(sa.Column("seconds", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("events") as events:
        events.drop_column("seconds")
