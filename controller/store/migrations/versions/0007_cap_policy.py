"""CAP policy: what the policy decided for each alert taken in (controller/cap_policy.py):
its level, times spoken, repeat interval, expiry and next airing. Five nullable columns
on cap_alerts; rows taken before keep NULL (aired as before: emergency, once).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("cap_alerts") as batch:
        batch.add_column(sa.Column("level", sa.String(16)))
        batch.add_column(sa.Column("repeat", sa.Integer))
        batch.add_column(sa.Column("every_s", sa.Integer))
        batch.add_column(sa.Column("expires_at", TZ))
        batch.add_column(sa.Column("due_at", TZ))
    op.create_index("ix_cap_alerts_due_at", "cap_alerts", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_cap_alerts_due_at", table_name="cap_alerts")
    with op.batch_alter_table("cap_alerts") as batch:
        for column in ("due_at", "expires_at", "every_s", "repeat", "level"):
            batch.drop_column(column)
