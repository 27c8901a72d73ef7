"""Cluster identities: the key each cluster's box made, the one-time tokens that let a box
ask to have it registered, and the join requests waiting for a manager.

Tables (controller/store/schema.py, in the same database as the events):

- `cluster_keys`: every key ever registered for a cluster; one `active` at a time, the
  ones before it `retired` (a replaced box), with who and when;
- `enrolment_tokens`: tokens issued per cluster, kept as the SHA-256 of the token (the
  token itself is shown once, written into the provisioning bundle); single use, with
  an expiry; `auto_approve` ones register the key at once; `replace` ones may retire the
  cluster's current key; issuing a new token for a cluster revokes its unused ones;
- `enrolments`: join requests that came with a valid token: the key, then `pending`
  until a manager approves (`registered`) or rejects it (`rejected`); `answered` once
  the agent has been told.

Every decision (a token issued, a key registered, approved, rejected, retired) is a row
of the audit log (controller/audit.py). The CLI (`loa-controller enrol ...`), the web
app and the running controller's enrolment desk (controller/enrolment.py) all go through
`Identities`, so there is one path per decision.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from controller.audit import AuditLog
from controller.store import Store, aware
from controller.store.schema import cluster_keys, enrolment_tokens, enrolments
from protocol.l10n import Text
from protocol.messages import EnrolmentStatus

DEFAULT_TOKEN_TTL = timedelta(days=14)
MAX_TOKEN_TTL = timedelta(days=365)

Purpose = Literal["enrol", "replace"]


class EnrolmentError(ValueError):
    """A token cannot be issued, or a request approved or rejected; the text says why."""


@dataclass(frozen=True)
class IssuedToken:
    """A token, shown once: for the provisioning bundle's `enrolment.token` file."""

    cluster: str
    token: str
    expires_at: datetime
    auto_approve: bool
    purpose: Purpose


@dataclass(frozen=True)
class Outcome:
    """The answer to a join request."""

    status: EnrolmentStatus
    reason: str | None = None
    decided: bool = False  # this request changed something (a key registered, a request kept)


@dataclass(frozen=True)
class ClusterKey:
    cluster: str
    key_id: str
    public_key: str
    status: str
    registered_at: datetime
    registered_by: str
    retired_at: datetime | None


@dataclass(frozen=True)
class Request:
    """A join request that came with a valid token."""

    id: int
    cluster: str
    key_id: str
    public_key: str
    requested_at: datetime
    agent_version: str | None
    status: str
    purpose: str
    decided_at: datetime | None
    decided_by: str | None


@dataclass(frozen=True)
class Answer:
    """A decision the agent has yet to be told."""

    id: int
    cluster: str
    key_id: str
    status: EnrolmentStatus
    reason: str | None


@dataclass(frozen=True)
class TokenRow:
    cluster: str
    purpose: str
    auto_approve: bool
    issued_at: datetime
    issued_by: str
    expires_at: datetime
    used_at: datetime | None
    used_by_key: str | None
    revoked_at: datetime | None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _when(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


class Identities:
    """The repository of cluster keys, enrolment tokens and join requests."""

    def __init__(self, store: Store, audit: AuditLog | None = None) -> None:
        self._store = store
        self._engine = store.engine
        self._audit = audit or AuditLog(store)
        self._lock = threading.Lock()

    # --- tokens -----------------------------------------------------------------------------

    def issue_token(
        self,
        cluster: str,
        *,
        by: str,
        now: datetime,
        ttl: timedelta = DEFAULT_TOKEN_TTL,
        auto_approve: bool = False,
        purpose: Purpose = "enrol",
    ) -> IssuedToken:
        """A new one-time token for the cluster (its unused ones are revoked). "enrol": for
        a cluster with no registered key; "replace": for a new box, whose key retires the
        current one when it is registered."""
        if not timedelta(minutes=1) <= ttl <= MAX_TOKEN_TTL:
            raise EnrolmentError(
                f"a token lasts from 1 minute to {MAX_TOKEN_TTL.days} days, not {ttl}"
            )
        active = self.active_key(cluster)
        if purpose == "enrol" and active is not None:
            raise EnrolmentError(
                f"cluster {cluster} already has registered key {active.key_id} (since "
                f"{_when(active.registered_at)}); for a new box in its place run "
                f"`loa-controller enrol replace {cluster}`, which retires that key once the "
                "new one is registered"
            )
        token = secrets.token_urlsafe(32)
        expires = now + ttl
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                update(enrolment_tokens)
                .where(
                    enrolment_tokens.c.cluster == cluster,
                    enrolment_tokens.c.used_at.is_(None),
                    enrolment_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=now.astimezone(UTC))
            )
            conn.execute(insert(enrolment_tokens).values(
                cluster=cluster, token_sha256=token_digest(token), purpose=purpose,
                auto_approve=auto_approve, issued_at=now.astimezone(UTC), issued_by=by,
                expires_at=expires.astimezone(UTC),
            ))
        self._audit.record(
            at=now, user=by, action="enrol-replace" if purpose == "replace" else "enrol-token",
            subject=cluster, clusters=[cluster],
            detail=(
                f"token expires {_when(expires)}"
                + (", approves itself" if auto_approve else ", needs a manager's approval")
                + (f"; replaces key {active.key_id}" if active is not None else "")
            ),
        )
        return IssuedToken(cluster, token, expires, auto_approve, purpose)

    def tokens(self, cluster: str | None = None) -> list[TokenRow]:
        query = select(enrolment_tokens).order_by(enrolment_tokens.c.id)
        if cluster is not None:
            query = query.where(enrolment_tokens.c.cluster == cluster)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            TokenRow(
                cluster=r["cluster"], purpose=r["purpose"], auto_approve=bool(r["auto_approve"]),
                issued_at=aware(r["issued_at"]), issued_by=r["issued_by"],
                expires_at=aware(r["expires_at"]),
                used_at=aware(r["used_at"]) if r["used_at"] else None,
                used_by_key=r["used_by_key"],
                revoked_at=aware(r["revoked_at"]) if r["revoked_at"] else None,
            )
            for r in rows
        ]

    # --- join requests ----------------------------------------------------------------------

    def join(
        self,
        cluster: str,
        key_id: str,
        public_key: str,
        token: str,
        now: datetime,
        agent_version: str | None = None,
    ) -> Outcome:
        """A join request whose signature was checked (the sender holds the key). The same
        request again gets the same answer; a refusal changes nothing stored."""
        with self._lock, self._engine.begin() as conn:
            active = _active(conn, cluster)
            if active is not None and active["key_id"] == key_id:
                return Outcome("registered")
            earlier = conn.execute(
                select(enrolments.c.status, enrolments.c.decided_at)
                .where(enrolments.c.cluster == cluster, enrolments.c.key_id == key_id)
                .order_by(enrolments.c.id.desc()).limit(1)
            ).first()
            if earlier is not None:
                if earlier[0] == "pending":
                    return Outcome("pending", "waiting for a manager's approval")
                if earlier[0] == "rejected":
                    return Outcome("refused", f"a manager rejected key {key_id}")
                return Outcome("refused", f"key {key_id} was retired; it cannot come back")
            found = conn.execute(
                select(enrolment_tokens).where(
                    enrolment_tokens.c.token_sha256 == token_digest(token)
                )
            ).mappings().first()
            problem = _token_problem(found, cluster, now, active)
            if problem is not None:
                return Outcome("refused", problem)
            assert found is not None
            conn.execute(
                update(enrolment_tokens).where(enrolment_tokens.c.id == found["id"])
                .values(used_at=now.astimezone(UTC), used_by_key=key_id)
            )
            inserted = conn.execute(insert(enrolments).values(
                cluster=cluster, key_id=key_id, public_key=public_key, token_id=found["id"],
                requested_at=now.astimezone(UTC), agent_version=agent_version,
                status="pending", answered=False,
            )).inserted_primary_key
            assert inserted is not None
            request_id = int(inserted[0])
            if not found["auto_approve"]:
                return Outcome("pending", "waiting for a manager's approval", decided=True)
            retired = self._register(conn, request_id, "enrolment token", now)
            conn.execute(  # the desk answers this request itself, at once
                update(enrolments).where(enrolments.c.id == request_id).values(answered=True)
            )
        self._audit_registration(cluster, key_id, "enrolment token", now, retired, auto=True)
        return Outcome("registered", decided=True)

    def approve(self, cluster: str, *, by: str, now: datetime, key: str | None = None) -> str:
        """Register the key of the cluster's pending join request; its key id."""
        with self._lock, self._engine.begin() as conn:
            request = _pending(conn, cluster, key)
            retired = self._register(conn, request["id"], by, now)
        self._audit_registration(cluster, request["key_id"], by, now, retired, auto=False)
        return str(request["key_id"])

    def reject(self, cluster: str, *, by: str, now: datetime, key: str | None = None) -> str:
        """Refuse the cluster's pending join request; the rejected key id."""
        with self._lock, self._engine.begin() as conn:
            request = _pending(conn, cluster, key)
            conn.execute(
                update(enrolments).where(enrolments.c.id == request["id"]).values(
                    status="rejected", decided_at=now.astimezone(UTC), decided_by=by,
                    answered=False,
                )
            )
        self._audit.record(
            at=now, user=by, action="enrol-reject", subject=cluster, clusters=[cluster],
            detail=f"rejected the join request of key {request['key_id']}",
        )
        return str(request["key_id"])

    def register_key(self, cluster: str, public_key: str, key_id: str, *, by: str,
                     now: datetime) -> None:
        """Register a key generated where the registering party holds it (a simulated
        fleet made its agents' keys itself): the active key of a cluster with none."""
        self.register_keys([(cluster, public_key, key_id)], by=by, now=now)

    def register_keys(
        self, keys: Sequence[tuple[str, str, str]], *, by: str, now: datetime
    ) -> None:
        """register_key for many (cluster, public key, key id) at once, in one transaction
        (a simulated fleet of a thousand clusters), one audit row each."""
        added = []
        with self._lock, self._engine.begin() as conn:
            for cluster, public_key, key_id in keys:
                active = _active(conn, cluster)
                if active is not None:
                    if active["key_id"] == key_id:
                        continue
                    raise EnrolmentError(Text("cluster {cluster} already has key {key}",
                                              cluster=cluster, key=active["key_id"]))
                conn.execute(insert(cluster_keys).values(
                    cluster=cluster, key_id=key_id, public_key=public_key, status="active",
                    registered_at=now.astimezone(UTC), registered_by=by,
                ))
                added.append((cluster, key_id))
        for cluster, key_id in added:
            self._audit.record(
                at=now, user=by, action="enrol-register", subject=cluster, clusters=[cluster],
                detail=f"registered key {key_id}, made by {by}",
            )

    def _register(self, conn: Connection, request_id: int, by: str, now: datetime) -> str | None:
        """Make a request's key the cluster's active one; the key id it retired, if any."""
        request = conn.execute(
            select(enrolments, enrolment_tokens.c.purpose)
            .select_from(enrolments.join(
                enrolment_tokens, enrolment_tokens.c.id == enrolments.c.token_id
            ))
            .where(enrolments.c.id == request_id)
        ).mappings().one()
        cluster = request["cluster"]
        active = _active(conn, cluster)
        retired = None
        if active is not None:
            if request["purpose"] != "replace":
                raise EnrolmentError(Text(
                    "cluster {cluster} has registered key {key} meanwhile; a new box in its "
                    "place needs `loa-controller enrol replace {cluster}`",
                    cluster=cluster, key=active["key_id"],
                ))
            conn.execute(
                update(cluster_keys).where(cluster_keys.c.id == active["id"]).values(
                    status="retired", retired_at=now.astimezone(UTC), retired_by=by,
                )
            )
            retired = str(active["key_id"])
        conn.execute(insert(cluster_keys).values(
            cluster=cluster, key_id=request["key_id"], public_key=request["public_key"],
            status="active", registered_at=now.astimezone(UTC), registered_by=by,
        ))
        conn.execute(
            update(enrolments).where(enrolments.c.id == request_id).values(
                status="registered", decided_at=now.astimezone(UTC), decided_by=by,
                answered=False,
            )
        )
        return retired

    def _audit_registration(
        self, cluster: str, key_id: str, by: str, now: datetime, retired: str | None, *,
        auto: bool,
    ) -> None:
        detail = f"registered key {key_id}" + (
            " (the token approves itself)" if auto else ""
        ) + (f"; retired key {retired} (box replaced)" if retired else "")
        self._audit.record(
            at=now, user=by, action="enrol-register" if auto else "enrol-approve",
            subject=cluster, clusters=[cluster], detail=detail,
        )

    # --- what the running controller needs --------------------------------------------------

    def active_keys(self) -> dict[str, tuple[str, str]]:
        """cluster -> (key id, public key as base64) of every registered key."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(cluster_keys.c.cluster, cluster_keys.c.key_id, cluster_keys.c.public_key)
                .where(cluster_keys.c.status == "active")
            ).all()
        return {cluster: (ident, text) for cluster, ident, text in rows}

    def unanswered(self) -> list[Answer]:
        """Decisions (by a manager, maybe in another process) the agents are to be told."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(enrolments.c.id, enrolments.c.cluster, enrolments.c.key_id,
                       enrolments.c.status)
                .where(enrolments.c.answered.is_(False), enrolments.c.status != "pending")
                .order_by(enrolments.c.id).limit(500)
            ).all()
        return [
            Answer(
                id=r[0], cluster=r[1], key_id=r[2],
                status="registered" if r[3] == "registered" else "refused",
                reason=None if r[3] == "registered" else f"a manager rejected key {r[2]}",
            )
            for r in rows
        ]

    def mark_answered(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock, self._engine.begin() as conn:
            conn.execute(update(enrolments).where(enrolments.c.id.in_(ids)).values(answered=True))

    # --- what people are shown --------------------------------------------------------------

    def active_key(self, cluster: str) -> ClusterKey | None:
        with self._engine.connect() as conn:
            row = _active(conn, cluster)
        return _key(row) if row is not None else None

    def keys(self, cluster: str | None = None) -> list[ClusterKey]:
        query = select(cluster_keys).order_by(cluster_keys.c.cluster, cluster_keys.c.id)
        if cluster is not None:
            query = query.where(cluster_keys.c.cluster == cluster)
        with self._engine.connect() as conn:
            return [_key(r) for r in conn.execute(query).mappings()]

    def requests(self, *, pending_only: bool = False) -> list[Request]:
        query = (
            select(enrolments, enrolment_tokens.c.purpose)
            .select_from(enrolments.join(
                enrolment_tokens, enrolment_tokens.c.id == enrolments.c.token_id
            ))
            .order_by(enrolments.c.id)
        )
        if pending_only:
            query = query.where(enrolments.c.status == "pending")
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Request(
                id=r["id"], cluster=r["cluster"], key_id=r["key_id"],
                public_key=r["public_key"], requested_at=aware(r["requested_at"]),
                agent_version=r["agent_version"], status=r["status"], purpose=r["purpose"],
                decided_at=aware(r["decided_at"]) if r["decided_at"] else None,
                decided_by=r["decided_by"],
            )
            for r in rows
        ]


def _active(conn: Connection, cluster: str) -> Any:
    return conn.execute(
        select(cluster_keys).where(
            cluster_keys.c.cluster == cluster, cluster_keys.c.status == "active"
        )
    ).mappings().first()


def _pending(conn: Connection, cluster: str, key: str | None) -> Any:
    rows = conn.execute(
        select(enrolments).where(enrolments.c.cluster == cluster, enrolments.c.status == "pending")
        .order_by(enrolments.c.id)
    ).mappings().all()
    if key is not None:
        rows = [r for r in rows if r["key_id"] == key]
    if not rows:
        raise EnrolmentError(
            Text("no join request from cluster {cluster} with key {key} waits for approval; "
                 "`loa-controller enrol list` shows those that do", cluster=cluster, key=key)
            if key else
            Text("no join request from cluster {cluster} waits for approval; "
                 "`loa-controller enrol list` shows those that do", cluster=cluster)
        )
    if len(rows) > 1:
        raise EnrolmentError(
            f"cluster {cluster} has {len(rows)} join requests waiting ("
            + ", ".join(f"key {r['key_id']}" for r in rows)
            + "); say which with --key (the technician reads it from `loa-agent check`)"
        )
    return rows[0]


def _token_problem(found: Any, cluster: str, now: datetime, active: Any) -> str | None:
    """Why a token cannot be used for this cluster now (None: it can)."""
    if found is None:
        return (
            "unknown enrolment token: copy the token of this cluster's provisioning "
            "bundle again, or ask for a new one (loa-controller enrol token)"
        )
    if found["cluster"] != cluster:
        return "this token was issued for another cluster; check cluster_id in the config"
    if found["revoked_at"] is not None:
        return (
            f"this token was replaced by a newer one on {_when(aware(found['revoked_at']))}; "
            "use the newest token issued for this cluster"
        )
    if found["used_at"] is not None:
        return (
            f"this token was already used on {_when(aware(found['used_at']))} (by key "
            f"{found['used_by_key']}); a token registers one key: ask for a new one"
        )
    if aware(found["expires_at"]) <= now:
        return (
            f"this token expired on {_when(aware(found['expires_at']))}; ask for a new one"
        )
    if found["purpose"] == "enrol" and active is not None:
        return (
            f"cluster {cluster} already has registered key {active['key_id']}; a new box "
            f"in its place needs a token from `loa-controller enrol replace {cluster}`"
        )
    return None


def _key(r: Any) -> ClusterKey:
    return ClusterKey(
        cluster=r["cluster"], key_id=r["key_id"], public_key=r["public_key"],
        status=r["status"], registered_at=aware(r["registered_at"]),
        registered_by=r["registered_by"],
        retired_at=aware(r["retired_at"]) if r["retired_at"] else None,
    )
