"""Every table of the controller's store, on one metadata.

The tables are defined here, and only here, so that the schema reads in one place and
the migrations (controller/store/migrations) can be checked against it: a test compares
the head revision's database with this metadata. A change to a table is a change here
plus a numbered revision under migrations/versions; nothing creates or alters a table at
start-up.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

clusters = Table(
    "clusters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("commune", String(64), nullable=False),
    Column("commune_name", String(200), nullable=False),
    Column("state", String(16), nullable=False, default="unknown"),
    Column("state_at", DateTime(timezone=True)),
    Column("state_reason", Text),  # why offline, when the controller decided it
    Column("last_seen", DateTime(timezone=True)),
    Column("playing_play_id", String(128)),
    Column("playing_bulletin", String(200)),
    Column("last_result", String(32)),
    Column("last_result_bulletin", String(200)),
    Column("last_result_reason", Text),
    Column("last_result_at", DateTime(timezone=True)),
    Column("last_rejection", Text),
    Column("last_rejection_at", DateTime(timezone=True)),
    Column("in_fleet", Boolean, nullable=False, default=True),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False, index=True),
    Column("outbox", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("ref", String(64)),
    Column("play_id", String(128), index=True),
    Column("bulletin", String(200)),
    Column("level", String(16)),
    Column("reason", Text),
    # Live sessions: seconds of silence (a gap), or of audio aired (their end).
    Column("seconds", Float),
    # The id of the cluster key that signed it ('' unsigned), and the SHA-256 of its JSON.
    Column("key_id", String(16), nullable=False, server_default=""),
    Column("digest", String(64)),
    UniqueConstraint("cluster", "key_id", "outbox", "seq", name="uq_event_origin"),
)

# Events whose (cluster, key, outbox, seq) was already taken by a different event: a
# restored copy of an agent's data, or a forgery while unsigned events were still taken.
event_conflicts = Table(
    "event_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False, index=True),
    Column("key_id", String(16), nullable=False),
    Column("outbox", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),  # the event as JSON
    UniqueConstraint("cluster", "key_id", "outbox", "seq", "digest", name="uq_event_conflict"),
)

plays = Table(
    "plays",
    metadata,
    Column("play_id", String(128), primary_key=True),
    Column("programme", String(128)),
    Column("bulletin", String(200), nullable=False),
    Column("level", String(16), nullable=False),
    Column("start_at", DateTime(timezone=True), nullable=False),
    Column("latest_start", DateTime(timezone=True), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("items", Text, nullable=False),  # JSON list of sha256
    Column("clusters", Text, nullable=False),  # JSON list of cluster ids
    Column("urgent", Boolean, nullable=False, default=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("body", Text),  # the PlayBody JSON, to send again to clusters that missed it
)

# One row per scheduled occurrence the controller has dealt with: sent, or recorded
# as missed (and why). This is what stops a restart from sending a play twice.
dispatches = Table(
    "dispatches",
    metadata,
    Column("programme", String(128), primary_key=True),
    Column("occurrence", DateTime(timezone=True), primary_key=True),
    Column("outcome", String(16), nullable=False),  # sent | missed
    Column("reason", Text),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Approvals of programmes that need one (requires_approval): who approved which content.
# `content` is the JSON list of the programme's bulletin content hashes at the time
# (controller.approval): a changed bulletin no longer matches, and needs approval again.
approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("programme", String(128), nullable=False, index=True),
    Column("content", Text, nullable=False),
    Column("approved_by", String(200), nullable=False),
    Column("approved_at", DateTime(timezone=True), nullable=False),
)

# The outcome of the last (re)load of the playlists and the fleet by the running
# controller: one row. A refused edit shows here (and in `loa-controller fleet`).
config_status = Table(
    "config_status",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("status", String(16), nullable=False),  # ok | error
    Column("problems", Text, nullable=False),  # file:line:col lines (warnings when ok)
    Column("at", DateTime(timezone=True), nullable=False),
)

# Named instants the controller keeps across restarts (the scheduler's "dealt with
# everything whose latest start is before this").
marks = Table(
    "marks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Which controller leads (controller/leadership.py): one row, the lease. Only its holder
# schedules, dispatches and takes in events; the others serve the web app and stand by.
# `term` goes up by one at every change of holder; `expires_at` is on the database's
# clock (PostgreSQL's now(); on SQLite, one machine, the machine's).
leadership = Table(
    "leadership",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder", String(200), nullable=False),  # host:pid:random
    Column("url", String(500), nullable=False),  # its web app, for forwarded sends ("")
    Column("term", Integer, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("renewed_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# The latest heartbeat of each cluster (protocol.messages.Heartbeat as JSON: uptime, disk,
# temperature, relay, clock offset, what plays), replaced by every new one.
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("cluster", String(64), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),  # the agent's clock
    Column("received_at", DateTime(timezone=True), nullable=False),  # the controller's
    Column("body", Text, nullable=False),
)

# Signed-in sessions of the web app and the API (controller.web.security.StoredSessions),
# so that a restart signs nobody out. A row is found by the SHA-256 of the session id: the
# id itself (the cookie, the Bearer token) is never stored. `fingerprint` is the SHA-256 of
# the user's password hash at sign-in (a new password ends the session); `expires` is
# `last_seen` plus the idle time, moved on by every use.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("user_name", String(64), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False, index=True),
)

# --- urgent announcements (controller.urgent) ----------------------------------------

# One row per announcement sent (the web, the API, the CLI, a CAP alert).
urgent_announcements = Table(
    "urgent_announcements",
    metadata,
    Column("id", String(128), primary_key=True),  # the play id
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("created_by", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("title", String(200), nullable=False),
    Column("text", Text),
    Column("level", String(16), nullable=False),
    Column("audio_sha256", String(64), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("repeat", Integer, nullable=False),
    Column("gap_s", Float, nullable=False),
    Column("targets", Text, nullable=False),  # JSON list of target names
    Column("clusters", Text, nullable=False),  # JSON list of cluster ids
    Column("latest_start", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True)),
    Column("stopped_by", String(64)),
    Column("ref", String(200)),  # e.g. the CAP identifier it came from
)

# --- CAP alerts taken in (controller.cap) --------------------------------------------

# One row per CAP message taken, by its reference. state: an Alert or Update aired is
# pending | sent | cancelled; an Update whose new alert is not aired is ignored; a Cancel
# is applied; a Cancel or Update whose status is not Actual is ignored (outcome: why).
cap_alerts = Table(
    "cap_alerts",
    metadata,
    Column("ref", String(400), primary_key=True),  # sender,identifier,sent
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("received_by", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # pending | sent | cancelled | ignored | applied
    Column("text", Text, nullable=False),
    Column("clusters", Text, nullable=False),  # JSON list
    Column("announcement", String(128)),
    Column("headline", String(200)),
    # Alert | Update | Cancel; NULL in rows stored before it was added (Alerts and Updates)
    Column("msg_type", String(16)),
    # why a message changed nothing ("ignored: status Test; ..."); NULL otherwise
    Column("outcome", Text),
    # What its policy decided (controller/cap_policy.py): the level and times spoken of
    # its airings, how often it is aired again (seconds), when it expires, and when it is
    # next aired (held until it takes effect, or a repeat); NULL in older rows.
    Column("level", String(16)),
    Column("repeat", Integer),
    Column("every_s", Integer),
    Column("expires_at", DateTime(timezone=True)),
    Column("due_at", DateTime(timezone=True), index=True),
)

# --- the audit log (controller.audit): rows are only ever added ---------------------

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("user", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("subject", String(128)),  # play id of an announcement, or programme id
    Column("level", String(16)),
    Column("title", String(200)),
    Column("text", Text),
    Column("audio_sha256", String(64)),
    Column("targets", Text),  # JSON list of target names
    Column("clusters", Text),  # JSON list of cluster ids
    Column("detail", Text),
)

# --- which cluster holds which content (controller.holdings) ------------------------

holdings = Table(
    "holdings",
    metadata,
    Column("cluster", String(64), primary_key=True),
    Column("sha256", String(64), primary_key=True, index=True),
    Column("since", DateTime(timezone=True), nullable=False),
)


# --- which cluster confirmed which play (controller.confirmations) -------------------

# A row per play and targeted cluster: pending until the cluster reports on the play
# (confirmed), or missed ("not received") past its latest start, or withdrawn when the
# controller stopped the play first. The play's own times and body are in `plays`.
confirmations = Table(
    "confirmations",
    metadata,
    Column("play_id", String(128), primary_key=True),
    Column("cluster", String(64), primary_key=True),
    Column("state", String(16), nullable=False),  # pending | confirmed | missed | withdrawn
    Column("sends", Integer, nullable=False),  # the first send and every resend
    Column("last_sent", DateTime(timezone=True)),  # None: only the first send (plays.sent_at)
    Column("command_id", String(64)),  # the command last sent to it for this play
    Column("confirmed_at", DateTime(timezone=True)),
    Column("refusal", Text),  # the cluster refused one of those commands: its reason
    Column("missed_at", DateTime(timezone=True)),
    Column("reason", Text),  # why missed
    Index("ix_confirmations_cluster_state", "cluster", "state"),
    Index("ix_confirmations_state", "state", "play_id"),
    Index("ix_confirmations_command", "command_id"),
)

# --- availability history (controller.report) ---------------------------------------

# Every change of a cluster's state (online | offline), at the time it took effect (the
# agent's connect time, or when the controller marked it offline); `clusters.state` is
# only the latest. Offline time in a report is counted from these rows.
state_changes = Table(
    "state_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text),
    Index("ix_state_changes_cluster_at", "cluster", "at"),
)

# --- cluster identities (controller.identities) -------------------------------------

# Every key ever registered for a cluster; one `active` at a time, the ones before it
# `retired` (a replaced box), with who and when.
cluster_keys = Table(
    "cluster_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False, index=True),
    Column("key_id", String(16), nullable=False),
    Column("public_key", String(44), nullable=False),  # raw Ed25519, base64
    Column("status", String(16), nullable=False),  # active | retired
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("registered_by", String(64), nullable=False),
    Column("retired_at", DateTime(timezone=True)),
    Column("retired_by", String(64)),
    UniqueConstraint("cluster", "key_id", name="uq_cluster_key"),
)

# One-time enrolment tokens, kept as the SHA-256 of the token (shown once, never stored).
enrolment_tokens = Table(
    "enrolment_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False, index=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("purpose", String(16), nullable=False),  # enrol | replace
    Column("auto_approve", Boolean, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("issued_by", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
    Column("used_by_key", String(16)),
    Column("revoked_at", DateTime(timezone=True)),
)

# Join requests that came with a valid token: pending until a manager decides.
enrolments = Table(
    "enrolments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False, index=True),
    Column("key_id", String(16), nullable=False),
    Column("public_key", String(44), nullable=False),
    Column("token_id", Integer, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("agent_version", String(64)),
    Column("status", String(16), nullable=False),  # pending | registered | rejected
    Column("decided_at", DateTime(timezone=True)),
    Column("decided_by", String(64)),
    Column("answered", Boolean, nullable=False, default=False),  # the agent was told
)
