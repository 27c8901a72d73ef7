"""Ed25519 signatures over canonical JSON: only the controller's commands make a speaker
speak, and only what a cluster's own key signed counts as its word.

A command is signed over its canonical form: the JSON object without its `sig` key,
keys sorted, no insignificant white space, UTF-8. The signature travels in `sig` as
base64. Agents verify against the controller's public key pinned in their config, so a
client that can publish on the broker but lacks the private key cannot forge a command.

The other way, every message an agent publishes (events, state, heartbeat, chunk
requests, its join request) travels in a signed envelope (`seal`, `unseal`):
`{"v": 1, "ch": <channel>, "key": <key id>, "n": [<boot>, <count>], "body": <the
message>, "sig": <base64>}`, signed over the canonical form of the envelope without
`sig`, with the key the agent made on its box (device_agent/identity.py). The controller
checks it against the key registered for that cluster (controller/identities.py). A key
id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key. The payload
is that canonical form with `,"sig":"<base64>"` put before its closing brace, so the
controller checks the signature over the payload's own bytes and reads the message from
them, without writing the JSON again. `n` orders what one key signed: `boot` counts the
agent's starts, `count` its messages since, so an old message sent again (a replay) is
told from a new one without trusting clocks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.files import PRIVATE, PUBLIC, write_atomic
from protocol.l10n import Text
from protocol.messages import (
    MAX_ACK_SEQS,
    Address,
    Command,
    CommandBody,
    MessageError,
    decode_json,
    load_json,
    parse,
)


class SignatureError(ValueError):
    """A command (or an agent's envelope) whose signature is missing or does not verify."""


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


#: Command ids: 64 random bits drawn when the process starts, then a count. Unique (an
#: agent drops a command whose id it has obeyed), and cheaper than a uuid4 per command
#: (the intake signs an ack per cluster every second of a storm): an id needs to be
#: unique, not secret, since the signature is what makes a command the controller's.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNT = itertools.count(1)


def _new_id_prefix() -> None:
    """A forked child draws its own prefix: it must not repeat its parent's ids."""
    global _ID_PREFIX, _ID_COUNT
    _ID_PREFIX, _ID_COUNT = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def new_command_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNT):016x}"


class Signer:
    """Signs commands with the controller's private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign_raw(self, data: bytes) -> bytes:
        """The Ed25519 signature of bytes (a live frame: protocol/live.py)."""
        return self._key.sign(data)

    def command(
        self,
        body: CommandBody,
        to: Address,
        now: datetime,
        ttl: timedelta,
        command_id: str | None = None,
    ) -> Command:
        """Build and sign a command; its payload is `command.to_json()`."""
        unsigned = Command(
            id=command_id or new_command_id(),
            issued_at=now,
            expires_at=now + ttl,
            to=to,
            body=body,
        )
        obj = unsigned.model_dump(mode="json", exclude_none=True)
        sig = base64.b64encode(self._key.sign(canonical(obj))).decode()
        return unsigned.model_copy(update={"sig": sig})


    def ack_payload(
        self, cluster: str, outbox: str, seqs: Sequence[int], now: datetime, ttl: timedelta
    ) -> bytes:
        """A signed ack command (AckBody) to one cluster, as bytes to publish: the same
        command `command()` makes, written without building and dumping the models (the
        intake signs one per cluster every second of a storm; the models cost four
        times the signature). The agent reads it as any command: signature over the
        canonical form, then the models' checks."""
        if not 1 <= len(seqs) <= MAX_ACK_SEQS:
            raise ValueError(f"an ack names 1 to {MAX_ACK_SEQS} events, not {len(seqs)}")
        obj = {
            "v": 1, "id": new_command_id(),
            "issued_at": now.isoformat(), "expires_at": (now + ttl).isoformat(),
            "to": {"clusters": [cluster]},
            "body": {"kind": "ack", "outbox": outbox, "seqs": list(seqs)},
        }
        signed = canonical(obj)
        sig = base64.b64encode(self._key.sign(signed))
        return signed[:-1] + b',"sig":"' + sig + b'"}'


class TrustedKeys(Protocol):
    """The controller keys a cluster trusts now, and those it has retired (with when)."""

    def trusted(self) -> Sequence[Ed25519PublicKey]: ...

    def retired(self) -> Sequence[tuple[Ed25519PublicKey, datetime]]: ...


class Verifier:
    """Checks commands against the controller key a cluster trusts: the one pinned in its
    config, or the keys a rotation moved it to (device_agent/trust.py)."""

    def __init__(self, keys: Ed25519PublicKey | TrustedKeys) -> None:
        self._keys = keys

    @property
    def pinned(self) -> Ed25519PublicKey | None:
        """The one key this verifier was made with, if it was made with one key."""
        return self._keys if isinstance(self._keys, Ed25519PublicKey) else None

    def keys(self) -> Sequence[Ed25519PublicKey]:
        """The controller keys trusted now (what a live frame must be signed with)."""
        if isinstance(self._keys, Ed25519PublicKey):
            return [self._keys]
        return self._keys.trusted()

    def verify(self, payload: bytes) -> Command:
        """Return the command if its signature verifies; raise SignatureError or MessageError."""
        return self.verify_signed(payload)[0]

    def verify_signed(self, payload: bytes) -> tuple[Command, Ed25519PublicKey]:
        """The command and the trusted key that signed it; raise SignatureError (with the
        retirement, when a retired key signed it) or MessageError."""
        obj = decode_json(payload)
        sig = obj.pop("sig", None)
        if sig is None:
            raise SignatureError("unsigned command (no 'sig')")
        if not isinstance(sig, str):
            raise SignatureError("'sig' is not a base64 string")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("'sig' is not valid base64") from None
        try:
            signed = canonical(obj)
        except (ValueError, TypeError) as exc:  # canonical() on exotic values
            raise MessageError(f"cannot check signature: {exc}") from None
        keys = [self._keys] if isinstance(self._keys, Ed25519PublicKey) else self._keys.trusted()
        signer = _signer(raw, signed, keys)
        if signer is None:
            retired = [] if isinstance(self._keys, Ed25519PublicKey) else self._keys.retired()
            for key, since in retired:
                if _signer(raw, signed, [key]) is not None:
                    raise SignatureError(
                        f"signed with controller key {key_id(key)}, retired at "
                        f"{since.isoformat(timespec='seconds')} by a key rotation: the "
                        "controller still signs with its old key (restart it after "
                        "`loa-controller keys rotate`)"
                    )
            raise SignatureError(
                "bad signature: not signed by the controller key this cluster trusts"
            )
        obj["sig"] = sig
        return parse(Command, obj), signer


def _signer(
    sig: bytes, signed: bytes, keys: Sequence[Ed25519PublicKey]
) -> Ed25519PublicKey | None:
    for key in keys:
        try:
            key.verify(sig, signed)
        except InvalidSignature:
            continue
        return key
    return None


def key_text(key: Ed25519PublicKey) -> str:
    """A public key as it travels in a key rotation: the base64 of its 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_from_text(text: str) -> Ed25519PublicKey:
    """The public key of key_text(); ValueError if it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{text!r} is not an Ed25519 public key (32 bytes)")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key in logs and CLI output: 16 hex digits of the
    SHA-256 of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- what agents sign: the envelope ---------------------------------------------------------

#: The channels an agent signs for (protocol.topics: what it publishes).
Channel = Literal["event", "state", "heartbeat", "request", "enrol"]
CHANNELS: tuple[Channel, ...] = ("event", "state", "heartbeat", "request", "enrol")
KEY_ID_LENGTH = 16
#: The largest boot or message count in `n` (what JSON numbers hold exactly).
MAX_COUNT = 2**53 - 1


def seal(
    key: Ed25519PrivateKey, key_ident: str, channel: Channel, body: Any, n: tuple[int, int]
) -> bytes:
    """The payload of a message an agent publishes: body (a JSON value) in a signed
    envelope, n = (boot, count) its place among what this key signed. The envelope without
    `sig` is written in canonical form, so the signed bytes are the payload up to `sig`."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return seal_json(key, key_ident, channel, text.encode(), n)


def seal_json(
    key: Ed25519PrivateKey, key_ident: str, channel: Channel, body: bytes, n: tuple[int, int]
) -> bytes:
    """seal() of a body already written as JSON (canonical, for the controller to write
    it the same way if it ever had to): the envelope's keys come in sorted order."""
    signed = (
        b'{"body":' + body + b',"ch":"' + channel.encode() + b'","key":"'
        + key_ident.encode() + b'","n":[' + str(n[0]).encode() + b"," + str(n[1]).encode()
        + b'],"v":1}'
    )
    sig = base64.b64encode(key.sign(signed))
    return signed[:-1] + b',"sig":"' + sig + b'"}'


@dataclass(frozen=True)
class Sealed:
    """A signed envelope read off the network, not yet checked against any key."""

    channel: str
    key: str  # the key id the sender claims to have signed with
    n: tuple[int, int]  # (boot, count): later messages of a key have a larger n
    body: Any
    signed: bytes  # the canonical form the signature covers
    sig: bytes

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise SignatureError unless key made this signature."""
        try:
            key.verify(self.sig, self.signed)
        except InvalidSignature:
            raise SignatureError(f"bad signature: not made by key {self.key}") from None


#: How a signed payload ends: `,"sig":"` + 88 base64 characters + `"}`.
_SIG_HEAD = b',"sig":"'
_TAIL = len(_SIG_HEAD) + 88 + 2


@dataclass(frozen=True)
class Unsigned:
    """A payload with no signature at all (as agents before signing sent): its JSON value."""

    body: Any


def unseal(payload: bytes) -> Sealed | Unsigned:
    """The signed envelope of a payload (not yet checked against any key), or the payload
    as Unsigned when it carries no signature. MessageError if it is not JSON, or claims a
    signature (`sig`) but is not an envelope as `seal` writes it.

    The signature covers the payload up to `,"sig"` (closed with `}`), and the message is
    read from those very bytes: nothing outside what the key signed is ever taken."""
    if len(payload) > _TAIL and payload[-_TAIL:-_TAIL + len(_SIG_HEAD)] == _SIG_HEAD:
        if not payload.endswith(b'"}'):
            raise MessageError("a signed message ends with its signature: ,\"sig\":\"...\"}")
        try:
            raw = base64.b64decode(payload[-90:-2], validate=True)
        except (binascii.Error, ValueError):
            raise MessageError("'sig' is not valid base64") from None
        signed = payload[:-_TAIL] + b"}"
        return _envelope(load_json(signed), signed, raw)
    obj = load_json(payload)
    if isinstance(obj, dict) and "sig" in obj:
        raise MessageError(
            "a signed message is written as `seal` writes it: the canonical envelope, "
            "then ,\"sig\":\"<88 base64 characters>\"}"
        )
    return Unsigned(obj)


def _envelope(obj: Any, signed: bytes, sig: bytes) -> Sealed:
    if not isinstance(obj, dict) or set(obj) != {"v", "ch", "key", "n", "body"} or obj["v"] != 1:
        got = ", ".join(sorted(str(k)[:20] for k in obj)[:8]) if isinstance(obj, dict) else "?"
        raise MessageError(
            f"a signed message has exactly v (1), ch, key, n, body and sig; got {got}"
        )
    n = obj["n"]
    if (
        not isinstance(n, list) or len(n) != 2
        or not all(type(x) is int and 0 <= x <= MAX_COUNT for x in n)
    ):
        raise MessageError("'n' must be [boot, count], two whole numbers from 0")
    channel, ident = obj["ch"], obj["key"]
    if channel not in CHANNELS:
        raise MessageError(f"unknown channel {str(channel)[:20]!r} in a signed message")
    if not isinstance(ident, str) or len(ident) != KEY_ID_LENGTH or not _is_hex(ident):
        raise MessageError(f"'key' must be {KEY_ID_LENGTH} lowercase hex digits")
    return Sealed(
        channel=channel, key=ident, n=(n[0], n[1]), body=obj["body"], signed=signed, sig=sig
    )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# --- key files ----------------------------------------------------------------------------


def generate_keypair(
    private_path: Path, public_path: Path, overwrite: bool = False
) -> Ed25519PrivateKey:
    """Write a new Ed25519 key pair: private key PEM (mode 0600, whatever the file it
    replaces had), public key PEM (0644). Returns the new private key."""
    for path in (private_path, public_path):
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise FileExistsError(f"{path} exists; refusing to overwrite a key (use --force)")
    key = Ed25519PrivateKey.generate()
    write_private_key(private_path, key)
    write_atomic(public_path, public_pem(key.public_key()), PUBLIC)
    return key


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """The private key as PEM PKCS#8 in a new file of mode 0600, renamed over path."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, PRIVATE)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ValueError(Text(
            "{path}: controller private key not found; create it with `loa-controller keygen`",
            path=path,
        )) from None
    except ValueError as exc:
        raise ValueError(Text("{path}: not a PEM private key ({why})", path=path,
                              why=exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(Text(
            "{path}: not an Ed25519 key; create one with `loa-controller keygen`", path=path
        ))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(Text(
            "{path}: controller public key not found; copy controller.pub from the controller",
            path=path,
        )) from None
    except ValueError as exc:
        raise ValueError(Text("{path}: not a PEM public key ({why})", path=path,
                              why=exc)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(Text("{path}: not an Ed25519 public key", path=path))
    return key
