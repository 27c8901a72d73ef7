"""A rebroadcast programme of a playlist, fired by the scheduler's dispatch, airs live on
real agents from a real Icecast server, and switches to its backup when the station dies.

The controller is built from its config as `loa-controller run` builds it
(tests/live_support.py); the agents are real agents (in this process, each on its own
link and threads) with the `file` output; the station is Debian's icecast2 fed by ffmpeg.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

from conftest import MosquittoBroker, require, wait_until
from icecast_support import Feeder, Icecast
from live_support import LiveRig
from live_wire_support import ffmpeg_exe, rms, speech_wav, wav_samples

from controller.schedule import Occurrence
from device_agent.output import FileBackend

FLEET = """\
province:
  id: tinh-thu
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: a-01, name: Cụm A1}
        - {id: a-02, name: Cụm A2}
"""

SPEECH = "Đây là Đài Tiếng nói Việt Nam, phát thanh từ thủ đô Hà Nội."


def zero_crossing_hz(samples: list[int], rate: int) -> float:
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    return crossings * rate / max(1, len(samples))


def test_a_rebroadcast_programme_airs_on_every_cluster_and_survives_its_station(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    icecast = Icecast()
    feeders: list[Feeder] = []
    rig: LiveRig | None = None
    try:
        speech = speech_wav(tmp_path / "speech.wav", SPEECH)
        primary = Feeder(icecast, "vov1.mp3", ["-stream_loop", "-1", "-i", str(speech)])
        backup = Feeder(icecast, "tinh.mp3", ["-f", "lavfi", "-i", "sine=f=660:r=44100"])
        feeders += [primary, backup]
        playlists = tmp_path / "playlists"
        playlists.mkdir()
        (playlists / "relay.yaml").write_text(f"""\
programmes:
  - id: vov1
    name: Tiếp sóng VOV1
    bulletins:
      - rebroadcast:
          url: {icecast.url("vov1.mp3")}
          backups: [{icecast.url("tinh.mp3")}]
          duration: 1m
    schedule: {{times: ["11:00"]}}
    targets: [all]
""", encoding="utf-8")
        rig = LiveRig(tmp_path, mosquitto_broker, fleet=FLEET, playlists=playlists)
        controller = rig.start()
        played = tmp_path / "played"
        for cluster in ("a-01", "a-02"):
            rig.agent(cluster, ["xa-a", "tinh-thu"],
                      FileBackend(played / cluster, ffmpeg=ffmpeg_exe()))  # fmt: skip
        wait_until(lambda: icecast.mounted("vov1.mp3") and icecast.mounted("tinh.mp3"), 15,
                   "both stations on the Icecast server")  # fmt: skip

        # The scheduler hands the 11:00 airing over lead_time ahead; here it starts in 3 s.
        start = controller.clock.now() + timedelta(seconds=3)
        occurrence = Occurrence("vov1", start, start + timedelta(minutes=10))
        assert controller.dispatcher(occurrence) == "sent"
        assert controller.store.dispatches.outcome("vov1", start) == "sent"
        wait_until(controller.live.sessions, 10, "the rebroadcast under way")
        session = controller.live.sessions()[0]
        assert session.source == "rebroadcast"
        assert session.clusters == ("a-01", "a-02")

        def states() -> dict[str, str]:
            return controller.store.events.play_states(session.session_id)

        wait_until(lambda: states() == {"a-01": "playing", "a-02": "playing"}, 20,
                   "both clusters airing the station")  # fmt: skip
        playing = {r.id: r.playing for r in controller.store.clusters.fleet_rows()}
        assert playing == {"a-01": "relaying: Tiếp sóng VOV1", "a-02": "relaying: Tiếp sóng VOV1"}
        threading.Event().wait(3.0)  # three seconds of the station on air
        primary.kill()
        killed = time.monotonic()
        wait_until(lambda: "gap" in {e["kind"] for e in
                                     controller.store.events.of_play(session.session_id)},
                   20, "the switch to the backup, reported")  # fmt: skip
        switched_s = time.monotonic() - killed
        threading.Event().wait(3.0)  # three seconds of the backup on air
        assert controller.live.cut(session.session_id)
        wait_until(lambda: states() == {"a-01": "finished", "a-02": "finished"}, 20,
                   "both clusters done")  # fmt: skip
    finally:
        for feeder in feeders:
            feeder.kill()
        icecast.close()
        if rig is not None:
            rig.stop()

    report = controller.live.reports[-1]
    assert [i.source.rsplit("/", 1)[1] for i in report.inputs] == ["vov1.mp3", "tinh.mp3"]
    assert report.inputs[0].outcome == "failed: the stream ended"
    assert switched_s < 8
    events = controller.store.events.of_play(session.session_id)
    for cluster in ("a-01", "a-02"):
        mine = [e for e in events if e["cluster"] == cluster]
        gaps = [e for e in mine if e["kind"] == "gap"]
        assert 0 < sum(e["seconds"] for e in gaps) < 4, gaps  # the switch: seconds
        end = next(e for e in mine if e["kind"] == "finished")
        assert end["seconds"] > 5  # the live minutes a report counts
        aired, rate = wav_samples(next((played / cluster).glob("live-*.wav")))
        assert rms(aired[: 2 * rate]) > 500  # the station's speech first,
        assert 600 < zero_crossing_hz(aired[-rate:], rate) < 720  # the backup's tone last
