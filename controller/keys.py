"""Rotating the controller's signing key.

`loa-controller keys rotate` makes a new key pair and, with the old key, signs one
`key-rotation` command per cluster of the fleet (docs/protocol.md, "Key rotation"): trust
the new key; refuse the old one from `retire_at` on. They are kept in
`<private key>.rotation.json` (signed, public: no secret in it) beside the key, and the
new key replaces the old in the private key's file; the old private key is not kept.

The running controller goes on signing with the key it loaded. Restarted, it signs with
the new key and publishes each cluster's rotation retained on its own `key` topic
before anything else (`publish_rotation`), at every start, so a cluster that was off
through the whole overlap still moves to the new key when it comes back: a rotation
stays valid for `ROTATION_TTL`, however long ago its old key retired.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import topics
from protocol.files import PUBLIC, write_atomic
from protocol.l10n import _
from protocol.messages import Address, Command, KeyRotationBody, MessageError, parse
from protocol.mqtt import Link
from protocol.signing import (
    Signer,
    key_from_text,
    key_id,
    key_text,
    load_private_key,
    public_pem,
    write_private_key,
)

log = logging.getLogger(__name__)

ROTATION_TTL = timedelta(days=400)  # like a membership: a box may be off for a long time
MAX_OVERLAP = timedelta(days=365)
DEFAULT_OVERLAP = timedelta(days=7)


def rotation_path(private_key: Path) -> Path:
    return private_key.with_name(f"{private_key.stem}.rotation.json")


def public_key_path(private_key: Path) -> Path:
    return private_key.with_suffix(".pub")


@dataclass(frozen=True)
class Rotation:
    """A rotation made by `keys rotate`: the keys, when the old retires, and the signed
    command of every cluster (its JSON payload)."""

    old_key: Ed25519PublicKey
    new_key: Ed25519PublicKey
    issued_at: datetime
    retire_at: datetime
    commands: dict[str, bytes]

    def describe(self) -> str:
        return f"{key_id(self.old_key)} -> {key_id(self.new_key)}"


def make_rotation(
    old: Ed25519PrivateKey, new: Ed25519PublicKey, clusters: Iterable[str], now: datetime,
    overlap: timedelta,
) -> Rotation:
    """One signed key-rotation command per cluster, signed by the old key."""
    if overlap < timedelta(0) or overlap > MAX_OVERLAP:
        raise ValueError(_(
            "an overlap of {overlap} is out of range: both keys are accepted for between 0 "
            "and {days} days (e.g. --overlap 7d)", overlap=overlap, days=MAX_OVERLAP.days,
        ))
    retire_at = now + overlap
    body = KeyRotationBody(
        old_key=key_text(old.public_key()), new_key=key_text(new), retire_at=retire_at
    )
    signer = Signer(old)
    ttl = max(ROTATION_TTL, overlap + timedelta(days=30))
    commands = {
        cluster: signer.command(body, Address(clusters=[cluster]), now, ttl).to_json()
        for cluster in sorted(clusters)
    }
    return Rotation(old.public_key(), new, now, retire_at, commands)


def save_rotation(path: Path, rotation: Rotation) -> None:
    doc = {
        "old_key": key_text(rotation.old_key),
        "new_key": key_text(rotation.new_key),
        "issued_at": rotation.issued_at.isoformat(),
        "retire_at": rotation.retire_at.isoformat(),
        "commands": {c: json.loads(p) for c, p in rotation.commands.items()},
    }
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), PUBLIC)


def load_rotation(path: Path) -> Rotation | None:
    """The rotation kept at path; None if there is none. ValueError if it is damaged."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            _("{path}: cannot read the key rotation ({exc})", path=path, exc=exc)
        ) from None
    try:
        commands = {}
        for cluster, obj in doc["commands"].items():
            command = parse(Command, obj)  # the signed form, as it will be published
            if not isinstance(command.body, KeyRotationBody):
                raise ValueError(
                    _("the command for {cluster} is not a key rotation", cluster=cluster)
                )
            commands[str(cluster)] = json.dumps(obj, ensure_ascii=False).encode()
        return Rotation(
            key_from_text(doc["old_key"]), key_from_text(doc["new_key"]),
            datetime.fromisoformat(doc["issued_at"]), datetime.fromisoformat(doc["retire_at"]),
            commands,
        )
    except (KeyError, TypeError, AttributeError, ValueError, MessageError) as exc:
        raise ValueError(_(
            "{path}: the key rotation is damaged ({exc}); make a new one with "
            "`loa-controller keys rotate --force`", path=path, exc=exc,
        )) from None


def rotate(
    private_key: Path, clusters: Iterable[str], now: datetime, overlap: timedelta,
    *, force: bool = False,
) -> Rotation:
    """Replace the key in private_key by a new one, keeping the signed rotation beside it.

    Refused while an earlier rotation's overlap still runs (unless force): a cluster that
    has not yet taken the first could not verify the second, signed by a key it does not
    know yet."""
    old = load_private_key(private_key)
    kept = rotation_path(private_key)
    earlier = load_rotation(kept)
    if earlier is not None and now < earlier.retire_at and not force:
        raise ValueError(_(
            "the rotation {rotation} is under way until "
            "{until}; wait for it to end (clusters "
            "that have not taken it could not follow a second one), or --force",
            rotation=earlier.describe(), until=earlier.retire_at.isoformat(timespec="seconds"),
        ))
    new = Ed25519PrivateKey.generate()
    rotation = make_rotation(old, new.public_key(), clusters, now, overlap)
    # The new key first beside the old one, then the rotation naming it, then the swap: an
    # interruption leaves the old key in place (the controller publishes a rotation only
    # when it names the key it signs with).
    pending = private_key.with_name(f".{private_key.name}.next")
    write_private_key(pending, new)
    save_rotation(kept, rotation)
    os.replace(pending, private_key)
    write_atomic(public_key_path(private_key), public_pem(new.public_key()), PUBLIC)
    return rotation


def publish_rotation(
    link: Link, private_key: Path, signing_key: Ed25519PublicKey, clusters: Iterable[str]
) -> int:
    """Publish the kept rotation, retained, on the key topic of every cluster it has a
    command for; how many. Nothing when there is none, or when it does not move to the
    key this controller signs with (logged)."""
    try:
        rotation = load_rotation(rotation_path(private_key))
    except ValueError as exc:
        log.error("%s; the clusters are not told about a new key", exc)
        return 0
    if rotation is None:
        return 0
    if key_text(rotation.new_key) != key_text(signing_key):
        log.error(
            "the key rotation kept in %s moves to key %s, but this controller signs with %s: "
            "it is not published. Make a new one: loa-controller keys rotate --force",
            rotation_path(private_key), key_id(rotation.new_key), key_id(signing_key),
        )
        return 0
    sent = 0
    for cluster in clusters:
        payload = rotation.commands.get(cluster)
        if payload is None:
            continue  # added to the fleet after the rotation: its bundle has the new key
        link.publish(topics.cluster_topic(cluster, "key"), payload, retain=True)
        sent += 1
    log.info(
        "published the key rotation %s to %d clusters (the old key is refused from %s)",
        rotation.describe(), sent, rotation.retire_at.isoformat(timespec="seconds"),
    )
    return sent

