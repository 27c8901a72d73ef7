"""Signed-in sessions of the web app and the API (controller.web.security.StoredSessions),
kept so that a restart signs nobody out. A row is found by the SHA-256 of the session id:
the id itself (the cookie, the Bearer token) is never stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update

from controller.store.engine import Database, aware, utc
from controller.store.schema import web_sessions


@dataclass(frozen=True)
class WebSession:
    """One row of web_sessions (what a session is, less its id)."""

    user: str
    csrf: str
    fingerprint: str
    created: datetime
    last_seen: datetime
    expires: datetime


class WebSessionRepository:
    """Table web_sessions."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._engine = db.engine

    def add(self, id_sha256: str, session: WebSession) -> None:
        """Keep a new session, and remove those expired by its creation."""
        with self._db.write, self._engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.expires < utc(session.created)))
            conn.execute(insert(web_sessions).values(
                id_sha256=id_sha256, user_name=session.user, csrf=session.csrf,
                fingerprint=session.fingerprint, created=utc(session.created),
                last_seen=utc(session.last_seen), expires=utc(session.expires),
            ))

    def use(self, id_sha256: str, now: datetime, expires: datetime) -> WebSession | None:
        """The session, if it has not expired by `now` (`expires` >= now), with its last use
        moved to `now` and its expiry to `expires`; one statement where the database has
        UPDATE ... RETURNING. An expired one is deleted."""
        now, expires = utc(now), utc(expires)
        cols = web_sessions.c
        found = (cols.id_sha256 == id_sha256) & (cols.expires >= now)
        picked = (cols.user_name, cols.csrf, cols.fingerprint, cols.created)
        moved = {"last_seen": now, "expires": expires}
        with self._db.write, self._engine.begin() as conn:
            if self._engine.dialect.update_returning:
                row = conn.execute(
                    update(web_sessions).where(found).values(**moved).returning(*picked)
                ).first()
            else:
                row = conn.execute(select(*picked).where(found)).first()
                if row is not None:
                    conn.execute(update(web_sessions).where(found).values(**moved))
            if row is None:
                conn.execute(
                    delete(web_sessions).where(
                        (cols.id_sha256 == id_sha256) & (cols.expires < now)
                    )
                )
                return None
        return WebSession(
            user=row.user_name, csrf=row.csrf, fingerprint=row.fingerprint,
            created=aware(row.created), last_seen=now, expires=expires,
        )

    def drop(self, *, id_sha256: str | None = None, user: str | None = None) -> int:
        """Delete the session with that id hash, or every session of that user."""
        if id_sha256 is None and user is None:
            return 0
        query = delete(web_sessions)
        if id_sha256 is not None:
            query = query.where(web_sessions.c.id_sha256 == id_sha256)
        if user is not None:
            query = query.where(web_sessions.c.user_name == user)
        with self._db.write, self._engine.begin() as conn:
            return int(conn.execute(query).rowcount)

    def purge(self, now: datetime) -> int:
        """Delete the sessions expired by `now`; how many."""
        with self._db.write, self._engine.begin() as conn:
            query = delete(web_sessions).where(web_sessions.c.expires < utc(now))
            return int(conn.execute(query).rowcount)
