"""The baseline: the store as the last release before migrations left it (commit 6cc7da1).

On an empty database it creates every table. On a database written by an earlier
release (tables there, no alembic_version; `loa-controller db upgrade` only, never at
start-up) it first checks that the tables it finds are a Loa store's, then adds what
those releases lacked, keeping every row:
- tables that were created only on first use (cap_alerts without a CAP intake,
  urgent_announcements, audit_log, holdings, heartbeats, web_sessions, ...);
- the columns added at start-up by those releases (`add_missing_columns`):
  clusters.state_reason, cap_alerts.msg_type, cap_alerts.outcome.
Once it has run, the database is at this revision, like one it created.

The tables are written out here as they were, not taken from controller.store.schema:
a revision describes one moment of the schema, and the code's tables move on.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TZ = sa.DateTime(timezone=True)


def _tables() -> list[sa.Table]:
    m = sa.MetaData()
    return [
        sa.Table(
            "clusters", m,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("commune", sa.String(64), nullable=False),
            sa.Column("commune_name", sa.String(200), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("state_at", TZ),
            sa.Column("state_reason", sa.Text),
            sa.Column("last_seen", TZ),
            sa.Column("playing_play_id", sa.String(128)),
            sa.Column("playing_bulletin", sa.String(200)),
            sa.Column("last_result", sa.String(32)),
            sa.Column("last_result_bulletin", sa.String(200)),
            sa.Column("last_result_reason", sa.Text),
            sa.Column("last_result_at", TZ),
            sa.Column("last_rejection", sa.Text),
            sa.Column("last_rejection_at", TZ),
            sa.Column("in_fleet", sa.Boolean, nullable=False),
        ),
        sa.Table(
            "events", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("cluster", sa.String(64), nullable=False, index=True),
            sa.Column("outbox", sa.String(64), nullable=False),
            sa.Column("seq", sa.Integer, nullable=False),
            sa.Column("at", TZ, nullable=False),
            sa.Column("received_at", TZ, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("ref", sa.String(64)),
            sa.Column("play_id", sa.String(128), index=True),
            sa.Column("bulletin", sa.String(200)),
            sa.Column("level", sa.String(16)),
            sa.Column("reason", sa.Text),
            sa.UniqueConstraint("cluster", "outbox", "seq", name="uq_event_origin"),
        ),
        sa.Table(
            "plays", m,
            sa.Column("play_id", sa.String(128), primary_key=True),
            sa.Column("programme", sa.String(128)),
            sa.Column("bulletin", sa.String(200), nullable=False),
            sa.Column("level", sa.String(16), nullable=False),
            sa.Column("start_at", TZ, nullable=False),
            sa.Column("latest_start", TZ, nullable=False),
            sa.Column("duration_s", sa.Float, nullable=False),
            sa.Column("items", sa.Text, nullable=False),
            sa.Column("clusters", sa.Text, nullable=False),
            sa.Column("urgent", sa.Boolean, nullable=False),
            sa.Column("sent_at", TZ, nullable=False),
            sa.Column("body", sa.Text),
        ),
        sa.Table(
            "dispatches", m,
            sa.Column("programme", sa.String(128), primary_key=True),
            sa.Column("occurrence", TZ, primary_key=True),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("at", TZ, nullable=False),
        ),
        sa.Table(
            "approvals", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("programme", sa.String(128), nullable=False, index=True),
            sa.Column("content", sa.Text, nullable=False),
            sa.Column("approved_by", sa.String(200), nullable=False),
            sa.Column("approved_at", TZ, nullable=False),
        ),
        sa.Table(
            "config_status", m,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("problems", sa.Text, nullable=False),
            sa.Column("at", TZ, nullable=False),
        ),
        sa.Table(
            "marks", m,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("at", TZ, nullable=False),
        ),
        sa.Table(
            "heartbeats", m,
            sa.Column("cluster", sa.String(64), primary_key=True),
            sa.Column("at", TZ, nullable=False),
            sa.Column("received_at", TZ, nullable=False),
            sa.Column("body", sa.Text, nullable=False),
        ),
        sa.Table(
            "web_sessions", m,
            sa.Column("id_sha256", sa.String(64), primary_key=True),
            sa.Column("user_name", sa.String(64), nullable=False, index=True),
            sa.Column("csrf", sa.String(64), nullable=False),
            sa.Column("fingerprint", sa.String(64), nullable=False),
            sa.Column("created", TZ, nullable=False),
            sa.Column("last_seen", TZ, nullable=False),
            sa.Column("expires", TZ, nullable=False, index=True),
        ),
        sa.Table(
            "urgent_announcements", m,
            sa.Column("id", sa.String(128), primary_key=True),
            sa.Column("created_at", TZ, nullable=False, index=True),
            sa.Column("created_by", sa.String(64), nullable=False),
            sa.Column("source", sa.String(16), nullable=False),
            sa.Column("title", sa.String(200), nullable=False),
            sa.Column("text", sa.Text),
            sa.Column("level", sa.String(16), nullable=False),
            sa.Column("audio_sha256", sa.String(64), nullable=False),
            sa.Column("duration_s", sa.Float, nullable=False),
            sa.Column("repeat", sa.Integer, nullable=False),
            sa.Column("gap_s", sa.Float, nullable=False),
            sa.Column("targets", sa.Text, nullable=False),
            sa.Column("clusters", sa.Text, nullable=False),
            sa.Column("latest_start", TZ, nullable=False),
            sa.Column("stopped_at", TZ),
            sa.Column("stopped_by", sa.String(64)),
            sa.Column("ref", sa.String(200)),
        ),
        sa.Table(
            "cap_alerts", m,
            sa.Column("ref", sa.String(400), primary_key=True),
            sa.Column("received_at", TZ, nullable=False),
            sa.Column("received_by", sa.String(64), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("text", sa.Text, nullable=False),
            sa.Column("clusters", sa.Text, nullable=False),
            sa.Column("announcement", sa.String(128)),
            sa.Column("headline", sa.String(200)),
            sa.Column("msg_type", sa.String(16)),
            sa.Column("outcome", sa.Text),
        ),
        sa.Table(
            "audit_log", m,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", TZ, nullable=False, index=True),
            sa.Column("user", sa.String(64), nullable=False),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("subject", sa.String(128)),
            sa.Column("level", sa.String(16)),
            sa.Column("title", sa.String(200)),
            sa.Column("text", sa.Text),
            sa.Column("audio_sha256", sa.String(64)),
            sa.Column("targets", sa.Text),
            sa.Column("clusters", sa.Text),
            sa.Column("detail", sa.Text),
        ),
        sa.Table(
            "holdings", m,
            sa.Column("cluster", sa.String(64), primary_key=True),
            sa.Column("sha256", sa.String(64), primary_key=True, index=True),
            sa.Column("since", TZ, nullable=False),
        ),
    ]


# Columns that releases before the baseline added at start-up, so that a database they
# wrote may lack them (all nullable: existing rows stay valid).
LATE_COLUMNS = {
    "clusters": ("state_reason",),
    "cap_alerts": ("msg_type", "outcome"),
}


class NotALoaStoreError(ValueError):
    """The database has tables named like the store's that are not the store's."""


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    tables = _tables()
    problems = []
    for table in tables:
        if table.name not in present:
            continue
        have = {c["name"] for c in sa.inspect(bind).get_columns(table.name)}
        want = {c.name for c in table.columns}
        lacking = sorted(want - have - set(LATE_COLUMNS.get(table.name, ())))
        extra = sorted(have - want)
        if lacking:
            problems.append(f"table {table.name} lacks column(s) {', '.join(lacking)}")
        if extra:
            problems.append(f"table {table.name} has column(s) {', '.join(extra)} "
                            "no release of Loa made")
    if problems:
        raise NotALoaStoreError(
            "this database's tables are not those of a Loa store written by an earlier "
            "release: " + "; ".join(problems) + ". Nothing was changed; check store_url "
            "points at the controller's database"
        )
    for table in tables:
        if table.name not in present:
            table.create(bind)  # with its indexes
            continue
        have = {c["name"] for c in sa.inspect(bind).get_columns(table.name)}
        for name in LATE_COLUMNS.get(table.name, ()):
            if name not in have:
                column = table.columns[name]
                op.add_column(table.name, sa.Column(name, column.type, nullable=True))


def downgrade() -> None:
    raise NotImplementedError(
        "the baseline is not undone: restore the backup taken before `db upgrade` instead"
    )
