"""The urgent service on real parts: scope, text-to-speech, preemption, stop, audit.

A real broker, the controller, and one in-process agent (null output) per cluster.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import BrokerUnderTest, require, wait_until
from identity_support import enrolments_aside
from web_rig import FLEET, WebRig

from controller.distribution import PlaySpec
from controller.fleet import UnknownTargetError
from controller.samples import tone
from controller.tts import Speech
from controller.urgent import AnnouncementRequest, TargetForbiddenError, UrgentError


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.start(web=False)
    try:
        yield r
    finally:
        r.stop()


def test_a_commune_officer_reaches_only_its_commune(rig: WebRig) -> None:
    officer = rig.user("can-bo-a")
    service = rig.service
    assert service.authorize(officer, ["ap-a1"]) == ["a-01", "a-02"]
    assert service.authorize(officer, ["xa-a"]) == ["a-01", "a-02", "a-03"]
    for target in (["xa-b"], ["b-01"], ["all"], ["tinh-t"], ["ap-a1", "xa-b"]):
        with pytest.raises(TargetForbiddenError) as refused:
            service.authorize(officer, target)
        assert refused.value.status == 403
        assert "Xã An" in str(refused.value)
    with pytest.raises(UnknownTargetError, match="did you mean 'ap-a1'"):
        service.authorize(officer, ["ap-aa1"])
    # The manager of the province reaches all of it.
    assert service.authorize(rig.user("quan-ly"), ["all"]) == ["a-01", "a-02", "a-03", "b-01"]
    # Refused before anything is prepared or sent.
    with pytest.raises(TargetForbiddenError):
        service.send(officer, AnnouncementRequest(targets=["xa-b"], text="Thử"))
    assert service.recent(rig.user("quan-ly")) == []
    assert rig.controller.store.events.count() == 0


def test_requests_that_cannot_be_sent_say_why(rig: WebRig) -> None:
    officer = rig.user("can-bo-a")
    bad = [
        (AnnouncementRequest(targets=["xa-a"]), "either a text"),
        (AnnouncementRequest(targets=["xa-a"], text="x", audio=rig.tmp / "a.wav"), "not both"),
        (AnnouncementRequest(targets=["xa-a"], text="x", level="normal"), "'priority' or"),
        (AnnouncementRequest(targets=["xa-a"], text="x", repeat=11), "1 to 10"),
        (AnnouncementRequest(targets=[], text="x"), "at least one target"),
    ]
    for request, message in bad:
        with pytest.raises(UrgentError, match=message):
            rig.service.send(officer, request)


def test_an_urgent_announcement_preempts_the_bulletin_on_its_targets_only(rig: WebRig) -> None:
    """A normal bulletin plays in the whole commune; an emergency goes to one village: there
    the bulletin is interrupted and the announcement plays; elsewhere the bulletin goes on."""
    controller = rig.controller
    bulletin_wav = tone(rig.tmp / "bulletin.wav", 30.0)
    bulletin = controller.library.prepare([bulletin_wav])
    now = controller.clock.now()
    normal = PlaySpec(
        play_id="ban-tin-thu", bulletin="Bản tin", level="normal", start_at=now,
        latest_start=now + timedelta(minutes=5), items=[bulletin],
        clusters=["a-01", "a-02", "a-03"],
    )
    controller.distributor.send_play(normal)
    rig.wait_states("ban-tin-thu", {c: {"playing"} for c in normal.clusters})

    urgent_wav = tone(rig.tmp / "urgent.wav", 2.0, freq=880)
    sent = rig.service.send(
        rig.user("can-bo-a"),
        AnnouncementRequest(targets=["ap-a1"], audio=urgent_wav, level="emergency",
                            title="Lũ về"),
    )
    assert sent.clusters == ["a-01", "a-02"]
    rig.wait_states(sent.id, {"a-01": {"finished"}, "a-02": {"finished"}})
    states = controller.store.events.play_states("ban-tin-thu")
    assert states["a-01"] == "interrupted"
    assert states["a-02"] == "interrupted"
    assert states["a-03"] == "playing"  # not targeted: the bulletin goes on
    reasons = {
        r["cluster"]: r["reason"] for r in controller.store.events.of_play("ban-tin-thu")
        if r["kind"] == "interrupted"
    }
    assert set(reasons) == {"a-01", "a-02"}
    assert all(reason for reason in reasons.values())
    done = rig.service.get(rig.user("can-bo-a"), sent.id)
    assert done.all_played
    assert done.done
    assert [p.status for p in done.progress] == ["finished", "finished"]
    assert states.get("b-01") is None


def test_text_is_spoken_repeated_and_can_be_stopped(rig: WebRig) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    officer = rig.user("can-bo-a")
    once = rig.service.send(officer, AnnouncementRequest(targets=["a-03"], text="Thử loa."))
    three = rig.service.send(
        officer,
        AnnouncementRequest(targets=["ap-a1"], text="Thử loa.", repeat=3, gap_s=2.0),
    )
    # Three times with two gaps of 2 s: longer than the single one by at least 2 x (1 + 2) s.
    assert three.duration_s >= 3 * once.duration_s + 3.5
    assert three.audio_sha256 != once.audio_sha256
    rig.wait_states(three.id, {"a-01": {"playing"}, "a-02": {"playing"}})
    stopped = rig.service.stop(officer, three.id)
    assert stopped.stopped_by == "can-bo-a"
    rig.wait_states(three.id, {"a-01": {"interrupted"}, "a-02": {"interrupted"}})
    final = rig.service.get(officer, three.id)
    assert final.done
    assert not final.all_played
    # Another commune's officer cannot see it, let alone stop it.
    with pytest.raises(UrgentError) as hidden:
        rig.service.stop(rig.user("can-bo-b"), three.id)
    assert hidden.value.status == 404
    actions = [(e.user, e.action, e.subject) for e in rig.service.audit_entries(officer)]
    assert ("can-bo-a", "stop", three.id) in actions
    assert ("can-bo-a", "send", three.id) in actions
    sent_entry = next(e for e in rig.service.audit_entries(officer) if e.action == "send"
                      and e.subject == three.id)
    assert sent_entry.text == "Thử loa."
    assert sent_entry.audio_sha256 == three.audio_sha256
    assert sent_entry.clusters == ["a-01", "a-02"]


def _spoken(rig: WebRig, text: str, voice: str) -> str:
    """The SHA-256 of text spoken with voice and prepared as the clusters get it."""
    with tempfile.TemporaryDirectory(dir=rig.tmp) as tmp:
        wav = Speech().speak(text, Path(tmp) / "speech.wav", voice=voice)
        return rig.controller.library.prepare([wav]).sha256


def test_a_text_is_spoken_with_the_voice_of_its_targets(rig: WebRig) -> None:
    """xa-b speaks Central, the rest of the province Southern; both at once: the voice of
    their common ancestor, the province."""
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    manager = rig.user("quan-ly")
    text = "Lúc 14h30, nước sông lên 1,5 m."
    central, southern = _spoken(rig, text, "mien-trung"), _spoken(rig, text, "mien-nam")
    assert central != southern
    one = rig.service.send(manager, AnnouncementRequest(targets=["b-01"], text=text))
    both = rig.service.send(manager, AnnouncementRequest(targets=["a-01", "b-01"], text=text))
    assert one.audio_sha256 == central
    assert both.audio_sha256 == southern
    details = {e.subject: e.detail for e in rig.service.audit_entries(manager)}
    assert "voice=mien-trung" in (details[one.id] or "")
    assert "voice=mien-nam" in (details[both.id] or "")


def test_listening_first_prepares_what_would_be_sent_and_sends_nothing(rig: WebRig) -> None:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    officer = rig.user("can-bo-b")
    text = "Cúp điện từ 7h30 đến 16h00 ngày 10/12."
    held = set(rig.controller.library.root.iterdir())
    heard = rig.service.preview(officer, AnnouncementRequest(targets=["b-01"], text=text))
    assert heard[:4] == b"OggS"
    # Without targets chosen yet: the voice of the officer's own commune.
    assert rig.service.preview(officer, AnnouncementRequest(targets=[], text=text)) == heard
    # Nothing sent, recorded, audited or kept.
    assert set(rig.controller.library.root.iterdir()) == held
    assert not any(rig.service.work_dir.iterdir())
    assert rig.controller.store.events.count() == 0
    assert rig.service.recent(rig.user("quan-ly")) == []
    assert enrolments_aside(rig.service.audit_entries(rig.user("quan-ly"))) == []
    # What the clusters would get: the Central voice, prepared as any announcement.
    assert hashlib.sha256(heard).hexdigest() == _spoken(rig, text, "mien-trung")
    # The same scope rule as sending.
    with pytest.raises(TargetForbiddenError):
        rig.service.preview(officer, AnnouncementRequest(targets=["a-01"], text=text))
    with pytest.raises(UrgentError, match="write the text"):
        rig.service.preview(officer, AnnouncementRequest(targets=["b-01"], text=" "))


def test_horns_and_a_hall_each_get_their_own_audio_and_are_followed_as_one(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    """b-01 is a hall with full-range speakers; the villages' clusters are horns. One
    announcement to both goes as a play per audio profile, each with the audio prepared
    for it; the page follows, stops and plays back all of it under the one id."""
    plain = "{id: b-01, name: Trụ sở Bình, lat: 9.50, lon: 105.50}"
    assert plain in FLEET
    hall = plain.replace("}", ", audio_profile: full-range}")
    rig = WebRig(tmp_path, broker.address, fleet=FLEET.replace(plain, hall))
    rig.start(web=False)
    try:
        manager = rig.user("quan-ly")
        sent = rig.service.send(manager, AnnouncementRequest(
            targets=["ap-a1", "b-01"], audio=tone(rig.tmp / "short.wav", 1.5), level="emergency",
        ))
        assert sent.clusters == ["a-01", "a-02", "b-01"]
        audio = dict(sent.audio)
        assert sorted(audio) == ["full-range", "horn"]
        assert audio["horn"] != audio["full-range"]
        rig.wait_states(f"{sent.id}+horn", {"a-01": {"finished"}, "a-02": {"finished"}})
        rig.wait_states(f"{sent.id}+full-range", {"b-01": {"finished"}})
        for cluster, profile in (("a-01", "horn"), ("a-02", "horn"), ("b-01", "full-range")):
            held = {p.stem for p in (rig.tmp / "agents" / cluster / "content").glob("*.opus")}
            assert audio[profile] in held, cluster
            assert audio[next(p for p in audio if p != profile)] not in held, cluster
        done = rig.service.get(manager, sent.id)
        assert [p.status for p in done.progress] == ["finished"] * 3
        assert done.all_played
        # The listen buttons play the very files the clusters were sent.
        for sha256 in audio.values():
            path = rig.service.audio_file(manager, sent.id, sha256)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256

        longer = rig.service.send(manager, AnnouncementRequest(
            targets=["ap-a1", "b-01"], audio=tone(rig.tmp / "long.wav", 30.0), level="emergency",
        ))
        rig.wait_states(f"{longer.id}+horn", {"a-01": {"playing"}, "a-02": {"playing"}})
        rig.wait_states(f"{longer.id}+full-range", {"b-01": {"playing"}})
        rig.service.stop(manager, longer.id)
        rig.wait_states(f"{longer.id}+horn", {"a-01": {"interrupted"}, "a-02": {"interrupted"}})
        rig.wait_states(f"{longer.id}+full-range", {"b-01": {"interrupted"}})
        stopped = rig.service.get(manager, longer.id)
        assert [p.status for p in stopped.progress] == ["interrupted"] * 3
    finally:
        rig.stop()


def test_an_offline_cluster_is_shown_offline(rig: WebRig) -> None:
    rig.agents.pop("a-03").stop()
    wait_until(lambda: rig.state("a-03") == "offline", 20, "a-03 to be seen offline")
    sent = rig.service.send(
        rig.user("can-bo-a"),
        AnnouncementRequest(targets=["xa-a"], audio=tone(rig.tmp / "u.wav", 1.0)),
    )
    rig.wait_states(sent.id, {"a-01": {"finished"}, "a-02": {"finished"}})
    found = rig.service.get(rig.user("can-bo-a"), sent.id)
    by_cluster = {p.cluster: p for p in found.progress}
    assert by_cluster["a-03"].status == "offline"
    assert "not connected" in (by_cluster["a-03"].reason or "")
    assert found.done
    assert found.all_played
