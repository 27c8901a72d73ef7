"""CAP 1.2 intake: area matching (geocode, polygon, circle), policies, Cancel and Update."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import cap_xml
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
    with httpx.Client(base_url=cap_rig.url, timeout=60) as c:
        login = c.post("/api/v1/login", json={"name": "quan-ly", "password": PASSWORD}).json()
        auth = {"Authorization": f"Bearer {login['token']}"}
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


@pytest.mark.parametrize("cap_rig", ["approve"], indirect=True)
def test_an_alert_waits_for_a_manager_when_the_policy_says_so(cap_rig: WebRig) -> None:
    with httpx.Client(base_url=cap_rig.url, timeout=60) as c:
        login = c.post("/api/v1/login", json={"name": "quan-ly", "password": PASSWORD}).json()
        auth = {"Authorization": f"Bearer {login['token']}"}
        result = _post(c, auth, cap_xml())
        assert result["action"] == "pending"
        assert result["announcements"] == []
        assert cap_rig.service.recent(cap_rig.user("quan-ly")) == []
        assert cap_rig.ctx.cap is not None
        [pending] = cap_rig.ctx.cap.pending()
        time.sleep(0)
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
