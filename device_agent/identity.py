"""This cluster's own identity: an Ed25519 key made on the box, and what the controller
said about it.

At its first start the agent makes a key pair in its data_dir (`identity.key`, PEM
PKCS#8, mode 0600; never copied off the box: a replaced box makes a new one, registered
through `loa-controller enrol replace`). Every message it publishes is signed with it
(`protocol.signing.seal`), and the controller stores only what the key registered for
the cluster signed. To have it registered the agent sends a join request with the
one-time enrolment token of its provisioning bundle (device_agent/agent.py); the
controller's answer (registered, pending a manager's approval, refused) is kept in
`identity.json` beside the key, for the agent and for `loa-agent check`, with the
number of times the agent has started (`boot`): each signed message carries
(boot, count of messages since), so the controller tells a replayed old message from a
new one without trusting the box's clock.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import topics
from protocol.l10n import _
from protocol.messages import EnrolmentStatus, State
from protocol.mqtt import Will
from protocol.signing import Channel, key_id, key_text, seal, seal_json

log = logging.getLogger(__name__)

KEY_FILE = "identity.key"
STATUS_FILE = "identity.json"


class IdentityError(ValueError):
    """The key file cannot be read or made; the text says where and what to do."""


@dataclass(frozen=True)
class Enrolment:
    """What the controller last said about this box's key."""

    key: str
    status: EnrolmentStatus | str  # registered | pending | refused, or requested (no answer)
    at: datetime
    reason: str | None = None


#: Join requests: again after the first retry, doubling up to this; while a manager has
#: yet to approve, this often (the controller also answers at once when one does).
MAX_JOIN_RETRY = timedelta(minutes=10)


class JoinSchedule:
    """When to ask the controller to register this cluster's key: at every connection,
    again after `retry` if unanswered, doubling up to MAX_JOIN_RETRY, until the key is
    registered or refused (then never again in this run)."""

    def __init__(self, token: str | None, retry: timedelta, *, registered: bool) -> None:
        self.token = token
        self.asking = token is not None and not registered
        self._retry = retry
        self._backoff = retry
        self.next_at: datetime | None = None  # None: at once

    def connected(self) -> None:
        self.next_at = None
        self._backoff = self._retry

    def due(self, now: datetime) -> bool:
        return self.asking and (self.next_at is None or now >= self.next_at)

    def sent(self, now: datetime) -> None:
        self.next_at = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_JOIN_RETRY)

    def waiting(self, now: datetime) -> None:
        """The request waits for a manager: ask again only now and then."""
        self.next_at = now + MAX_JOIN_RETRY

    def done(self) -> None:
        """Registered or refused: no more requests."""
        self.asking = False
        self.next_at = None


class AgentIdentity:
    """The cluster's private key, and the enrolment status kept beside it."""

    def __init__(self, key: Ed25519PrivateKey, folder: Path | None = None) -> None:
        """folder: where identity.json is kept (None: the status lives in memory only).
        Each identity made counts as a start of the agent (boot, kept in identity.json)."""
        self._key = key
        self.key_id = key_id(key.public_key())
        self.public_key = key_text(key.public_key())
        self._folder = folder
        self._memory: Enrolment | None = None
        self._lock = threading.Lock()
        self._count = 0
        self.boot = 1
        if folder is not None:
            self.boot = _read_document(folder).get("boot", 0) + 1
            self._save(boot=self.boot)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> AgentIdentity:
        """The key in data_dir, made there (mode 0600) if there is none yet."""
        path = data_dir / KEY_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(read_key(path), data_dir)
        except OSError as exc:
            raise IdentityError(_(
                "{path}: cannot make this cluster's key ({why}); the agent's user must be "
                "able to write in its data_dir", path=path, why=exc.strerror,
            )) from None
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        identity = cls(key, data_dir)
        log.info("made this cluster's key %s in %s (mode 0600)", identity.key_id, path)
        return identity

    # --- signing ----------------------------------------------------------------------------

    def seal(self, channel: Channel, body: Any) -> bytes:
        """body (a JSON value) signed with this cluster's key: a payload to publish."""
        with self._lock:
            self._count += 1
            n = (self.boot, self._count)
        return seal(self._key, self.key_id, channel, body, n)

    def seal_json(self, channel: Channel, body: bytes) -> bytes:
        """seal() of a body already written as JSON."""
        with self._lock:
            self._count += 1
            n = (self.boot, self._count)
        return seal_json(self._key, self.key_id, channel, body, n)

    def will(self, cluster: str, at: datetime) -> Will:
        """The retained "offline" state the broker publishes when the connection dies,
        signed now (`at`: when the agent started)."""
        state = State(cluster=cluster, state="offline", at=at)
        payload = self.seal("state", state.model_dump(mode="json", exclude_none=True))
        return Will(topics.cluster_topic(cluster, "state"), payload, qos=1, retain=True)

    # --- what the controller said -----------------------------------------------------------

    def enrolment(self) -> Enrolment | None:
        """The last answer about this key (None: never asked, or asked for another key)."""
        found = self._memory if self._folder is None else read_status(self._folder)
        return found if found is not None and found.key == self.key_id else None

    def registered(self) -> bool:
        found = self.enrolment()
        return found is not None and found.status == "registered"

    def record(self, status: str, at: datetime, reason: str | None = None) -> None:
        """Keep the controller's answer (or "requested": a join request went out)."""
        found = Enrolment(self.key_id, status, at, reason)
        self._memory = found
        if self._folder is not None:
            self._save(enrolment={
                "key": found.key, "status": found.status, "at": found.at.isoformat(),
                "reason": found.reason,
            })

    def _save(self, **changed: Any) -> None:
        assert self._folder is not None
        path = self._folder / STATUS_FILE
        document = {**_read_document(self._folder), **changed}
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(document), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            raise IdentityError(_(
                "{path}: cannot write it ({why}); the agent's user must be able to write in "
                "its data_dir", path=path, why=exc.strerror,
            )) from None


def read_key(path: Path) -> Ed25519PrivateKey:
    """The private key at path, its mode made 0600 if others could read it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning(
                "%s could be read by other users (mode %o); made it 0600. This cluster's "
                "key must stay on this box, readable by the agent alone", path, mode,
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise IdentityError(_("{path}: cannot read this cluster's key ({why})", path=path,
                              why=exc.strerror)) from None
    except ValueError as exc:
        raise IdentityError(_(
            "{path}: not a PEM private key ({why}); if it is damaged, move it away: the "
            "agent makes a new key, which must then be registered again "
            "(loa-controller enrol replace CLUSTER gives the token)", path=path, why=exc,
        )) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(_("{path}: not an Ed25519 key; move it away and start the agent",
                              path=path))
    return key


def _read_document(folder: Path) -> dict[str, Any]:
    """identity.json as it is ({} if missing or damaged)."""
    path = folder / STATUS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s is damaged (%s); starting it again", path, exc)
        return {}
    if not isinstance(raw, dict) or not isinstance(raw.get("boot", 0), int):
        log.warning("%s is damaged (not what the agent writes); starting it again", path)
        return {}
    return raw


def read_status(folder: Path) -> Enrolment | None:
    """The controller's last answer kept in folder's identity.json, if any."""
    raw = _read_document(folder).get("enrolment")
    if raw is None:
        return None
    try:
        return Enrolment(
            key=str(raw["key"]), status=str(raw["status"]),
            at=datetime.fromisoformat(str(raw["at"])),
            reason=str(raw["reason"]) if raw.get("reason") is not None else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is damaged (%s); the agent asks to join again", folder / STATUS_FILE, exc)
        return None
