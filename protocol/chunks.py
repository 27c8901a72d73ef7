"""Content addressing and the binary chunk frame.

Audio is named by the SHA-256 of its encoded bytes and cut into chunks. Each chunk
travels as one MQTT message whose payload is a 44-byte header and the data:

    offset  size  field
    0       4     magic b"LOA1"
    4       32    SHA-256 of the whole content (raw bytes)
    36      4     chunk index, big-endian unsigned
    40      4     chunk count, big-endian unsigned
    44      n     chunk data (chunk_size bytes, the last one shorter)

The whole is verified against its SHA-256 (from the signed play command) once all
chunks are in, so a forged chunk can at worst make a download fail, never play.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC = b"LOA1"
HEADER = struct.Struct(">4s32sII")
HEADER_SIZE = HEADER.size  # 44
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 1024 * 1024


class ChunkError(ValueError):
    """A payload on a content topic that is not a well-formed chunk."""


@dataclass(frozen=True)
class Chunk:
    sha256: str
    index: int
    count: int
    data: bytes | memoryview  # decoded: a view of the payload, not a copy of 64 KiB


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


def encode(sha256: str, index: int, count: int, data: bytes) -> bytes:
    return HEADER.pack(MAGIC, bytes.fromhex(sha256), index, count) + data


def decode(payload: bytes) -> Chunk:
    """The chunk in payload; its data is a view of payload."""
    if len(payload) < HEADER_SIZE:
        raise ChunkError(f"chunk too short ({len(payload)} bytes, header is {HEADER_SIZE})")
    magic, digest, index, count = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ChunkError("not a Loa chunk (bad magic)")
    if count == 0 or index >= count:
        raise ChunkError(f"chunk index {index} out of range for {count} chunks")
    data = memoryview(payload)[HEADER_SIZE:]
    if len(data) > MAX_CHUNK_SIZE:
        raise ChunkError(f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK_SIZE}-byte limit")
    return Chunk(digest.hex(), index, count, data)


def split(content: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the framed chunks of content, in order."""
    digest = sha256_hex(content)
    count = chunk_count(len(content), chunk_size)
    for index in range(count):
        yield encode(digest, index, count, content[index * chunk_size : (index + 1) * chunk_size])
