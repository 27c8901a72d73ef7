"""Cluster identities: every cluster's own key, enrolment tokens and join requests; events
judged within the key that signed them.

- events: `key_id` (the id of the cluster key that signed the event; '' for the
  unsigned events of earlier releases, which every existing row is) and `digest` (the
  SHA-256 of the event's JSON; NULL for existing rows, which count as the same event
  when sent again). The uniqueness becomes (cluster, key_id, outbox, seq): a number
  taken under one key does not make another key's event a duplicate.
- event_conflicts: a different event under a (cluster, key, outbox, seq) already taken.
- cluster_keys, enrolment_tokens, enrolments: controller/identities.py.

Every existing row is kept. On SQLite the events table is copied to change its
constraint (Alembic's batch mode), inside the upgrade's one transaction.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TZ = sa.DateTime(timezone=True)


def _tables() -> list[sa.Table]:
    m = sa.MetaData()
    return [
        sa.Table(
            "event_conflicts", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("cluster", sa.String(64), nullable=False, index=True),
            sa.Column("key_id", sa.String(16), nullable=False),
            sa.Column("outbox", sa.String(64), nullable=False),
            sa.Column("seq", sa.Integer, nullable=False),
            sa.Column("digest", sa.String(64), nullable=False),
            sa.Column("received_at", TZ, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.UniqueConstraint(
                "cluster", "key_id", "outbox", "seq", "digest", name="uq_event_conflict"
            ),
        ),
        sa.Table(
            "cluster_keys", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("cluster", sa.String(64), nullable=False, index=True),
            sa.Column("key_id", sa.String(16), nullable=False),
            sa.Column("public_key", sa.String(44), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("registered_at", TZ, nullable=False),
            sa.Column("registered_by", sa.String(64), nullable=False),
            sa.Column("retired_at", TZ),
            sa.Column("retired_by", sa.String(64)),
            sa.UniqueConstraint("cluster", "key_id", name="uq_cluster_key"),
        ),
        sa.Table(
            "enrolment_tokens", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("cluster", sa.String(64), nullable=False, index=True),
            sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
            sa.Column("purpose", sa.String(16), nullable=False),
            sa.Column("auto_approve", sa.Boolean, nullable=False),
            sa.Column("issued_at", TZ, nullable=False),
            sa.Column("issued_by", sa.String(64), nullable=False),
            sa.Column("expires_at", TZ, nullable=False),
            sa.Column("used_at", TZ),
            sa.Column("used_by_key", sa.String(16)),
            sa.Column("revoked_at", TZ),
        ),
        sa.Table(
            "enrolments", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("cluster", sa.String(64), nullable=False, index=True),
            sa.Column("key_id", sa.String(16), nullable=False),
            sa.Column("public_key", sa.String(44), nullable=False),
            sa.Column("token_id", sa.Integer, nullable=False),
            sa.Column("requested_at", TZ, nullable=False),
            sa.Column("agent_version", sa.String(64)),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("decided_at", TZ),
            sa.Column("decided_by", sa.String(64)),
            sa.Column("answered", sa.Boolean, nullable=False),
        ),
    ]


def upgrade() -> None:
    with op.batch_alter_table("events") as events:
        events.add_column(
            sa.Column("key_id", sa.String(16), nullable=False, server_default="")
        )
        events.add_column(sa.Column("digest", sa.String(64)))
        events.drop_constraint("uq_event_origin", type_="unique")
        events.create_unique_constraint(
            "uq_event_origin", ["cluster", "key_id", "outbox", "seq"]
        )
    bind = op.get_bind()
    for table in _tables():
        table.create(bind)  # with its indexes


def downgrade() -> None:
    raise NotImplementedError(
        "cluster identities are not undone: restore the backup taken before `db upgrade`"
    )
