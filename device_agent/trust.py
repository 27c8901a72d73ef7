"""The controller keys this cluster trusts, and how a key rotation changes them.

A cluster starts trusting the one key pinned in its config (`controller_public_key`).
When the controller rotates its key (`loa-controller keys rotate`) it publishes, retained
on the cluster's own `key` topic, a `key-rotation` command signed by the old key that
names the new one and when the old is retired. Once the guard has admitted it:

- the new key is trusted from then on, and kept in the agent's database, so a restart
  (or a config that still pins the old key: /etc/loa is read-only to the agent) keeps it;
- the old key is trusted until `retire_at` on this cluster's clock, then refused;
- the retained rotation, handed over again at every reconnect, is ignored without a
  report once applied (by its id, or because the key it names is trusted already).

A key the technician pins later by hand (a new controller.pub that is neither the pinned
one nor one learned) resets the trust to that key alone: the person at the box wins.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent.localdb import StateDocument
from protocol.clock import Clock
from protocol.messages import Command, KeyRotationBody, MessageError, decode_json
from protocol.signing import key_from_text, key_id, key_text

log = logging.getLogger(__name__)

MAX_LEARNED = 16  # rotations remembered; the oldest retired ones go first


@dataclass(frozen=True)
class Learned:
    """A key a rotation named, and the rotation command that did."""

    key: str  # key_text
    rotation: str  # the command id
    since: datetime  # the rotation's issued_at


class ControllerKeys:
    """The trusted controller keys (protocol.signing.TrustedKeys), kept on disk."""

    def __init__(
        self, pinned: Ed25519PublicKey, document: StateDocument | None, clock: Clock
    ) -> None:
        self._pinned = key_text(pinned)
        self._document = document
        self._clock = clock
        self._learned: list[Learned] = []
        self._retire: dict[str, datetime] = {}  # key_text -> when it stops being trusted
        self._keys: dict[str, Ed25519PublicKey] = {self._pinned: pinned}
        saved = document.load() if document is not None else None
        if isinstance(saved, dict):
            self._restore(saved)

    def _restore(self, saved: dict[str, object]) -> None:
        try:
            raw_learned, raw_retire = saved.get("learned", []), saved.get("retire", {})
            if not isinstance(raw_learned, list) or not isinstance(raw_retire, dict):
                raise TypeError("learned must be a list and retire a mapping")
            learned = [
                Learned(str(e["key"]), str(e["rotation"]), datetime.fromisoformat(str(e["since"])))
                for e in raw_learned
            ]
            retire = {str(k): datetime.fromisoformat(str(v)) for k, v in raw_retire.items()}
            keys = {entry.key: key_from_text(entry.key) for entry in learned}
        except (KeyError, TypeError, ValueError) as exc:
            log.error(
                "%s is damaged (%s): trusting only the controller key of the config",
                self._document, exc,
            )
            return
        pinned_then = saved.get("pinned")
        if pinned_then != self._pinned and self._pinned not in keys:
            log.warning(
                "controller_public_key is now %s (was %s): a key pinned by hand replaces the "
                "keys learned from rotations (%s)",
                key_id(self._keys[self._pinned]),
                key_id(key_from_text(str(pinned_then))) if pinned_then else "unknown",
                ", ".join(key_id(k) for k in keys.values()) or "none",
            )
            self._save()
            return
        self._learned, self._retire = learned, retire
        self._keys.update(keys)

    # --- TrustedKeys ----------------------------------------------------------------------

    def trusted(self) -> Sequence[Ed25519PublicKey]:
        now = self._clock.now()
        return [
            key for text, key in self._keys.items()
            if text not in self._retire or now < self._retire[text]
        ]

    def retired(self) -> Sequence[tuple[Ed25519PublicKey, datetime]]:
        now = self._clock.now()
        return [
            (self._keys[text], at) for text, at in self._retire.items()
            if text in self._keys and now >= at
        ]

    # --- rotations ------------------------------------------------------------------------

    def already_applied(self, payload: bytes) -> str | None:
        """Why a rotation payload needs nothing doing (its id applied before, or the key
        it names trusted already), else None. Read before any signature check: it can
        only make a payload ignored, never obeyed."""
        try:
            obj = decode_json(payload)
        except MessageError:
            return None
        body = obj.get("body")
        if not isinstance(body, dict) or body.get("kind") != "key-rotation":
            return None
        if obj.get("id") in {entry.rotation for entry in self._learned}:
            return "key rotation already applied (retained copy)"
        new = body.get("new_key")
        if isinstance(new, str) and new in self._keys and new not in self._retire:
            return f"key rotation to a key this cluster trusts already ({new[:12]}...)"
        return None

    def apply(self, command: Command) -> tuple[str, str]:
        """Trust the new key of an admitted rotation and retire its old one at its time;
        saved before this returns. (old key id, new key id)."""
        body = command.body
        if not isinstance(body, KeyRotationBody):
            raise TypeError(f"command {command.id} is a {body.kind} command, not a key rotation")
        new = key_from_text(body.new_key)
        self._keys[body.new_key] = new
        self._retire.pop(body.new_key, None)
        self._retire[body.old_key] = body.retire_at
        self._learned = [e for e in self._learned if e.key != body.new_key]
        self._learned.append(Learned(body.new_key, command.id, command.issued_at))
        while len(self._learned) > MAX_LEARNED:
            gone = self._learned.pop(0)
            if gone.key in self._retire:
                self._keys.pop(gone.key, None)
                self._retire.pop(gone.key, None)
        self._save()
        return key_id(key_from_text(body.old_key)), key_id(new)

    def describe(self) -> str:
        """The keys trusted now, for a log line."""
        now = self._clock.now()
        parts = []
        for text, key in self._keys.items():
            until = self._retire.get(text)
            if until is None:
                parts.append(key_id(key))
            elif now < until:
                parts.append(f"{key_id(key)} until {until.isoformat(timespec='seconds')}")
        return ", ".join(parts)

    def _save(self) -> None:
        if self._document is None:
            return
        self._document.save({
            "pinned": self._pinned,
            "learned": [
                {"key": e.key, "rotation": e.rotation, "since": e.since.isoformat()}
                for e in self._learned
            ],
            "retire": {k: v.isoformat() for k, v in self._retire.items()},
        })
