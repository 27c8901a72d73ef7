"""The audit log (nhật ký thao tác): every urgent action and approval, and every step of
a cluster's enrolment (a token issued, a key registered, approved, rejected, replaced),
who and when.

One row per action: the user, the time, what was done (send, stop, approve, a CAP
alert taken in), the announcement or programme it was about, its level, text and audio
hash, and its targets. The per-cluster outcome of an announcement is not copied here:
it is read from the status events (controller.urgent) when the log is shown, so it is
always the latest the clusters reported. Rows are only ever added.

The table (audit_log) is in controller.store.schema, in the same database as the events.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select

from controller.store import Store, aware
from controller.store.schema import audit_log

Action = Literal[
    "send", "stop", "approve", "cap-alert", "cap-cancel", "sign-in-refused",
    # cluster identities (controller/identities.py); subject: the cluster
    "enrol-token", "enrol-replace", "enrol-register", "enrol-approve", "enrol-reject",
    # live sessions from the web app (controller/microphone.py); subject: the session
    "live-start", "live-stop",
]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    user: str
    action: str
    subject: str | None
    level: str | None
    title: str | None
    text: str | None
    audio_sha256: str | None
    targets: list[str]
    clusters: list[str]
    detail: str | None


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()

    def record(
        self,
        *,
        at: datetime,
        user: str,
        action: Action,
        subject: str | None = None,
        level: str | None = None,
        title: str | None = None,
        text: str | None = None,
        audio_sha256: str | None = None,
        targets: Sequence[str] = (),
        clusters: Sequence[str] = (),
        detail: str | None = None,
    ) -> None:
        with self._lock, self._store.engine.begin() as conn:
            conn.execute(
                insert(audit_log).values(
                    at=at.astimezone(UTC), user=user, action=action, subject=subject,
                    level=level, title=title, text=text, audio_sha256=audio_sha256,
                    targets=json.dumps(list(targets)), clusters=json.dumps(list(clusters)),
                    detail=detail,
                )
            )

    def entries(
        self, *, limit: int = 500, visible: Callable[[AuditEntry], bool] | None = None
    ) -> list[AuditEntry]:
        """The newest entries first; `visible` filters them (a manager sees its subtree)."""
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log).order_by(audit_log.c.id.desc()).limit(limit * 4)
            ).mappings()
            out = [_entry(r) for r in rows]
        if visible is not None:
            out = [e for e in out if visible(e)]
        return out[:limit]


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(
        id=r["id"], at=aware(r["at"]), user=r["user"], action=r["action"],
        subject=r["subject"], level=r["level"], title=r["title"], text=r["text"],
        audio_sha256=r["audio_sha256"], targets=list(json.loads(r["targets"] or "[]")),
        clusters=list(json.loads(r["clusters"] or "[]")), detail=r["detail"],
    )


CSV_HEADER = [
    "at", "user", "action", "subject", "level", "title", "text", "audio_sha256", "targets",
    "clusters", "outcome", "detail",
]


def to_csv(
    entries: Sequence[AuditEntry],
    outcome: Callable[[AuditEntry], str],
    *,
    header: Sequence[str] = CSV_HEADER,
    word: Callable[[str, str], str] = lambda _column, value: value,
    at: Callable[[datetime], str] = datetime.isoformat,
) -> str:
    """The entries as CSV (UTF-8, one row each); outcome gives the per-cluster result.

    For a reader rather than a program (the web app's download): header, the column
    names; word(column, value), an action's or a level's name, or the detail as it
    reads; at, a time.
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for e in entries:
        writer.writerow([
            at(e.at), e.user, word("action", e.action), e.subject or "",
            word("level", e.level) if e.level else "", e.title or "",
            e.text or "", e.audio_sha256 or "", " ".join(e.targets), " ".join(e.clusters),
            outcome(e), word("detail", e.detail) if e.detail else "",
        ])
    return buf.getvalue()
