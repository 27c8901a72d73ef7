"""Versioned message models: the payload of every topic in protocol/topics.py.

Every payload is a JSON object with `v` (protocol version) and, where a reply or an
effect can be traced back, a correlation id: commands carry `id`, events echo it as
`ref`. Unknown keys are refused (a typo on the wire is a bug, not a default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from protocol.topics import ID_PATTERN

VERSION: Literal[1] = 1

Level = Literal["normal", "priority", "emergency"]
LEVELS: tuple[Level, ...] = ("normal", "priority", "emergency")
LEVEL_RANK: dict[str, int] = {level: rank for rank, level in enumerate(LEVELS)}

ClusterId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

# --- bounds on what the network may say ----------------------------------------------------
# Whatever an agent reports is stored, compared and shown: every number and time in it is
# bounded before anything else looks at it (docs/protocol.md, "Bounds").

#: Largest payload parsed as JSON (a chunk request of 100,000 indexes is about 700 KB).
MAX_JSON_BYTES = 1024 * 1024
#: Longest integer a JSON payload may carry, in digits: 2**63 has 19. Longer ones are
#: not turned into an int (which takes quadratic time, and fails beyond 4,300 digits
#: with an error of its own): they read as TOO_LONG, which no integer field allows.
MAX_NUMBER_DIGITS = 20
TOO_LONG: int = 10**MAX_NUMBER_DIGITS
#: Largest event sequence number (the store's column is a 32-bit integer everywhere).
MAX_SEQ = 2**31 - 1
#: Agents' times are taken between these (UTC); anything else is a broken clock or a
#: forgery, and 9999-12-31 at offset -23:59 is not even a time in UTC.
EARLIEST_TIME = datetime(2020, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)


def _sane_time(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from None
    if not EARLIEST_TIME <= utc < LATEST_TIME:
        raise ValueError(
            f"{value.isoformat()} is not between {EARLIEST_TIME:%Y-%m-%d} and "
            f"{LATEST_TIME:%Y-%m-%d} (UTC)"
        )
    return value


#: A time an agent reports: with an offset, and between EARLIEST_TIME and LATEST_TIME.
SaneTime = Annotated[AwareDatetime, AfterValidator(_sane_time)]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class MessageError(ValueError):
    """A payload that is not a valid message; the text says what and where."""


# --- commands (controller -> agents), always signed -------------------------------------


class ContentRef(WireModel):
    """One piece of audio, addressed by its SHA-256; the manifest of its chunks."""

    sha256: Sha256Hex
    size: int = Field(gt=0, le=2**40)
    duration_s: float = Field(gt=0, le=1e7)
    chunk_size: int = Field(gt=0, le=2**20)
    chunks: int = Field(gt=0, le=2**32)
    codec: Literal["opus"] = "opus"


class PlayBody(WireModel):
    """Play these items in order, starting at start_at, unless later than latest_start."""

    kind: Literal["play"] = "play"
    play_id: Annotated[str, Field(min_length=1, max_length=128)]
    bulletin: Annotated[str, Field(min_length=1, max_length=200)]
    programme: str | None = None
    level: Level = "normal"
    start_at: AwareDatetime
    latest_start: AwareDatetime
    items: Annotated[list[ContentRef], Field(min_length=1, max_length=64)]
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    urgent: bool = False
    # Interrupted by a higher level: play it again from the start once the output is free.
    replay_if_interrupted: bool = False


class StopBody(WireModel):
    """Stop a play or a live session now (play_id: the play's id, or the session's), or
    everything that is playing (no play_id)."""

    kind: Literal["stop"] = "stop"
    play_id: str | None = None


SessionId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
LiveSource = Literal["rebroadcast", "microphone"]
#: Bounds of a live session's playout delay (ms) and of its length.
MIN_LIVE_DELAY_MS = 100
MAX_LIVE_DELAY_MS = 30_000
MAX_LIVE_HOURS = 24


class LiveBody(WireModel):
    """A live session starts (or goes on: sent again to clusters that come online while
    it airs). Its audio comes in signed frames on the `live` topics (protocol/live.py):
    slot s, captured at origin + s x 20 ms, plays at that time plus delay_ms on every
    cluster. It ends with the frame flagged last, a stop command naming the session,
    idle_end_s without a frame past the slots received, or at ends_by at the latest."""

    kind: Literal["live"] = "live"
    session_id: SessionId
    source: LiveSource
    bulletin: Annotated[str, Field(min_length=1, max_length=200)]
    programme: Annotated[str, Field(max_length=200)] | None = None
    level: Level = "normal"
    origin: AwareDatetime
    delay_ms: int = Field(ge=MIN_LIVE_DELAY_MS, le=MAX_LIVE_DELAY_MS)
    ends_by: AwareDatetime
    idle_end_s: float = Field(default=10.0, ge=1, le=600)
    pre_skip: int = Field(default=312, ge=0, le=48_000)
    volume: Annotated[int, Field(ge=0, le=100)] | None = None


class MembershipBody(WireModel):
    """The groups (tree nodes) a cluster belongs to, so it subscribes to their topics.

    `version` grows whenever the controller changes what it says (milliseconds since
    1970 when the controller took in the fleet revision that gave this membership): an
    agent keeps the membership of the highest version it has verified, and the latest
    issued of that version. Left out by controllers older than the field (version 0)."""

    kind: Literal["membership"] = "membership"
    cluster: ClusterId
    commune: str | None = None
    groups: Annotated[list[ClusterId], Field(max_length=32)]
    version: int | None = Field(default=None, ge=0, le=2**63 - 1)


# An Ed25519 public key on the wire: the base64 of its 32 raw bytes.
PublicKeyText = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]


class KeyRotationBody(WireModel):
    """The controller's signing key changes: trust new_key; old_key, the key that signs
    this command, is refused from retire_at on (both are accepted until then)."""

    kind: Literal["key-rotation"] = "key-rotation"
    old_key: PublicKeyText
    new_key: PublicKeyText
    retire_at: AwareDatetime


#: The most events one ack names.
MAX_ACK_SEQS = 10_000


class AckBody(WireModel):
    """The controller has stored these events of one outbox; the agent may forget them."""

    kind: Literal["ack"] = "ack"
    outbox: Annotated[str, Field(min_length=1, max_length=64)]
    seqs: Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_SEQ)]],
        Field(min_length=1, max_length=MAX_ACK_SEQS),
    ]


KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
EnrolmentStatus = Literal["registered", "pending", "refused"]


class EnrolmentBody(WireModel):
    """The controller's answer to a cluster's join request (docs/protocol.md, Enrolment):
    its key `key` is registered (its signed messages are stored from now on), waits for a
    manager's approval, or is refused (`reason` says why and what to do)."""

    kind: Literal["enrolment"] = "enrolment"
    cluster: ClusterId
    key: KeyId
    status: EnrolmentStatus
    reason: Annotated[str, Field(max_length=500)] | None = None


CommandBody = Annotated[
    PlayBody | StopBody | MembershipBody | AckBody | KeyRotationBody | EnrolmentBody
    | LiveBody,
    Field(discriminator="kind"),
]


class Address(WireModel):
    """Who a command is for: listed clusters and/or every cluster of listed groups."""

    clusters: list[ClusterId] = []
    groups: list[ClusterId] = []


class Command(WireModel):
    v: Literal[1] = VERSION
    id: Annotated[str, Field(min_length=8, max_length=64)]
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    to: Address
    body: CommandBody
    sig: str | None = None


# --- agent -> controller ------------------------------------------------------------------

EventKind = Literal[
    "received",  # a play command was accepted and scheduled
    "delivered",  # all audio of a play is held and verified
    "playing",
    "finished",
    "interrupted",  # preempted by a higher level, or stopped
    "missed",  # could not start before latest_start
    "failed",  # could not play (reason says why)
    "rejected",  # a command was refused (bad signature, expired, replayed, misaddressed)
    "expired",  # a play command came after its expires_at: nothing was played
    "gap",  # a live session aired silence for `seconds` (reason says why)
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


class Event(WireModel):
    """One state change on one cluster. (outbox, seq) is unique; duplicates are dropped."""

    v: Literal[1] = VERSION
    cluster: ClusterId
    outbox: Annotated[str, Field(min_length=1, max_length=64)]
    seq: int = Field(ge=1, le=MAX_SEQ)
    at: SaneTime
    kind: EventKind
    # the id of the command this event answers
    ref: Annotated[str, Field(max_length=64)] | None = None
    play_id: Annotated[str, Field(max_length=128)] | None = None
    bulletin: Annotated[str, Field(max_length=200)] | None = None
    level: Level | None = None
    reason: Annotated[str, Field(max_length=500)] | None = None
    # Live sessions: seconds of silence (gap), or of audio aired (finished, interrupted).
    seconds: float | None = Field(default=None, ge=0, le=1e7)


class State(WireModel):
    """Retained availability; the offline form is the agent's Last Will."""

    v: Literal[1] = VERSION
    cluster: ClusterId
    state: Literal["online", "offline"]
    at: SaneTime | None = None
    version: Annotated[str, Field(max_length=64)] | None = None


class NowPlaying(WireModel):
    """The play on the output when a heartbeat was sent."""

    play_id: Annotated[str, Field(max_length=128)]
    bulletin: Annotated[str, Field(max_length=200)]
    level: Level
    started_at: SaneTime | None = None
    # A live session on the output: what it carries (play_id is then the session's id).
    live: LiveSource | None = None


class Transfer(WireModel):
    """A download under way when a heartbeat was sent: chunks held of how many."""

    sha256: Sha256Hex
    held: int = Field(ge=0, le=2**32)
    chunks: int = Field(gt=0, le=2**32)


class Heartbeat(WireModel):
    """The agent's health, every `heartbeat_s` (QoS 0, not retained; the latest one counts).

    Fields the box cannot measure are left out (null): cpu_temp_c without a thermal
    sensor, clock_offset_s before any fresh command arrived.
    """

    v: Literal[1] = VERSION
    cluster: ClusterId
    at: SaneTime
    version: Annotated[str, Field(max_length=64)] | None = None
    uptime_s: float = Field(ge=0, le=1e10)  # since the agent started
    system_uptime_s: float | None = Field(default=None, ge=0, le=1e10)  # since the box booted
    disk_free_bytes: Count | None = None  # on the data_dir's file system
    cache_bytes: Count | None = None  # audio held in the content cache
    cpu_temp_c: float | None = Field(default=None, ge=-100, le=200)
    relay: Annotated[str, Field(max_length=1000)] | None = None  # on, off, none, fault: ...
    volume: Annotated[int, Field(ge=0, le=100)] | None = None  # of the current play, or default
    # Agent clock minus controller clock (s), from signed commands; see docs/protocol.md.
    clock_offset_s: float | None = Field(default=None, ge=-1e10, le=1e10)
    playing: NowPlaying | None = None
    queued: Count = 0  # plays scheduled and not yet started
    outbox_pending: Count = 0  # events not yet acknowledged
    # Downloads under way (left out when there are none); see docs/protocol.md.
    transfers: Annotated[list[Transfer], Field(max_length=64)] | None = None
    # The agent's MQTT keepalive (s); it heartbeats at least this often, and the controller
    # marks it offline after 1.5 × this without a message. Left out by older agents.
    keepalive_s: int | None = Field(default=None, ge=1, le=3600)


class ChunkRequest(WireModel):
    """An agent holds a manifest but lacks these chunks; the controller resends them."""

    v: Literal[1] = VERSION
    cluster: ClusterId
    sha256: Sha256Hex
    missing: Annotated[
        list[Annotated[int, Field(ge=0, lt=2**32)]], Field(min_length=1, max_length=100_000)
    ]


class JoinRequest(WireModel):
    """A cluster asks to have its key registered, with the one-time enrolment token its
    provisioning bundle brought. Sent signed with that very key (the envelope's `key` is
    the key id of `public_key`), so the controller knows the sender holds it."""

    v: Literal[1] = VERSION
    cluster: ClusterId
    public_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]  # raw Ed25519, base64
    token: Annotated[str, Field(min_length=16, max_length=128)]
    at: AwareDatetime
    version: Annotated[str, Field(max_length=64)] | None = None


M = TypeVar("M", bound=WireModel)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "(payload)"
        parts.append(f"{where}: {e['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _bounded_int(text: str) -> int:
    """A JSON integer; one longer than MAX_NUMBER_DIGITS is not converted (int() of a long
    string takes quadratic time) but read as ±10**MAX_NUMBER_DIGITS, beyond the bounds
    of every integer field: the field is refused, not the whole message."""
    digits = len(text) - (text[0] == "-")
    if digits > MAX_NUMBER_DIGITS:
        return -TOO_LONG if text[0] == "-" else TOO_LONG
    return int(text)


#: One decoder for every payload (json.loads with a hook makes one per call).
_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def _load_json(payload: bytes) -> Any:
    """Parse a payload as JSON, or raise MessageError saying why not. Sizes and numbers
    are bounded first (MAX_JSON_BYTES, MAX_NUMBER_DIGITS)."""
    if len(payload) > MAX_JSON_BYTES:
        raise MessageError(f"{len(payload)} bytes; at most {MAX_JSON_BYTES} are read as JSON")
    try:
        text = payload.decode(json.detect_encoding(payload), "surrogatepass")
        return _DECODER.decode(text)  # what json.loads does, without a decoder per call
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("not JSON: nested too deeply") from None
    except ValueError as exc:  # int() and float() of what the scanner took for a number
        raise MessageError(f"not JSON: {exc}") from None


def load_json(payload: bytes) -> Any:
    """Parse a payload as any JSON value, or raise MessageError saying why not."""
    return _load_json(payload)


def decode_json(payload: bytes) -> dict[str, Any]:
    """Parse a payload as a JSON object, or raise MessageError saying why not."""
    obj = _load_json(payload)
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse(model: type[M], payload: bytes | dict[str, Any]) -> M:
    """Validate a payload as model, or raise MessageError naming the bad fields."""
    obj = decode_json(payload) if isinstance(payload, bytes) else payload
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise MessageError(f"invalid {model.__name__}: {_describe(exc)}") from None


#: Most events one message on an event topic may carry.
MAX_EVENTS_PER_MESSAGE = 100


def encode_events(events: Sequence[Event]) -> bytes:
    """The payload of an event message: one event as its JSON object; several (committed
    together, or sent again together) as a JSON array of them, in seq order."""
    if not 1 <= len(events) <= MAX_EVENTS_PER_MESSAGE:
        raise ValueError(f"an event message carries 1 to {MAX_EVENTS_PER_MESSAGE} events")
    if len(events) == 1:
        return events[0].to_json()
    return b"[" + b",".join(event.to_json() for event in events) + b"]"


def events_body(events: Sequence[Event]) -> dict[str, Any] | list[dict[str, Any]]:
    """What encode_events() writes, as JSON values: the body of a signed event message."""
    if not 1 <= len(events) <= MAX_EVENTS_PER_MESSAGE:
        raise ValueError(f"an event message carries 1 to {MAX_EVENTS_PER_MESSAGE} events")
    if len(events) == 1:
        return events[0].model_dump(mode="json", exclude_none=True)
    return [event.model_dump(mode="json", exclude_none=True) for event in events]


def parse_events(payload: bytes | Any) -> tuple[list[Event], list[str]]:
    """An event message (its bytes, or its JSON value: the body of a signed one): the
    valid events, and what was wrong with each invalid one ("event 2: ..."). Raises
    MessageError if it is neither an Event object nor an array of 1 to
    MAX_EVENTS_PER_MESSAGE objects."""
    obj = _load_json(bytes(payload)) if isinstance(payload, bytes | bytearray) else payload
    if isinstance(obj, dict):
        return [parse(Event, obj)], []
    if not isinstance(obj, list):
        raise MessageError(
            f"expected an event object or an array of them, got {type(obj).__name__}"
        )
    if not 1 <= len(obj) <= MAX_EVENTS_PER_MESSAGE:
        raise MessageError(
            f"an array of {len(obj)} events; 1 to {MAX_EVENTS_PER_MESSAGE} are allowed"
        )
    events: list[Event] = []
    problems: list[str] = []
    for index, item in enumerate(obj):
        if not isinstance(item, dict):
            problems.append(f"event {index}: expected a JSON object, got {type(item).__name__}")
            continue
        try:
            events.append(parse(Event, item))
        except MessageError as exc:
            problems.append(f"event {index}: {exc}")
    return events, problems


def utc_iso(when: datetime) -> str:
    return when.isoformat()
