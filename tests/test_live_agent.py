"""Live audio on the agent: the wire format, and a real `loa-agent run` process on a real
mosquitto that airs a signed session through its `file` output, and plays nothing of
forged or replayed frames published with mosquitto_pub."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import MosquittoBroker, require, wait_until
from live_wire_support import (
    CLUSTER,
    Controller,
    LiveSender,
    agent_rig,
    ended,
    ffmpeg_exe,
    opus_packets,
    rms,
    wav_samples,
)

from protocol import live as frames
from protocol import topics
from protocol.messages import Address
from protocol.ogg import OggReader, OggWriter
from protocol.signing import generate_keypair


@pytest.fixture
def rig(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> Iterator[tuple[Controller, Path]]:
    with agent_rig(mosquitto_broker, tmp_path) as made:
        yield made

# --- the wire --------------------------------------------------------------------------------


def test_a_frame_reads_back_and_any_changed_byte_breaks_its_signature(tmp_path: Path) -> None:
    key = generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    session = "ab" * 16
    payload = frames.encode(key.sign, session, 7, 140, [b"\x01\x02", b"\x03"], end=True)
    frame = frames.decode(payload)
    assert (frame.session, frame.seq, frame.slot, frame.packets, frame.end) == (
        session, 7, 140, (b"\x01\x02", b"\x03"), True
    )
    assert frame.verify([key.public_key()])
    for index in range(len(payload) - frames.SIGNATURE_BYTES):
        changed = bytearray(payload)
        changed[index] ^= 0x01
        try:
            forged = frames.decode(bytes(changed))
        except frames.FrameError:
            continue
        assert not forged.verify([key.public_key()]), f"byte {index} is not under the signature"
    with pytest.raises(frames.FrameError, match="packet lengths"):
        frames.decode(payload[:-1])
    with pytest.raises(frames.FrameError, match="not a live frame"):
        frames.decode(b"XX" + payload[2:])


def test_opus_packets_go_through_ogg_pages_unchanged() -> None:
    packets = [bytes([n]) * (1 + n * 7 % 600) for n in range(40)]
    writer = OggWriter()
    stream = writer.head(1, 312) + b"".join(
        writer.packet(p, (i + 1) * frames.SLOT_SAMPLES) for i, p in enumerate(packets)
    )
    reader = OggReader()
    got = []
    for cut in range(0, len(stream), 333):  # as it comes, in pieces
        got += [p.data for p in reader.feed(stream[cut : cut + 333])]
    assert got == packets
    assert reader.pre_skip == 312


def test_the_silence_packet_decodes_to_twenty_milliseconds_of_silence(tmp_path: Path) -> None:
    writer = OggWriter()
    stream = writer.head(1, 0) + b"".join(
        writer.packet(frames.SILENCE_PACKET, (i + 1) * frames.SLOT_SAMPLES) for i in range(50)
    )
    out = tmp_path / "silence.wav"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "ogg", "-i", "pipe:0",
         "-ac", "1", "-ar", "48000", "-c:a", "pcm_s16le", str(out)],
        input=stream, check=True,
    )  # fmt: skip
    samples, rate = wav_samples(out)
    assert abs(len(samples) / rate - 1.0) < 0.01
    assert max(abs(s) for s in samples) == 0


# --- a real agent process ------------------------------------------------------------------


def test_a_signed_session_airs_on_its_timeline_and_is_reported(
    rig: tuple[Controller, Path],
) -> None:
    controller, played = rig
    tone, pre_skip = opus_packets(["-f", "lavfi", "-i", "sine=f=440:r=48000"], 2.0)
    body = controller.sender.start(pre_skip=pre_skip)
    controller.sender.stream(body, tone)
    wait_until(lambda: ended(controller, body.session_id), 15, "the end of the session")
    events = controller.of(body.session_id)
    assert [e.kind for e in events] == ["playing", "finished"], events
    assert events[-1].seconds is not None
    assert abs(events[-1].seconds - 2.0) < 0.05
    samples, rate = wav_samples(played / f"live-{body.session_id}.wav")
    assert abs(len(samples) / rate - 2.0) < 0.05
    assert rms(samples) > 2000
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert 400 < crossings / 2.0 < 480  # the same 440 Hz tone


def test_forged_and_replayed_frames_play_nothing(
    rig: tuple[Controller, Path], mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    require("mosquitto_pub", shutil.which("mosquitto_pub") is not None,
            "apt-get install mosquitto-clients")  # fmt: skip
    controller, played = rig
    tone, pre_skip = opus_packets(["-f", "lavfi", "-i", "sine=f=440:r=48000"], 1.0)
    first = controller.sender.start(pre_skip=pre_skip)
    controller.sender.stream(first, tone)
    wait_until(lambda: ended(controller, first.session_id), 15, "the first session's end")
    genuine = list(controller.sender.sent)

    def mosquitto_pub(topic: str, payload: bytes) -> None:
        message = tmp_path / "message.bin"
        message.write_bytes(payload)
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mosquitto_broker.port), "-q", "0",
             "-t", topic, "-f", str(message)],
            check=True, timeout=10,
        )  # fmt: skip

    live_topic = topics.cluster_topic(CLUSTER, "live")
    # Replayed after their session: every genuine frame again, and its signed start.
    for payload in genuine:
        mosquitto_pub(live_topic, payload)
    mosquitto_pub(topics.cluster_topic(CLUSTER, "command"), controller.sender.commands[0])
    # ...and a new start of it, signed: still not aired twice.
    start = controller.signer.command(
        first, Address(clusters=[CLUSTER]), datetime.now(UTC), timedelta(minutes=10)
    )
    mosquitto_pub(topics.cluster_topic(CLUSTER, "command"), start.to_json())
    wait_until(lambda: len([e for e in controller.rejected() if "replayed" in (e.reason or "")])
               == 2, 15, "both starts refused")  # fmt: skip

    # Forged: a session started by the controller, whose audio comes signed by another key.
    loud, _ = opus_packets(["-f", "lavfi", "-i", "sine=f=880:r=48000"], 1.0)
    second = controller.sender.start(pre_skip=pre_skip, idle_end_s=1.5)
    forged_sender = LiveSender(controller.link, controller.stranger, CLUSTER)
    forged_sender.stream(second, loud)
    for payload in forged_sender.sent:  # and once more through mosquitto_pub
        mosquitto_pub(live_topic, payload)
    wait_until(lambda: ended(controller, second.session_id), 15, "the forged session's end")
    end = controller.of(second.session_id)[-1]
    assert end.kind == "missed", controller.of(second.session_id)
    assert end.seconds == 0
    assert "forged frames refused" in (end.reason or "")

    # Nothing of either was played: the first session's audio is there once, and whatever
    # the output wrote for the second is silence.
    assert controller.kinds(first.session_id) == ["playing", "finished", "rejected", "rejected"]
    assert not list(played.glob(f"live-{first.session_id}-*.wav"))
    for wav in played.glob(f"live-{second.session_id}*.wav"):
        samples, _rate = wav_samples(wav)
        assert max((abs(s) for s in samples), default=0) == 0, wav
