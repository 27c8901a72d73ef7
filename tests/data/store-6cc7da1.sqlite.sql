-- The store's schema as controller/store.py, urgent.py, cap.py, audit.py and holdings.py
-- created it at commit 6cc7da1 (metadata.create_all, then add_missing_columns), the
-- last release before migrations: the DDL SQLAlchemy emitted for sqlite, frozen.
-- tests/test_migrations.py builds an old database from it.

CREATE TABLE approvals (
	id INTEGER NOT NULL, 
	programme VARCHAR(128) NOT NULL, 
	content TEXT NOT NULL, 
	approved_by VARCHAR(200) NOT NULL, 
	approved_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_approvals_programme ON approvals (programme);

CREATE TABLE audit_log (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	user VARCHAR(64) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	subject VARCHAR(128), 
	level VARCHAR(16), 
	title VARCHAR(200), 
	text TEXT, 
	audio_sha256 VARCHAR(64), 
	targets TEXT, 
	clusters TEXT, 
	detail TEXT, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_audit_log_at ON audit_log (at);

CREATE TABLE cap_alerts (
	ref VARCHAR(400) NOT NULL, 
	received_at DATETIME NOT NULL, 
	received_by VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	text TEXT NOT NULL, 
	clusters TEXT NOT NULL, 
	announcement VARCHAR(128), 
	headline VARCHAR(200), 
	msg_type VARCHAR(16), 
	outcome TEXT, 
	PRIMARY KEY (ref)
);

CREATE TABLE clusters (
	id VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	commune VARCHAR(64) NOT NULL, 
	commune_name VARCHAR(200) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	state_at DATETIME, 
	state_reason TEXT, 
	last_seen DATETIME, 
	playing_play_id VARCHAR(128), 
	playing_bulletin VARCHAR(200), 
	last_result VARCHAR(32), 
	last_result_bulletin VARCHAR(200), 
	last_result_reason TEXT, 
	last_result_at DATETIME, 
	last_rejection TEXT, 
	last_rejection_at DATETIME, 
	in_fleet BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE config_status (
	id INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	problems TEXT NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE dispatches (
	programme VARCHAR(128) NOT NULL, 
	occurrence DATETIME NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	reason TEXT, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (programme, occurrence)
);

CREATE TABLE events (
	id INTEGER NOT NULL, 
	cluster VARCHAR(64) NOT NULL, 
	outbox VARCHAR(64) NOT NULL, 
	seq INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	received_at DATETIME NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	ref VARCHAR(64), 
	play_id VARCHAR(128), 
	bulletin VARCHAR(200), 
	level VARCHAR(16), 
	reason TEXT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_event_origin UNIQUE (cluster, outbox, seq)
);

CREATE INDEX ix_events_cluster ON events (cluster);

CREATE INDEX ix_events_play_id ON events (play_id);

CREATE TABLE heartbeats (
	cluster VARCHAR(64) NOT NULL, 
	at DATETIME NOT NULL, 
	received_at DATETIME NOT NULL, 
	body TEXT NOT NULL, 
	PRIMARY KEY (cluster)
);

CREATE TABLE holdings (
	cluster VARCHAR(64) NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	since DATETIME NOT NULL, 
	PRIMARY KEY (cluster, sha256)
);

CREATE INDEX ix_holdings_sha256 ON holdings (sha256);

CREATE TABLE marks (
	name VARCHAR(64) NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (name)
);

CREATE TABLE plays (
	play_id VARCHAR(128) NOT NULL, 
	programme VARCHAR(128), 
	bulletin VARCHAR(200) NOT NULL, 
	level VARCHAR(16) NOT NULL, 
	start_at DATETIME NOT NULL, 
	latest_start DATETIME NOT NULL, 
	duration_s FLOAT NOT NULL, 
	items TEXT NOT NULL, 
	clusters TEXT NOT NULL, 
	urgent BOOLEAN NOT NULL, 
	sent_at DATETIME NOT NULL, 
	body TEXT, 
	PRIMARY KEY (play_id)
);

CREATE TABLE urgent_announcements (
	id VARCHAR(128) NOT NULL, 
	created_at DATETIME NOT NULL, 
	created_by VARCHAR(64) NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	title VARCHAR(200) NOT NULL, 
	text TEXT, 
	level VARCHAR(16) NOT NULL, 
	audio_sha256 VARCHAR(64) NOT NULL, 
	duration_s FLOAT NOT NULL, 
	repeat INTEGER NOT NULL, 
	gap_s FLOAT NOT NULL, 
	targets TEXT NOT NULL, 
	clusters TEXT NOT NULL, 
	latest_start DATETIME NOT NULL, 
	stopped_at DATETIME, 
	stopped_by VARCHAR(64), 
	ref VARCHAR(200), 
	PRIMARY KEY (id)
);

CREATE INDEX ix_urgent_announcements_created_at ON urgent_announcements (created_at);

CREATE TABLE web_sessions (
	id_sha256 VARCHAR(64) NOT NULL, 
	user_name VARCHAR(64) NOT NULL, 
	csrf VARCHAR(64) NOT NULL, 
	fingerprint VARCHAR(64) NOT NULL, 
	created DATETIME NOT NULL, 
	last_seen DATETIME NOT NULL, 
	expires DATETIME NOT NULL, 
	PRIMARY KEY (id_sha256)
);

CREATE INDEX ix_web_sessions_expires ON web_sessions (expires);

CREATE INDEX ix_web_sessions_user_name ON web_sessions (user_name);
