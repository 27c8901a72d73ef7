"""Ogg pages of an Opus stream (RFC 3533, RFC 7845), read and written in pure Python.

Live audio travels as bare Opus packets (protocol/live.py). The controller reads them out
of the Ogg stream its encoder (ffmpeg) writes (`OggReader`); the agent writes them into an
Ogg stream again for its decoder, one page per packet so that nothing waits in a page
(`OggWriter`). Nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

OPUS_RATE = 48000  # Opus granule positions count 48 kHz samples, whatever the input rate
#: libopus's encoder delay at 48 kHz, the usual pre-skip of an Opus stream.
DEFAULT_PRE_SKIP = 312
#: Bytes an Ogg stream may hold before the reader gives up on finding a page in it.
MAX_PAGE_BYTES = 27 + 255 + 255 * 255


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
        table.append(crc)
    return table


_CRC = _crc_table()


def crc32(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, starting at 0)."""
    crc = 0
    table = _CRC
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _lacing(size: int) -> bytes:
    return bytes([255] * (size // 255) + [size % 255])


class OggWriter:
    """One logical Ogg/Opus stream: its two header pages, then a page per packet."""

    def __init__(self, serial: int = 0x4C4F4131) -> None:
        self._serial = serial
        self._sequence = 0

    def _page(self, packet: bytes, granule: int, flags: int) -> bytes:
        lacing = _lacing(len(packet))
        if len(lacing) > 255:
            raise ValueError(f"an Opus packet of {len(packet)} bytes does not fit one Ogg page")
        header = struct.pack(
            "<4sBBqIIIB", b"OggS", 0, flags, granule, self._serial, self._sequence, 0,
            len(lacing),
        )
        self._sequence += 1
        page = bytearray(header + lacing + packet)
        struct.pack_into("<I", page, 22, crc32(bytes(page)))
        return bytes(page)

    def head(self, channels: int = 1, pre_skip: int = DEFAULT_PRE_SKIP,
             input_rate: int = OPUS_RATE) -> bytes:  # fmt: skip
        """The OpusHead page (beginning of stream) and the OpusTags page."""
        opus_head = struct.pack(
            "<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, input_rate, 0, 0
        )
        vendor = b"loa"
        tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
        return self._page(opus_head, 0, 0x02) + self._page(tags, 0, 0)

    def packet(self, packet: bytes, granule: int, last: bool = False) -> bytes:
        """One page holding one packet; granule: samples (48 kHz) up to its end."""
        return self._page(packet, granule, 0x04 if last else 0)


@dataclass(frozen=True)
class OpusPacket:
    data: bytes
    granule: int  # of the page the packet ends on (-1: not the last packet of its page)


class OggError(ValueError):
    """A stream that is not Ogg/Opus as this reader takes it."""


class OggReader:
    """Takes an Ogg/Opus byte stream as it comes and hands out its audio packets.

    `pre_skip` is known once the OpusHead packet has been read; the OpusTags packet is
    skipped. One logical stream only (what ffmpeg writes for one audio output)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._partial = bytearray()
        self._headers = 0
        self.pre_skip: int | None = None
        self.channels: int | None = None

    def feed(self, data: bytes) -> Iterator[OpusPacket]:
        self._buffer += data
        while True:
            packet_pages = self._next_page()
            if packet_pages is None:
                return
            yield from packet_pages

    def _next_page(self) -> list[OpusPacket] | None:
        buf = self._buffer
        start = buf.find(b"OggS")
        if start < 0:
            if len(buf) > MAX_PAGE_BYTES:
                raise OggError("no Ogg page in the encoder's output")
            return None
        if start:
            del buf[:start]
        if len(buf) < 27:
            return None
        segments = buf[26]
        header_end = 27 + segments
        if len(buf) < header_end:
            return None
        lacing = buf[27:header_end]
        end = header_end + sum(lacing)
        if len(buf) < end:
            return None
        (granule,) = struct.unpack_from("<q", buf, 6)
        body = bytes(buf[header_end:end])
        del buf[:end]
        out: list[OpusPacket] = []
        pos = 0
        for value in lacing:
            self._partial += body[pos : pos + value]
            pos += value
            if value < 255:
                out.append(OpusPacket(bytes(self._partial), -1))
                self._partial.clear()
        if out:
            out[-1] = OpusPacket(out[-1].data, granule)
        return [p for p in (self._header(p) for p in out) if p is not None]

    def _header(self, packet: OpusPacket) -> OpusPacket | None:
        if self._headers == 0:
            if not packet.data.startswith(b"OpusHead") or len(packet.data) < 19:
                raise OggError("the stream does not start with an OpusHead packet")
            self.channels = packet.data[9]
            (self.pre_skip,) = struct.unpack_from("<H", packet.data, 10)
            self._headers = 1
            return None
        if self._headers == 1:
            self._headers = 2
            return None
        return packet
