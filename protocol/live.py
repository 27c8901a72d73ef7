"""Live audio frames: Opus packets as they are captured, signed by the controller.

A live session (a rebroadcast of an upper-level station, or a microphone) starts with a
signed `live` command (protocol.messages.LiveBody) that fixes its timeline: `origin`,
the capture time of slot 0, and the length of a slot (one Opus packet, 20 ms). Its audio
then comes in frames on the `live` topics of the clusters and groups it is for, QoS 0,
not retained. A frame carries a few consecutive packets and is signed, like every
command, with the controller's Ed25519 key, so that nobody but the controller can make a
speaker speak; the session id and the slot numbers are under the signature, so a frame
cannot be moved into another session or to another time.

Binary layout (big-endian), docs/protocol.md "Live audio":

    offset size
    0      2    magic b"LV"
    2      1    version (1)
    3      1    flags (bit 0: the last frame of the session; bit 1: lengths in 1 byte)
    4      16   session id (the 32 hex digits of LiveBody.session_id, as bytes)
    20     4    seq: frame number in the session, from 0
    24     4    slot: slot of the frame's first packet (its capture time is
                origin + slot x slot length)
    28     1    n: packets in the frame (0 to MAX_PACKETS)
    29     2n   each packet's length (n bytes instead when bit 1 is set: every packet
                is shorter than 256 bytes, as at speech bitrates)
    ...         the packets
    end-64 64   Ed25519 signature over every byte before it

An agent plays slot s at origin + s x slot + the session's delay (its jitter buffer:
device_agent/live.py). Nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAGIC = b"LV"
VERSION = 1
FLAG_END = 0x01
FLAG_SHORT = 0x02
HEADER = struct.Struct(">2sBB16sIIB")
SIGNATURE_BYTES = 64
#: Packets a frame may carry (at 20 ms, two seconds of audio).
MAX_PACKETS = 100
#: Longest Opus packet taken (RFC 6716 allows 1275 bytes for a frame of 20 ms).
MAX_PACKET_BYTES = 1275
MAX_FRAME_BYTES = HEADER.size + MAX_PACKETS * (2 + MAX_PACKET_BYTES) + SIGNATURE_BYTES
#: The one slot length of this version: one Opus packet of 20 ms.
SLOT_MS = 20
#: Samples (48 kHz) in a slot.
SLOT_SAMPLES = 48 * SLOT_MS
#: A 20 ms Opus packet of silence (CELT, full band, mono), what a gap is filled with.
SILENCE_PACKET = b"\xf8\xff\xfe"


class FrameError(ValueError):
    """A payload on a live topic that is not a well-formed frame (says what is wrong)."""


@dataclass(frozen=True)
class Frame:
    """A frame read off the network; `verify` before believing anything in it."""

    session: str  # 32 lowercase hex digits
    seq: int
    slot: int
    packets: tuple[bytes, ...]
    end: bool
    signed: bytes  # what the signature covers
    sig: bytes

    def verify(self, keys: Sequence[Ed25519PublicKey]) -> bool:
        """True if one of keys made its signature."""
        for key in keys:
            try:
                key.verify(self.sig, self.signed)
            except InvalidSignature:
                continue
            return True
        return False


def encode(
    sign: Callable[[bytes], bytes],
    session: str,
    seq: int,
    slot: int,
    packets: Sequence[bytes],
    *,
    end: bool = False,
) -> bytes:
    """A frame of packets, the first of which was captured in slot, signed with sign
    (the controller's Signer.sign_raw)."""
    if len(packets) > MAX_PACKETS:
        raise ValueError(f"a frame carries at most {MAX_PACKETS} packets, not {len(packets)}")
    for packet in packets:
        if not 0 < len(packet) <= MAX_PACKET_BYTES:
            raise ValueError(f"an Opus packet of {len(packet)} bytes (1 to {MAX_PACKET_BYTES})")
    short = all(len(p) < 256 for p in packets)
    flags = (FLAG_END if end else 0) | (FLAG_SHORT if short else 0)
    head = HEADER.pack(MAGIC, VERSION, flags, bytes.fromhex(session), seq, slot, len(packets))
    lengths = struct.pack(f">{len(packets)}{'B' if short else 'H'}", *(len(p) for p in packets))
    signed = head + lengths + b"".join(packets)
    return signed + sign(signed)


def decode(payload: bytes) -> Frame:
    """The frame in a payload (not yet verified); FrameError saying what is wrong."""
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"{len(payload)} bytes; a frame has at most {MAX_FRAME_BYTES}")
    if len(payload) < HEADER.size + SIGNATURE_BYTES:
        raise FrameError(f"{len(payload)} bytes is too short for a frame")
    magic, version, flags, session, seq, slot, count = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise FrameError("not a live frame (it does not start with 'LV')")
    if version != VERSION:
        raise FrameError(f"frame version {version}; this agent reads version {VERSION}")
    if count > MAX_PACKETS:
        raise FrameError(f"{count} packets; a frame carries at most {MAX_PACKETS}")
    short = bool(flags & FLAG_SHORT)
    body = HEADER.size + (1 if short else 2) * count
    if len(payload) < body + SIGNATURE_BYTES:
        raise FrameError("the frame ends inside its packet lengths")
    lengths = struct.unpack_from(f">{count}{'B' if short else 'H'}", payload, HEADER.size)
    if body + sum(lengths) + SIGNATURE_BYTES != len(payload):
        raise FrameError(
            f"packet lengths add up to {sum(lengths)} bytes, the frame holds "
            f"{len(payload) - body - SIGNATURE_BYTES}"
        )
    packets = []
    pos = body
    for length in lengths:
        if length == 0:
            raise FrameError("an empty packet")
        packets.append(payload[pos : pos + length])
        pos += length
    return Frame(
        session=session.hex(),
        seq=seq,
        slot=slot,
        packets=tuple(packets),
        end=bool(flags & FLAG_END),
        signed=payload[:pos],
        sig=payload[pos:],
    )
