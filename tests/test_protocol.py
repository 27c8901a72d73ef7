"""The wire contract: signing, content chunks, topics and message models."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import chunks, topics
from protocol.messages import (
    LEVEL_RANK,
    LEVELS,
    MAX_EVENTS_PER_MESSAGE,
    AckBody,
    Address,
    Command,
    ContentRef,
    Event,
    MessageError,
    PlayBody,
    StopBody,
    encode_events,
    parse,
    parse_events,
)
from protocol.signing import SignatureError, Signer, Verifier, canonical

NOW = datetime(2025, 7, 1, 8, 0, tzinfo=timezone(timedelta(hours=7)))
SHA = "ab" * 32


def play_body(**changes: Any) -> PlayBody:
    fields: dict[str, Any] = {
        "play_id": "play-0001",
        "bulletin": "Bản tin thời tiết sáng",  # Vietnamese text must survive signing
        "programme": "Chương trình buổi sáng",
        "level": "priority",
        "start_at": NOW + timedelta(seconds=30),
        "latest_start": NOW + timedelta(minutes=5),
        "items": [
            ContentRef(sha256=SHA, size=120_000, duration_s=30.5, chunk_size=65_536, chunks=2)
        ],
        "volume": 80,
    }
    fields.update(changes)
    return PlayBody(**fields)


# --- signing -----------------------------------------------------------------------------


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def verifier(signer: Signer) -> Verifier:
    return Verifier(signer.public_key)


def signed_play(signer: Signer) -> Command:
    return signer.command(
        play_body(),
        Address(clusters=["phung-hiep-001"], groups=["xa-hiep-hung"]),
        now=NOW,
        ttl=timedelta(minutes=10),
    )


def test_a_signed_command_round_trips_through_its_json_payload(
    signer: Signer, verifier: Verifier
) -> None:
    command = signed_play(signer)
    assert command.sig is not None
    received = verifier.verify(command.to_json())
    assert received == command
    assert isinstance(received.body, PlayBody)
    assert received.body.bulletin == "Bản tin thời tiết sáng"
    assert received.expires_at - received.issued_at == timedelta(minutes=10)


def test_verification_ignores_key_order_and_white_space(
    signer: Signer, verifier: Verifier
) -> None:
    obj = json.loads(signed_play(signer).to_json())
    reordered = dict(reversed(list(obj.items())))
    payload = json.dumps(reordered, indent=2, ensure_ascii=True).encode()
    assert verifier.verify(payload).id == obj["id"]


def test_stop_command_verifies(signer: Signer, verifier: Verifier) -> None:
    command = signer.command(StopBody(), Address(groups=["xa-a"]), NOW, timedelta(seconds=60))
    assert isinstance(verifier.verify(command.to_json()).body, StopBody)


def test_an_unsigned_command_is_refused(signer: Signer, verifier: Verifier) -> None:
    unsigned = signed_play(signer).model_copy(update={"sig": None})
    assert b'"sig"' not in unsigned.to_json()
    with pytest.raises(SignatureError, match="unsigned"):
        verifier.verify(unsigned.to_json())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("body", "level"), "emergency"),
        (("body", "volume"), 100),
        (("body", "start_at"), "2025-07-01T09:00:00+07:00"),
        (("to", "groups"), ["every-cluster"]),
        (("expires_at"), "2099-01-01T00:00:00+00:00"),
    ],
)
def test_a_tampered_command_is_refused(
    signer: Signer, verifier: Verifier, path: tuple[str, ...] | str, value: object
) -> None:
    obj = json.loads(signed_play(signer).to_json())
    keys = (path,) if isinstance(path, str) else path
    target = obj
    for key in keys[:-1]:
        target = target[key]
    assert target[keys[-1]] != value
    target[keys[-1]] = value
    with pytest.raises(SignatureError, match="bad signature"):
        verifier.verify(json.dumps(obj).encode())


def test_a_tampered_signature_is_refused(signer: Signer, verifier: Verifier) -> None:
    obj = json.loads(signed_play(signer).to_json())
    raw = bytearray(base64.b64decode(obj["sig"]))
    raw[0] ^= 0x01
    obj["sig"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureError):
        verifier.verify(json.dumps(obj).encode())


def test_a_command_signed_by_another_key_is_refused(signer: Signer) -> None:
    stranger = Signer(Ed25519PrivateKey.generate())
    forged = signed_play(stranger)
    with pytest.raises(SignatureError, match="bad signature"):
        Verifier(signer.public_key).verify(forged.to_json())


@pytest.mark.parametrize("sig", ["not base64 at all!", "QUJD=extra", "", 12345, ["abc"]])
def test_a_signature_that_is_not_base64_is_refused(
    signer: Signer, verifier: Verifier, sig: object
) -> None:
    obj = json.loads(signed_play(signer).to_json())
    obj["sig"] = sig
    with pytest.raises(SignatureError):
        verifier.verify(json.dumps(obj).encode())


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"{not json",
        b"[]",
        b'["sig"]',
        b'"a string"',
        b"42",
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=[
        "empty",
        "binary",
        "broken-json",
        "array",
        "array-with-sig",
        "string",
        "number",
        "null",
        "nested-array",
        "nested-in-object",
    ],
)
def test_a_payload_that_is_not_a_json_object_is_refused(
    verifier: Verifier, payload: bytes
) -> None:
    with pytest.raises(MessageError):
        verifier.verify(payload)


def test_a_validly_signed_object_that_is_not_a_command_is_refused(
    signer: Signer, verifier: Verifier
) -> None:
    # Whoever holds the key could still sign nonsense; the model refuses it.
    key = Ed25519PrivateKey.generate()
    obj: dict[str, Any] = {"kind": "play", "to": "everyone"}
    obj["sig"] = base64.b64encode(key.sign(canonical(obj))).decode()
    with pytest.raises(MessageError, match="invalid Command"):
        Verifier(key.public_key()).verify(json.dumps(obj).encode())


# --- chunks ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, 65_536, 65_537, 200_000])
def test_split_then_decode_gives_back_the_content(size: int) -> None:
    content = os.urandom(size)
    frames = list(chunks.split(content, chunk_size=65_536))
    assert len(frames) == chunks.chunk_count(size, 65_536)
    decoded = [chunks.decode(frame) for frame in frames]
    assert [c.index for c in decoded] == list(range(len(frames)))
    assert {c.count for c in decoded} == {len(frames)}
    assert {c.sha256 for c in decoded} == {chunks.sha256_hex(content)}
    whole = b"".join(c.data for c in sorted(decoded, key=lambda c: c.index))
    assert whole == content
    assert chunks.sha256_hex(whole) == decoded[0].sha256
    assert all(len(f) <= chunks.HEADER_SIZE + 65_536 for f in frames)
    # Bytes on the wire stay close to the content: one 44-byte header per chunk.
    assert sum(len(f) for f in frames) == size + chunks.HEADER_SIZE * len(frames)


def test_chunk_header_layout_is_as_documented() -> None:
    frame = chunks.encode(SHA, 2, 5, b"data")
    assert chunks.HEADER_SIZE == 44
    assert frame[:4] == b"LOA1"
    assert frame[4:36] == bytes.fromhex(SHA)
    assert frame[36:40] == (2).to_bytes(4, "big")
    assert frame[40:44] == (5).to_bytes(4, "big")
    assert frame[44:] == b"data"


def test_a_chunk_with_bad_magic_is_refused() -> None:
    frame = b"LOA2" + chunks.encode(SHA, 0, 1, b"x")[4:]
    with pytest.raises(chunks.ChunkError, match="magic"):
        chunks.decode(frame)


@pytest.mark.parametrize("length", [0, 1, 43])
def test_a_short_chunk_is_refused(length: int) -> None:
    with pytest.raises(chunks.ChunkError, match="too short"):
        chunks.decode(chunks.encode(SHA, 0, 1, b"")[:length])


def test_a_header_alone_is_an_empty_chunk() -> None:
    chunk = chunks.decode(chunks.encode(SHA, 0, 1, b""))
    assert chunk.data == b""


@pytest.mark.parametrize(("index", "count"), [(1, 1), (5, 3), (0, 0), (2**32 - 1, 2)])
def test_a_chunk_index_out_of_range_is_refused(index: int, count: int) -> None:
    with pytest.raises(chunks.ChunkError, match="out of range"):
        chunks.decode(chunks.encode(SHA, index, count, b"x"))


def test_an_oversized_chunk_is_refused() -> None:
    with pytest.raises(chunks.ChunkError, match="exceeds"):
        chunks.decode(chunks.encode(SHA, 0, 1, bytes(chunks.MAX_CHUNK_SIZE + 1)))


# --- topics ------------------------------------------------------------------------------


def test_topic_builders() -> None:
    assert topics.cluster_topic("ph-001", "command") == "loa/v1/cluster/ph-001/command"
    assert topics.cluster_topic("ph-001", "state") == "loa/v1/cluster/ph-001/state"
    assert topics.group_topic("xa.hiep_hung", "content") == "loa/v1/group/xa.hiep_hung/content"
    assert topics.all_clusters("event") == "loa/v1/cluster/+/event"


@pytest.mark.parametrize("channel", topics.TO_AGENT + topics.FROM_AGENT)
def test_every_cluster_topic_parses_back(channel: topics.ClusterChannel) -> None:
    parsed = topics.parse(topics.cluster_topic("ph-001", channel))
    assert parsed == topics.ParsedTopic("cluster", "ph-001", channel)


@pytest.mark.parametrize("channel", ["command", "content"])
def test_group_topics_parse_back(channel: topics.GroupChannel) -> None:
    assert topics.parse(topics.group_topic("g1", channel)) == topics.ParsedTopic(
        "group", "g1", channel
    )


@pytest.mark.parametrize(
    "topic",
    [
        "loa/v2/cluster/ph-001/command",
        "other/v1/cluster/ph-001/command",
        "loa/v1/cluster/ph-001",
        "loa/v1/cluster/ph-001/command/extra",
        "loa/v1/cluster/ph-001/volume",
        "loa/v1/group/g1/event",  # agents do not report on group topics
        "loa/v1/group/g1/state",
        "loa/v1/zone/ph-001/command",
        "loa/v1/cluster/+/event",
        "loa/v1/cluster//event",
        "loa/v1/cluster/ph-001\n/event",
        "",
    ],
)
def test_foreign_topics_do_not_parse(topic: str) -> None:
    assert topics.parse(topic) is None


@pytest.mark.parametrize(
    "bad_id",
    ["", "a/b", "+", "#", "ph+1", "a b", "-lead", ".hidden", "x" * 65, "a\x00", "ph-001\n", "xã"],
)
def test_bad_ids_are_rejected(bad_id: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in an MQTT topic"):
        topics.cluster_topic(bad_id, "command")
    with pytest.raises(ValueError, match="group id"):
        topics.group_topic(bad_id, "command")


@pytest.mark.parametrize("good_id", ["a", "PH-001", "xa.hiep_hung", "9", "x" * 64])
def test_good_ids_are_accepted(good_id: str) -> None:
    assert topics.check_id(good_id) == good_id


# --- messages ----------------------------------------------------------------------------


def event_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "cluster": "ph-001",
        "outbox": "ob-1",
        "seq": 1,
        "at": "2025-07-01T01:00:00+00:00",
        "kind": "playing",
        "play_id": "play-0001",
    }
    fields.update(changes)
    return fields


def test_an_event_round_trips_through_json() -> None:
    event = parse(Event, event_fields(level="emergency"))
    assert parse(Event, event.to_json()) == event
    assert event.at == datetime(2025, 7, 1, 1, 0, tzinfo=UTC)


def test_one_event_travels_as_an_object_and_several_as_an_array() -> None:
    one = parse(Event, event_fields())
    three = [parse(Event, event_fields(seq=n, kind=k))
             for n, k in enumerate(["received", "delivered", "playing"], 1)]  # fmt: skip
    assert encode_events([one]) == one.to_json()
    assert json.loads(encode_events(three)) == [json.loads(e.to_json()) for e in three]
    assert parse_events(encode_events([one])) == ([one], [])
    assert parse_events(encode_events(three)) == (three, [])
    with pytest.raises(ValueError, match="1 to 100"):
        encode_events([])
    with pytest.raises(ValueError, match="1 to 100"):
        encode_events([one] * (MAX_EVENTS_PER_MESSAGE + 1))


def test_an_event_array_keeps_its_valid_events_and_names_the_invalid_ones() -> None:
    good = event_fields(seq=1)
    payload = json.dumps([good, event_fields(seq=0), "playing", good]).encode()
    events, problems = parse_events(payload)
    assert [e.seq for e in events] == [1, 1]
    assert len(problems) == 2
    assert problems[0].startswith("event 1: invalid Event: seq:")
    assert problems[1] == "event 2: expected a JSON object, got str"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[]", "an array of 0 events; 1 to 100 are allowed"),
        (json.dumps([event_fields()] * 101).encode(), "an array of 101 events"),
        (b"42", "expected an event object or an array of them, got int"),
        (b"\xff", "not JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_an_event_message_that_is_neither_an_event_nor_an_array_is_refused(
    payload: bytes, message: str
) -> None:
    with pytest.raises(MessageError, match=message):
        parse_events(payload)


def test_extra_keys_are_refused() -> None:
    with pytest.raises(MessageError, match="Extra inputs are not permitted") as info:
        parse(Event, event_fields(volume=50))
    assert "volume" in str(info.value)


def test_extra_keys_are_refused_inside_a_command_body(signer: Signer) -> None:
    obj = json.loads(signed_play(signer).to_json())
    obj["body"]["force"] = True
    with pytest.raises(MessageError, match=r"body\.play\.force"):
        parse(Command, obj)


def test_the_three_levels_in_rank_order() -> None:
    assert LEVELS == ("normal", "priority", "emergency")
    assert LEVEL_RANK["normal"] < LEVEL_RANK["priority"] < LEVEL_RANK["emergency"]
    for level in LEVELS:
        assert play_body(level=level).level == level
    assert play_body().model_copy(update={"level": "normal"}).level == "normal"


@pytest.mark.parametrize("level", ["urgent", "Emergency", "khẩn cấp", "", 2])
def test_unknown_levels_are_refused(level: object) -> None:
    with pytest.raises(MessageError, match="level"):
        parse(Event, event_fields(level=level))


def test_naive_times_are_refused() -> None:
    with pytest.raises(MessageError, match="at"):
        parse(Event, event_fields(at="2025-07-01T08:00:00"))


@pytest.mark.parametrize("cluster", ["ph/001", "+", "ph-001\n", ""])
def test_bad_cluster_ids_in_messages_are_refused(cluster: str) -> None:
    with pytest.raises(MessageError, match="cluster"):
        parse(Event, event_fields(cluster=cluster))


def test_an_unknown_command_kind_is_refused(signer: Signer) -> None:
    obj = json.loads(signed_play(signer).to_json())
    obj["body"]["kind"] = "reboot"
    with pytest.raises(MessageError, match="body"):
        parse(Command, obj)


def test_parse_refuses_payloads_that_are_not_objects() -> None:
    with pytest.raises(MessageError, match="expected a JSON object, got list"):
        parse(Event, b"[1, 2]")
    with pytest.raises(MessageError, match="not JSON"):
        parse(Event, b"\x00\x01")


def test_an_ack_written_lean_is_the_command_the_models_make(
    signer: Signer, verifier: Verifier
) -> None:
    """The intake's acks skip the models for speed; an agent must read the same command."""
    now = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
    payload = signer.ack_payload("c1", "ob-1", [3, 4, 9], now, timedelta(hours=6))
    cmd = verifier.verify(payload)
    lean = cmd.model_dump(exclude={"id", "sig"})
    made = signer.command(
        AckBody(outbox="ob-1", seqs=[3, 4, 9]), Address(clusters=["c1"]), now,
        timedelta(hours=6),
    ).model_dump(exclude={"id", "sig"})
    assert lean == made
    again = verifier.verify(signer.ack_payload("c1", "ob-1", [3], now, timedelta(hours=6)))
    assert cmd.id != again.id  # every command its own id
    tampered = payload.replace(b"[3,4,9]", b"[3,4,10]")
    with pytest.raises(SignatureError):
        verifier.verify(tampered)
    with pytest.raises(ValueError, match="1 to 10000"):
        signer.ack_payload("c1", "ob-1", [], now, timedelta(hours=6))
