"""CAP 1.2 intake: area matching (geocode, polygon, circle), policies, Cancel and Update."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BrokerUnderTest, require
from web_rig import PASSWORD, WebRig

from controller.cap import Area, CapError, clusters_in_area, parse_cap
from controller.config import CapConfig
from controller.fleet import load_fleet


def cap(
    identifier: str = "VN-KTTV-2026-001",
    msg_type: str = "Alert",
    status: str = "Actual",
    area: str = "<geocode><valueName>MA_XA</valueName><value>31399</value></geocode>",
    references: str = "",
) -> bytes:
    refs = f"<references>{references}</references>" if references else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>kttv@example.vn</sender>
  <sent>2026-10-20T06:00:00+07:00</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {refs}
  <info>
    <language>en-US</language>
    <category>Met</category><event>Flood</event>
    <urgency>Immediate</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <headline>Flood warning</headline>
  </info>
  <info>
    <language>vi-VN</language>
    <category>Met</category><event>Lũ</event>
    <urgency>Immediate</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <headline>Cảnh báo lũ trên sông Cái Côn</headline>
    <instruction>Bà con ven sông di chuyển lên chỗ cao</instruction>
    <area><areaDesc>Xã An</areaDesc>{area}</area>
  </info>
</alert>""".encode()


def test_parse_picks_the_vietnamese_info_and_speaks_headline_and_instruction() -> None:
    alert = parse_cap(cap())
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
        parse_cap(cap(area="<circle>9.8 105.8</circle>"))


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


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest, request: Any) -> Iterator[WebRig]:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    r = WebRig(tmp_path, broker.address, cap=CapConfig(policy=request.param, repeat=1))
    r.start()
    try:
        yield r
    finally:
        r.stop()


def _post(c: httpx.Client, auth: dict[str, str], body: bytes) -> dict[str, Any]:
    r = c.post("/api/v1/cap", headers={**auth, "Content-Type": "application/xml"},
               content=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def _wait(rig: WebRig, aid: str, clusters: list[str], kinds: set[str]) -> None:
    rig.wait_states(aid, {c: kinds for c in clusters})


@pytest.mark.parametrize("rig", ["send"], indirect=True)
def test_an_alert_for_our_commune_is_sent_at_once_and_cancel_stops_it(rig: WebRig) -> None:
    with httpx.Client(base_url=rig.url, timeout=60) as c:
        login = c.post("/api/v1/login", json={"name": "quan-ly", "password": PASSWORD}).json()
        auth = {"Authorization": f"Bearer {login['token']}"}
        officer = c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD})
        r = c.post("/api/v1/cap", content=cap(),
                   headers={"Authorization": f"Bearer {officer.json()['token']}"})
        assert r.status_code == 403  # managers and integrations signed in as one

        test = _post(c, auth, cap(identifier="drill", status="Exercise"))
        assert test["action"] == "ignored"
        result = _post(c, auth, cap())
        assert result["action"] == "sent"
        [aid] = result["announcements"]
        found = rig.service.get(rig.user("quan-ly"), aid)
        assert found.level == "emergency"
        assert found.clusters == ["a-01", "a-02", "a-03"]
        assert found.source == "cap"
        assert found.text == (
            "Cảnh báo lũ trên sông Cái Côn. Bà con ven sông di chuyển lên chỗ cao."
        )
        _wait(rig, aid, found.clusters, {"delivered", "playing", "finished"})

        cancel = _post(c, auth, cap(
            identifier="VN-KTTV-2026-002", msg_type="Cancel",
            references="kttv@example.vn,VN-KTTV-2026-001,2026-10-20T06:00:00+07:00",
        ))
        assert cancel["action"] == "cancelled"
        assert cancel["announcements"] == [aid]
        assert rig.service.get(rig.user("quan-ly"), aid).stopped_by == "quan-ly"
        actions = [e.action for e in rig.service.audit_entries(rig.user("quan-ly"))]
        assert "cap-alert" in actions
        assert "cap-cancel" in actions
        nowhere = _post(c, auth, cap(identifier="far", area="<circle>21.0,105.8 10</circle>"))
        assert nowhere["action"] == "no-clusters"


@pytest.mark.parametrize("rig", ["approve"], indirect=True)
def test_an_alert_waits_for_a_manager_when_the_policy_says_so(rig: WebRig) -> None:
    with httpx.Client(base_url=rig.url, timeout=60) as c:
        login = c.post("/api/v1/login", json={"name": "quan-ly", "password": PASSWORD}).json()
        auth = {"Authorization": f"Bearer {login['token']}"}
        result = _post(c, auth, cap())
        assert result["action"] == "pending"
        assert result["announcements"] == []
        assert rig.service.recent(rig.user("quan-ly")) == []
        assert rig.ctx.cap is not None
        [pending] = rig.ctx.cap.pending()
        time.sleep(0)
        aid = rig.ctx.cap.send(pending["ref"], rig.user("quan-ly"))
        assert rig.ctx.cap.pending() == []
        _wait(rig, aid, ["a-01", "a-02", "a-03"], {"delivered", "playing", "finished"})


@pytest.mark.parametrize("rig", ["send"], indirect=True)
def test_alerts_dropped_as_files_are_taken_in_and_filed(rig: WebRig) -> None:
    from controller.cap import CapFolder

    assert rig.ctx.cap is not None
    inbox = rig.tmp / "cap-inbox"
    inbox.mkdir()
    folder = CapFolder(rig.ctx.cap, inbox, "tinh-t", interval_s=1.0)
    (inbox / "flood.xml").write_bytes(cap(identifier="file-1"))
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
    [sent] = [a for a in rig.service.recent(rig.user("quan-ly")) if a.source == "cap"]
    assert sent.clusters == ["a-01", "a-02", "a-03"]
