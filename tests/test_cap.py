"""CAP 1.2 intake: area matching (geocode, polygon, circle), policies, Cancel and Update."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import cap_xml
from hostile_xml import (
    ATTACKS,
    ENCODINGS,
    OPENS,
    SPEC_EXAMPLES,
    Attack,
    Encoding,
    hostile,
)
from web_rig import PASSWORD, WebRig

from controller.cap import Area, CapError, clusters_in_area, parse_cap
from controller.fleet import load_fleet


def test_parse_picks_the_vietnamese_info_and_speaks_headline_and_instruction() -> None:
    alert = parse_cap(cap_xml())
    assert alert.ref == "kttv@example.vn,VN-KTTV-2026-001,2026-10-20T06:00:00+07:00"
    assert alert.text == "Cảnh báo lũ trên sông Cái Côn. Bà con ven sông di chuyển lên chỗ cao."
    assert alert.areas[0].geocodes == ["31399"]


def test_documents_that_are_not_cap_are_refused() -> None:
    with pytest.raises(CapError, match="DTDs"):
        parse_cap(b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>')
    with pytest.raises(CapError, match=r"not a CAP 1\.2"):
        parse_cap(b"<alert><identifier>1</identifier></alert>")
    with pytest.raises(CapError, match="well-formed"):
        parse_cap(b"<alert")
    with pytest.raises(CapError, match="polygon or circle"):
        parse_cap(cap_xml(area="<circle>9.8 105.8</circle>"))


# --- XML from outside: DTDs and entities refused whatever the encoding -----------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_an_alert_with_a_dtd_is_refused_whatever_its_encoding(
    attack: Attack, encoding: Encoding, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("mat-khau-may-chu", encoding="utf-8")
    document = hostile(attack, encoding, secret)
    assert b"<!DOCTYPE" not in document.upper() or encoding == "utf-8"
    with OPENS.watching(secret) as opened, pytest.raises(CapError) as refused:
        parse_cap(document)
    message = str(refused.value)
    assert message.startswith("not accepted as a CAP alert: the document declares a DTD, "
                              "<!DOCTYPE alert ...>")
    assert "send the document without a <!DOCTYPE ...> declaration" in message
    assert opened == []
    assert "mat-khau-may-chu" not in message


def test_the_open_watch_sees_a_file_being_read(tmp_path: Path) -> None:
    """What the refusal tests rely on to say a file was not read."""
    secret = tmp_path / "secret.txt"
    secret.write_text("mat-khau-may-chu", encoding="utf-8")
    with OPENS.watching(secret) as opened:
        secret.read_text(encoding="utf-8")
    assert opened == [str(secret)]


def test_the_external_dtd_a_refusal_names_is_never_fetched(tmp_path: Path) -> None:
    dtd = tmp_path / "cap.dtd"
    dtd.write_text('<!ENTITY where "ở Xã An">', encoding="utf-8")
    document = hostile("external-dtd", "utf-16-le", tmp_path / "unused", dtd.as_uri())
    with OPENS.watching(dtd) as opened, pytest.raises(CapError, match=re.escape(dtd.as_uri())):
        parse_cap(document)
    assert opened == []


SPEC = {  # file: identifier, msgType, the text spoken, areas (geocodes, polygons, circles)
    "homeland-security.xml": ("43b080713727", "Alert", "Homeland Security Sets Code ORANGE",
                              [(0, 0, 0)]),
    "thunderstorm.xml": ("KSTO1055887203", "Alert", "SEVERE THUNDERSTORM WARNING",
                         [(3, 1, 0)]),
    "earthquake.xml": ("TRI13970876.2", "Update", "EQ 3.4 Imperial County CA", [(0, 0, 1)]),
    "amber-alert.xml": ("KAR0-0306112239-SW", "Alert", "Amber Alert in Los Angeles County",
                        [(1, 0, 0)]),
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_the_cap_specification_s_example_alerts_are_read(name: str) -> None:
    identifier, msg_type, headline, areas = SPEC[name]
    alert = parse_cap((SPEC_EXAMPLES / name).read_bytes())
    assert (alert.identifier, alert.msg_type, alert.status) == (identifier, msg_type, "Actual")
    assert alert.text.startswith(headline + ". ") or alert.text == headline + "."
    assert [(len(a.geocodes), len(a.polygons), len(a.circles)) for a in alert.areas] == areas


def test_the_specification_s_examples_in_detail() -> None:
    storm = parse_cap((SPEC_EXAMPLES / "thunderstorm.xml").read_bytes())
    assert storm.areas[0].geocodes == ["006109", "006009", "006003"]
    assert storm.areas[0].polygons[0][0] == (38.47, -120.14)
    assert storm.text == ("SEVERE THUNDERSTORM WARNING. TAKE COVER IN A SUBSTANTIAL SHELTER "
                          "UNTIL THE STORM PASSES.")
    quake = parse_cap((SPEC_EXAMPLES / "earthquake.xml").read_bytes())
    assert quake.references == ["trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"]
    assert quake.areas[0].circles == [(32.9525, -115.5527, 0.0)]
    amber = parse_cap((SPEC_EXAMPLES / "amber-alert.xml").read_bytes())
    assert amber.headline == "Amber Alert in Los Angeles County"  # no vi info: the first


def test_areas_match_clusters_by_code_polygon_and_circle(tmp_path: Path) -> None:
    from web_rig import FLEET

    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    fleet = load_fleet(tmp_path / "fleet.yaml")
    assert clusters_in_area(fleet, [Area(["31399"], [], [])]) == ["a-01", "a-02", "a-03"]
    assert clusters_in_area(fleet, [Area(["93"], [], [])]) == ["a-01", "a-02", "a-03", "b-01"]
    box = [(9.75, 105.75), (9.85, 105.75), (9.85, 105.85), (9.75, 105.85), (9.75, 105.75)]
    assert clusters_in_area(fleet, [Area([], [box], [])]) == ["a-01", "a-02"]
    # 9.50,105.50 is b-01; 5 km reaches nothing else.
    assert clusters_in_area(fleet, [Area([], [], [(9.51, 105.50, 5.0)])]) == ["b-01"]
    assert clusters_in_area(fleet, [Area(["99999"], [], [])]) == []


def _manager_auth(c: httpx.Client) -> dict[str, str]:
    """Sign the province manager in through the API; the header its calls carry."""
    login = c.post("/api/v1/login", json={"name": "quan-ly", "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {login['token']}"}


def _post(c: httpx.Client, auth: dict[str, str], body: bytes) -> dict[str, Any]:
    r = c.post("/api/v1/cap", headers={**auth, "Content-Type": "application/xml"},
               content=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def _wait(rig: WebRig, aid: str, clusters: list[str], kinds: set[str]) -> None:
    rig.wait_states(aid, {c: kinds for c in clusters})


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_an_alert_for_our_commune_is_sent_at_once_and_cancel_stops_it(cap_rig: WebRig) -> None:
    with cap_rig.client() as c:
        auth = _manager_auth(c)
        officer = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
        r = c.post("/api/v1/cap", content=cap_xml(),
                   headers={"Authorization": f"Bearer {officer.json()['token']}"})
        assert r.status_code == 403  # managers and integrations signed in as one

        test = _post(c, auth, cap_xml(identifier="drill", status="Exercise"))
        assert test["action"] == "ignored"
        result = _post(c, auth, cap_xml())
        assert result["action"] == "sent"
        [aid] = result["announcements"]
        found = cap_rig.service.get(cap_rig.user("quan-ly"), aid)
        assert found.level == "emergency"
        assert found.clusters == ["a-01", "a-02", "a-03"]
        assert found.source == "cap"
        assert found.text == (
            "Cảnh báo lũ trên sông Cái Côn. Bà con ven sông di chuyển lên chỗ cao."
        )
        _wait(cap_rig, aid, found.clusters, {"delivered", "playing", "finished"})

        cancel = _post(c, auth, cap_xml(
            identifier="VN-KTTV-2026-002", msg_type="Cancel",
            references="kttv@example.vn,VN-KTTV-2026-001,2026-10-20T06:00:00+07:00",
        ))
        assert cancel["action"] == "cancelled"
        assert cancel["announcements"] == [aid]
        assert cap_rig.service.get(cap_rig.user("quan-ly"), aid).stopped_by == "quan-ly"
        actions = [e.action for e in cap_rig.service.audit_entries(cap_rig.user("quan-ly"))]
        assert "cap-alert" in actions
        assert "cap-cancel" in actions
        nowhere = _post(c, auth, cap_xml(identifier="far",
                                          area="<circle>21.0,105.8 10</circle>"))
        assert nowhere["action"] == "no-clusters"


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_the_api_refuses_alerts_with_a_dtd_and_takes_the_specification_s_examples(
    cap_rig: WebRig, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("mat-khau-may-chu", encoding="utf-8")
    with cap_rig.client() as c, OPENS.watching(secret) as opened:
        auth = _manager_auth(c)
        for attack in ATTACKS:
            for encoding in ("utf-16-le", "utf-16-be"):
                r = c.post("/api/v1/cap", content=hostile(attack, encoding, secret),
                           headers={**auth, "Content-Type": "application/xml"})
                assert r.status_code == 400, (attack, encoding, r.text)
                assert r.json()["error"].startswith(
                    "not accepted as a CAP alert: the document declares a DTD"), r.text
                assert "mat-khau-may-chu" not in r.text
        for name in sorted(SPEC):
            taken = _post(c, auth, (SPEC_EXAMPLES / name).read_bytes())
            assert (taken["identifier"], taken["action"]) == (SPEC[name][0], "no-clusters")
    assert opened == []
    assert cap_rig.service.recent(cap_rig.user("quan-ly")) == []


@pytest.mark.parametrize("cap_rig", ["approve"], indirect=True)
def test_an_alert_waits_for_a_manager_when_the_policy_says_so(cap_rig: WebRig) -> None:
    with cap_rig.client() as c:
        auth = _manager_auth(c)
        result = _post(c, auth, cap_xml())
        assert result["action"] == "pending"
        assert result["announcements"] == []
        assert cap_rig.service.recent(cap_rig.user("quan-ly")) == []
        assert cap_rig.ctx.cap is not None
        [pending] = cap_rig.ctx.cap.pending()
        aid = cap_rig.ctx.cap.send(pending["ref"], cap_rig.user("quan-ly"))
        assert cap_rig.ctx.cap.pending() == []
        _wait(cap_rig, aid, ["a-01", "a-02", "a-03"], {"delivered", "playing", "finished"})


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_alerts_dropped_as_files_are_taken_in_and_filed(cap_rig: WebRig) -> None:
    from controller.cap import CapFolder

    assert cap_rig.ctx.cap is not None
    inbox = cap_rig.tmp / "cap-inbox"
    inbox.mkdir()
    folder = CapFolder(cap_rig.ctx.cap, inbox, "tinh-t", interval_s=1.0)
    (inbox / "flood.xml").write_bytes(cap_xml(identifier="file-1"))
    (inbox / "broken.xml").write_bytes(b"<alert")
    # Files younger than one interval may still be being written: not taken yet.
    assert folder.scan(now=time.time()) == []
    outcomes = dict(folder.scan(now=time.time() + 5))
    assert outcomes["flood.xml"] == "sent"
    assert outcomes["broken.xml"].startswith("failed: ")
    assert (inbox / "done" / "flood.xml").exists()
    reason = (inbox / "failed" / "broken.xml.reason.txt").read_text(encoding="utf-8")
    assert "well-formed" in reason
    assert list(inbox.glob("*.xml")) == []
    [sent] = [a for a in cap_rig.service.recent(cap_rig.user("quan-ly")) if a.source == "cap"]
    assert sent.clusters == ["a-01", "a-02", "a-03"]


FIRST_REF = "kttv@example.vn,VN-KTTV-2026-001,2026-10-20T06:00:00+07:00"


def _actions(rig: WebRig) -> list[tuple[str, str, str]]:
    """(action, user, subject) of the whole audit log, newest first."""
    return [(e.action, e.user, e.subject) for e in rig.service.audit.entries()]


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_a_cancel_taken_again_does_nothing_also_after_a_restart(cap_rig: WebRig) -> None:
    from controller.cap import CapFolder, CapIntake
    from controller.config import CapConfig

    cancel_xml = cap_xml(identifier="VN-KTTV-2026-002", msg_type="Cancel",
                         references=FIRST_REF, sent="2026-10-20T08:00:00+07:00")
    with cap_rig.client() as c:
        auth = _manager_auth(c)
        [aid] = _post(c, auth, cap_xml())["announcements"]
        assert _post(c, auth, cancel_xml)["announcements"] == [aid]
        stopped_at = cap_rig.service.get(cap_rig.user("quan-ly"), aid).stopped_at
        done = _actions(cap_rig)
        assert done[:2] == [("cap-cancel", "quan-ly", "VN-KTTV-2026-002"),
                            ("stop", "quan-ly", aid)]

        # The same Cancel again: nothing is stopped or written, and the answer says so.
        again = _post(c, auth, cancel_xml)
        assert again["action"] == "already-taken"
        assert again["announcements"] == []
        assert "kttv@example.vn,VN-KTTV-2026-002,2026-10-20T08:00:00+07:00" in again["detail"]
        assert "already taken" in again["detail"]
        assert "by quan-ly (applied)" in again["detail"]
        # So is the alert itself: no error, no second cap-alert row.
        alert_again = _post(c, auth, cap_xml())
        assert alert_again["action"] == "already-taken"
        assert f"(sent as {aid})" in alert_again["detail"]
        assert _actions(cap_rig) == done

    # A restarted intake on the same database remembers it, from the folder too.
    restarted = CapIntake(cap_rig.service, CapConfig(policy="send", repeat=1, max_share=1.0))
    assert restarted.known("kttv@example.vn,VN-KTTV-2026-002,2026-10-20T08:00:00+07:00")
    assert restarted.take(cancel_xml, cap_rig.user("quan-ly")).action == "already-taken"
    inbox = cap_rig.tmp / "cap-inbox"
    inbox.mkdir()
    (inbox / "cancel.xml").write_bytes(cancel_xml)
    folder = CapFolder(restarted, inbox, "tinh-t", interval_s=1.0)
    assert folder.scan(now=time.time() + 5) == [("cancel.xml", "already-taken")]
    assert _actions(cap_rig) == done
    assert cap_rig.service.get(cap_rig.user("quan-ly"), aid).stopped_at == stopped_at


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_an_update_taken_again_stops_and_sends_nothing_more(cap_rig: WebRig) -> None:
    from controller.cap import CapIntake
    from controller.config import CapConfig

    manager = cap_rig.user("quan-ly")
    intake = cap_rig.ctx.cap
    assert intake is not None
    [first] = intake.take(cap_xml(), manager).announcements
    update = cap_xml(identifier="VN-KTTV-2026-003", msg_type="Update", references=FIRST_REF,
                     sent="2026-10-20T07:00:00+07:00")
    [second] = intake.take(update, manager).announcements
    # An Update whose new alert is not aired: its cancelling part is remembered all the same.
    moved = cap_xml(identifier="VN-KTTV-2026-004", msg_type="Update",
                    references="kttv@example.vn,VN-KTTV-2026-003,2026-10-20T07:00:00+07:00",
                    sent="2026-10-20T09:00:00+07:00", area="<circle>21.0,105.8 10</circle>")
    assert intake.take(moved, manager).action == "no-clusters"
    assert cap_rig.service.get(manager, second).stopped_by == "quan-ly"
    done = _actions(cap_rig)
    assert [a for a in done if a[0] == "stop"] == [("stop", "quan-ly", second),
                                                   ("stop", "quan-ly", first)]

    restarted = CapIntake(cap_rig.service, CapConfig(policy="send", repeat=1, max_share=1.0))
    for intake_now in (intake, restarted):
        for message in (update, moved):
            assert intake_now.take(message, manager).action == "already-taken"
    assert _actions(cap_rig) == done
    assert [a.id for a in cap_rig.service.recent(manager)] == [second, first]


def _stored(rig: WebRig, ref: str) -> tuple[str, str, str | None]:
    """(msg_type, state, outcome) of the message `ref` in cap_alerts."""
    from sqlalchemy import text

    with rig.service.store.engine.connect() as conn:
        row = conn.execute(text("SELECT msg_type, state, outcome FROM cap_alerts WHERE ref = :r"),
                           {"r": ref}).one()
    return row[0], row[1], row[2]


def _first_alert_aired(
    rig: WebRig, c: httpx.Client
) -> tuple[dict[str, str], str, list[tuple[str, str, str]]]:
    """Sign the manager in and air the first alert to its end: the manager's header, the
    announcement, and the audit actions so far."""
    auth = _manager_auth(c)
    [aid] = _post(c, auth, cap_xml())["announcements"]
    _wait(rig, aid, ["a-01", "a-02", "a-03"], {"delivered", "playing", "finished"})
    return auth, aid, _actions(rig)


def _ref(identifier: str, sent: str) -> str:
    return f"kttv@example.vn,{identifier},{sent}"


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_a_cancel_that_is_not_actual_stops_nothing(
    cap_rig: WebRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controller.cap")
    manager = cap_rig.user("quan-ly")
    with cap_rig.client() as c:
        auth, aid, done = _first_alert_aired(cap_rig, c)

        sent = "2026-10-20T07:00:00+07:00"
        test = _post(c, auth, cap_xml(identifier="test-cancel", msg_type="Cancel",
                                      status="Test", references=FIRST_REF, sent=sent))
        assert test["action"] == "ignored"
        assert test["announcements"] == []
        assert "status Test" in test["detail"]
        assert "only Actual messages act on announcements" in test["detail"]
        assert _stored(cap_rig, _ref("test-cancel", sent)) == (
            "Cancel", "ignored", "ignored: status Test; only Actual messages act on announcements"
        )
        [said] = [r.getMessage() for r in caplog.records if "test-cancel" in r.getMessage()]
        assert "status Test" in said
        assert "ignored" in said
        assert FIRST_REF in said
        assert "left as they are" in said
        # Every other status that is not Actual changes nothing either.
        for status in ("Exercise", "System"):
            other = _post(c, auth, cap_xml(identifier=f"{status}-cancel", msg_type="Cancel",
                                           status=status, references=FIRST_REF, sent=sent))
            assert other["action"] == "ignored"
            assert f"status {status}" in other["detail"]
        draft = _post(c, {**auth, "Accept-Language": "vi"}, cap_xml(  # the client's language
            identifier="Draft-cancel", msg_type="Cancel", status="Draft", references=FIRST_REF,
            sent=sent))  # fmt: skip
        assert draft["action"] == "ignored"
        assert "trạng thái Draft: chỉ bản tin Actual mới tác động" in draft["detail"]
        assert _stored(cap_rig, _ref("Draft-cancel", sent))[2] == (  # stored in English
            "ignored: status Draft; only Actual messages act on announcements")
        found = cap_rig.service.get(manager, aid)
        assert found.stopped_at is None
        assert found.stopped_by is None
        assert _actions(cap_rig) == done  # no stop, no cap-cancel

        # Taken again, the answer says what became of it.
        again = _post(c, auth, cap_xml(identifier="test-cancel", msg_type="Cancel",
                                       status="Test", references=FIRST_REF, sent=sent))
        assert again["action"] == "already-taken"
        assert "(ignored: status Test; only Actual" in again["detail"]

        actual = _post(c, auth, cap_xml(identifier="VN-KTTV-2026-002", msg_type="Cancel",
                                        references=FIRST_REF, sent="2026-10-20T08:00:00+07:00"))
        assert actual["action"] == "cancelled"
        assert actual["announcements"] == [aid]
        assert cap_rig.service.get(manager, aid).stopped_by == "quan-ly"
        assert _actions(cap_rig)[:2] == [("cap-cancel", "quan-ly", "VN-KTTV-2026-002"),
                                         ("stop", "quan-ly", aid)]


@pytest.mark.parametrize("cap_rig", ["send"], indirect=True)
def test_an_update_that_is_not_actual_changes_nothing(
    cap_rig: WebRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controller.cap")
    manager = cap_rig.user("quan-ly")
    with cap_rig.client() as c:
        auth, first, done = _first_alert_aired(cap_rig, c)

        sent = "2026-10-20T07:00:00+07:00"
        drill = _post(c, auth, cap_xml(identifier="drill-update", msg_type="Update",
                                       status="Exercise", references=FIRST_REF, sent=sent))
        assert drill["action"] == "ignored"
        assert drill["announcements"] == []
        # The original keeps playing; nothing new is sent, stopped or written.
        assert cap_rig.service.get(manager, first).stopped_at is None
        assert [a.id for a in cap_rig.service.recent(manager)] == [first]
        assert _actions(cap_rig) == done
        assert "status Exercise" in drill["detail"]
        assert "nothing new is sent" in drill["detail"]
        assert _stored(cap_rig, _ref("drill-update", sent)) == (
            "Update", "ignored",
            "ignored: status Exercise; only Actual messages act on announcements",
        )
        [said] = [r.getMessage() for r in caplog.records if "drill-update" in r.getMessage()]
        assert "status Exercise" in said
        assert "nothing new is sent" in said

        actual = _post(c, auth, cap_xml(identifier="VN-KTTV-2026-003", msg_type="Update",
                                        references=FIRST_REF, sent="2026-10-20T08:00:00+07:00"))
        assert actual["action"] == "sent"
        [second] = actual["announcements"]
        assert cap_rig.service.get(manager, first).stopped_by == "quan-ly"
        assert [a.id for a in cap_rig.service.recent(manager)] == [second, first]
