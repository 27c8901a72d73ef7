"""The controller's side of live audio, for the agent's tests: Opus packets made by the
real ffmpeg from a sound, a signed live command, signed frames published on time."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import threading
import time
import uuid
import wave
from array import array
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import MosquittoBroker
from fuzz_rig import Watched

from protocol import live as frames
from protocol import topics
from protocol.messages import Address, Command, Event, Level, LiveBody, MembershipBody, parse_events
from protocol.mqtt import MqttLink
from protocol.ogg import OggReader
from protocol.signing import Signer, generate_keypair, load_private_key, unseal


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


CLUSTER = "c-live-01"


class Controller:
    """The controller's side: its key, a link, the agent's events as they come."""

    def __init__(self, broker: MosquittoBroker, work: Path) -> None:
        generate_keypair(work / "controller.key", work / "controller.pub")
        self.signer = Signer(load_private_key(work / "controller.key"))
        generate_keypair(work / "stranger.key", work / "stranger.pub")
        self.stranger = Signer(load_private_key(work / "stranger.key"))
        self.lock = threading.Lock()
        self.events: dict[tuple[str, int], Event] = {}
        self.online = threading.Event()
        self.link = MqttLink(broker.address, "live-controller")
        self.link.subscribe(topics.cluster_topic(CLUSTER, "event"), self._on_events)
        self.link.subscribe(topics.cluster_topic(CLUSTER, "state"), self._on_state)
        self.link.start()
        assert self.link.wait_connected(10)
        self.sender = LiveSender(self.link, self.signer, CLUSTER)

    def _on_state(self, _topic: str, payload: bytes) -> None:
        if b'"online"' in payload:
            self.online.set()

    def _on_events(self, _topic: str, payload: bytes) -> None:
        sealed = unseal(payload)
        events, _problems = parse_events(sealed.body)
        with self.lock:
            for event in events:
                self.events[(event.outbox, event.seq)] = event

    def of(self, play_id: str) -> list[Event]:
        with self.lock:
            return sorted(
                (e for e in self.events.values() if e.play_id == play_id), key=lambda e: e.seq
            )

    def kinds(self, play_id: str) -> list[str]:
        return [e.kind for e in self.of(play_id)]

    def rejected(self) -> list[Event]:
        with self.lock:
            return [e for e in self.events.values() if e.kind == "rejected"]

    def membership(self) -> None:
        now = datetime.now(UTC)
        body = MembershipBody(cluster=CLUSTER, groups=["commune-live"],
                              version=int(now.timestamp() * 1000))  # fmt: skip
        cmd = self.signer.command(body, Address(clusters=[CLUSTER]), now, timedelta(days=1))
        self.link.publish(topics.cluster_topic(CLUSTER, "membership"), cmd.to_json(), retain=True)


@contextlib.contextmanager
def agent_rig(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> Iterator[tuple[Controller, Path]]:
    """A real `loa-agent run` process with the file output, and the controller's side."""
    controller = Controller(mosquitto_broker, tmp_path)
    controller.membership()
    played = tmp_path / "played"
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"cluster_id: {CLUSTER}\nbroker_url: {mosquitto_broker.url}\n"
        "controller_public_key: controller.pub\ndata_dir: agent-data\nkeepalive: 30\n"
        f"output: {{kind: file, out_dir: {played}, ffmpeg: {ffmpeg_exe()}}}\n",
        encoding="utf-8",
    )
    agent = Watched("device_agent.cli", config, tmp_path / "agent.log")
    try:
        assert controller.online.wait(30), (tmp_path / "agent.log").read_text()
        yield controller, played
    finally:
        agent.stop()
        controller.link.stop()
        assert agent.tracebacks() == 0, (tmp_path / "agent.log").read_text()



def ended(controller: Controller, session: str) -> bool:
    return any(k in ("finished", "missed", "interrupted", "failed")
               for k in controller.kinds(session))  # fmt: skip


def speech_wav(path: Path, text: str) -> Path:
    """Speech by espeak-ng (Vietnamese), as a 48 kHz mono WAV."""
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "vi", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(raw), "-ac", "1",
         "-ar", "48000", "-c:a", "pcm_s16le", str(path)],
        check=True,
    )  # fmt: skip
    return path


def envelope(samples: Sequence[int], rate: int, window_s: float = 0.02) -> list[float]:
    """The loudness envelope: RMS per window."""
    size = max(1, int(rate * window_s))
    return [rms(samples[i : i + size]) for i in range(0, len(samples) - size + 1, size)]


def best_correlation(
    a: Sequence[float], b: Sequence[float], max_lag: int
) -> tuple[float, int]:
    """The highest Pearson correlation of a with b shifted by -max_lag..max_lag windows,
    and that shift (b lags a by it)."""
    best = (-1.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        pairs = [(a[i], b[i + lag]) for i in range(len(a)) if 0 <= i + lag < len(b)]
        if len(pairs) < 10:
            continue
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        cov = sum((x - mx) * (y - my) for x, y in pairs)
        vx = math.sqrt(sum((x - mx) ** 2 for x in xs))
        vy = math.sqrt(sum((y - my) ** 2 for y in ys))
        if vx and vy and cov / (vx * vy) > best[0]:
            best = (cov / (vx * vy), lag)
    return best
