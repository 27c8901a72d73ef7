"""The controller's side of live audio, for the agent's tests: Opus packets made by the
real ffmpeg from a sound, a signed live command, signed frames published on time."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
import uuid
import wave
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from protocol import live as frames
from protocol import topics
from protocol.messages import Address, Command, Level, LiveBody
from protocol.mqtt import MqttLink
from protocol.ogg import OggReader
from protocol.signing import Signer


def ffmpeg_exe() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def opus_packets(source: Sequence[str], seconds: float) -> tuple[list[bytes], int]:
    """20 ms Opus packets of seconds of an ffmpeg input (e.g. ["-f", "lavfi", "-i",
    "sine=f=440"]), and the encoder's pre-skip."""
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *source, "-t", f"{seconds}",
         "-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "24k", "-frame_duration",
         "20", "-f", "ogg", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    reader = OggReader()
    packets = [p.data for p in reader.feed(out)]
    assert reader.pre_skip is not None
    return packets, reader.pre_skip


def wav_samples(path: Path) -> tuple[list[int], int]:
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        data = array("h", wav.readframes(wav.getnframes()))
    return list(data), rate


def rms(samples: Sequence[int]) -> float:
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


class LiveSender:
    """Signs a live session's command and frames and publishes them as the controller would."""

    def __init__(self, link: MqttLink, signer: Signer, cluster: str) -> None:
        self.link = link
        self.signer = signer
        self.cluster = cluster
        self.sent: list[bytes] = []  # every frame payload published, in order
        self.commands: list[bytes] = []  # every live command published

    def start(
        self,
        *,
        delay_ms: int = 800,
        lead_s: float = 0.3,
        level: Level = "normal",
        length_s: float = 60,
        idle_end_s: float = 3.0,
        pre_skip: int = 312,
        session_id: str | None = None,
    ) -> LiveBody:
        now = datetime.now(UTC)
        body = LiveBody(
            session_id=session_id or uuid.uuid4().hex,
            source="microphone",
            bulletin="test live",
            level=level,
            origin=now + timedelta(seconds=lead_s),
            delay_ms=delay_ms,
            ends_by=now + timedelta(seconds=length_s),
            idle_end_s=idle_end_s,
            pre_skip=pre_skip,
        )
        self.command(body)
        return body

    def command(self, body: LiveBody) -> Command:
        cmd = self.signer.command(
            body, Address(clusters=[self.cluster]), datetime.now(UTC), timedelta(minutes=10)
        )
        self.commands.append(cmd.to_json())
        self.link.publish(topics.cluster_topic(self.cluster, "command"), cmd.to_json())
        return cmd

    def stream(
        self,
        body: LiveBody,
        packets: Sequence[bytes],
        *,
        per_frame: int = 10,
        signer: Signer | None = None,
        end: bool = True,
    ) -> None:
        """Publish the packets in frames, each when its last packet was 'captured'."""
        sign = (signer or self.signer).sign_raw
        topic = topics.cluster_topic(self.cluster, "live")
        for seq, first in enumerate(range(0, len(packets), per_frame)):
            chunk = packets[first : first + per_frame]
            captured = body.origin + timedelta(milliseconds=frames.SLOT_MS * (first + len(chunk)))
            wait = (captured - datetime.now(UTC)).total_seconds()
            if wait > 0:
                time.sleep(wait)  # pacing a real-time source, not synchronising a test
            last = end and first + per_frame >= len(packets)
            payload = frames.encode(sign, body.session_id, seq, first, chunk, end=last)
            self.sent.append(payload)
            self.link.publish(topic, payload, qos=0)
