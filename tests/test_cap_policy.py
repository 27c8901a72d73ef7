"""CAP alerts handled as the warning authority meant them: time, level, language, area,
senders and signatures (controller/cap_policy.py, controller/cap.py), and the dry run.

The decisions are tested as the pure function they are, row by row of the policy table
in docs/cap.md; what the intake does with them (held, repeated, expired, cancelled
before its time) on a real controller with real agents (conftest's cap_rig); the XML
Signature with a throwaway certificate made here; `loa-controller cap check` as a
process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hostile_xml import SPEC_EXAMPLES
from web_rig import FLEET, WebRig

from controller.cap import CapError, CapIntake, check_signature, parse_cap, preview
from controller.config import CapConfig, CapRule, CapSender
from controller.fleet import Fleet, load_fleet

NOW = datetime(2026, 10, 20, 6, 5, tzinfo=UTC)


def alert(
    *,
    identifier: str = "VN-KTTV-2026-101",
    sender: str = "kttv@example.vn",
    msg_type: str = "Alert",
    references: str = "",
    severity: str = "Severe",
    urgency: str = "Immediate",
    certainty: str = "Observed",
    language: str = "vi-VN",
    times: str = "",
    area: str = '<geocode><valueName>ma</valueName><value>31400</value></geocode>',
    infos: int = 1,
    sent: str = "2026-10-20T13:00:00+07:00",
) -> bytes:
    """A CAP 1.2 alert for commune xa-b (31400: cluster b-01, a quarter of the fleet)."""
    refs = f"<references>{references}</references>" if references else ""
    blocks = "".join(f"""
  <info>
    <language>{language}</language>
    <category>Met</category><event>Lũ</event>
    <urgency>{urgency}</urgency><severity>{severity}</severity><certainty>{certainty}</certainty>
    {times}
    <headline>Cảnh báo lũ đợt {n + 1}</headline>
    <instruction>Bà con di chuyển lên chỗ cao</instruction>
    <area><areaDesc>Xã Bình</areaDesc>{area}</area>
  </info>""" for n in range(infos))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>{sender}</sender>
  <sent>{sent}</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {refs}{blocks}
</alert>""".encode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    path = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    return load_fleet(path)


def judged(fleet: Fleet, raw: bytes, config: CapConfig | None = None, now: datetime = NOW
           ) -> Any:  # fmt: skip
    seen = preview(parse_cap(raw), fleet, config or CapConfig(), now)
    assert seen.decision is not None
    return seen.decision


# --- the default table, row by row (docs/cap.md) ------------------------------------------


@pytest.mark.parametrize(("severity", "urgency", "certainty"), [
    ("Extreme", "Immediate", "Observed"), ("Severe", "Expected", "Likely"),
    ("Extreme", "Expected", "Likely"), ("Severe", "Immediate", "Observed"),
])  # fmt: skip
def test_severe_immediate_and_sure_goes_out_at_once_as_an_emergency(
    fleet: Fleet, severity: str, urgency: str, certainty: str
) -> None:
    d = judged(fleet, alert(severity=severity, urgency=urgency, certainty=certainty))
    assert (d.action, d.level, d.rule, d.repeat) == ("send", "emergency", 1, 2)


@pytest.mark.parametrize(("severity", "urgency", "certainty"), [
    ("Minor", "Immediate", "Observed"), ("Moderate", "Immediate", "Observed"),
    ("Unknown", "Immediate", "Observed"), ("Severe", "Future", "Observed"),
    ("Severe", "Past", "Observed"), ("Severe", "Immediate", "Possible"),
    ("Extreme", "Unknown", "Unlikely"),
])  # fmt: skip
def test_anything_less_waits_for_a_manager_at_priority(
    fleet: Fleet, severity: str, urgency: str, certainty: str
) -> None:
    d = judged(fleet, alert(severity=severity, urgency=urgency, certainty=certainty))
    assert (d.action, d.level, d.rule) == ("approve", "priority", 2)
    assert f"severity {severity}, urgency {urgency}, certainty {certainty}" in d.why
    assert f"mức nghiêm trọng {severity}, độ cấp bách {urgency}" in d.why_in("vi")


def test_a_province_s_own_table_sets_level_repeats_and_interval(fleet: Fleet) -> None:
    config = CapConfig(rules=[
        CapRule(severity=["Moderate"], urgency=["*"], certainty=["*"], action="send",
                level="priority", repeat=3, every=timedelta(minutes=30)),
    ])  # fmt: skip
    d = judged(fleet, alert(severity="Moderate"), config)
    assert (d.action, d.level, d.repeat, d.every) == ("send", "priority", 3,
                                                      timedelta(minutes=30))
    none = judged(fleet, alert(severity="Severe"), config)  # no row: the safe answer
    assert none.action == "approve"
    assert "no rule of the policy matches" in none.why


def test_policy_approve_holds_every_alert_for_a_manager(fleet: Fleet) -> None:
    d = judged(fleet, alert(), CapConfig(policy="approve"))
    assert (d.action, d.level) == ("approve", "emergency")
    assert "a manager approves every alert" in d.why


# --- time ------------------------------------------------------------------------------


def test_an_expired_alert_is_never_aired(fleet: Fleet) -> None:
    d = judged(fleet, alert(times="<expires>2026-10-20T13:00:00+07:00</expires>"))
    assert d.action == "expired"
    assert "expired at 2026-10-20T13:00:00+07:00" in d.why


def test_a_future_onset_is_held_until_then_or_aired_at_once_by_policy(fleet: Fleet) -> None:
    raw = alert(times="<onset>2026-10-20T14:00:00+07:00</onset>"
                      "<expires>2026-10-20T20:00:00+07:00</expires>")  # fmt: skip
    held = judged(fleet, raw)
    assert (held.action, held.air_at) == ("hold", datetime(2026, 10, 20, 7, 0, tzinfo=UTC))
    assert held.expires_at == datetime(2026, 10, 20, 13, 0, tzinfo=UTC)
    now = judged(fleet, raw, CapConfig(future="now"))
    assert (now.action, now.air_at) == ("send", None)
    past = judged(fleet, raw, now=datetime(2026, 10, 20, 7, 30, tzinfo=UTC))
    assert past.action == "send"  # its time has come


def test_the_specification_s_thunderstorm_moved_onto_our_commune_has_expired(
    fleet: Fleet,
) -> None:
    """CAP 1.2's own example, its polygon moved onto Xã An: it expired in 2003."""
    raw = (SPEC_EXAMPLES / "thunderstorm.xml").read_bytes()
    storm = raw.split(b"<polygon>")[0] + (
        b"<polygon>9.75,105.75 9.85,105.75 9.85,105.85 9.75,105.85 9.75,105.75</polygon>"
    ) + raw.split(b"</polygon>")[1]
    seen = preview(parse_cap(storm), fleet, CapConfig(), NOW)
    assert seen.clusters == ["a-01", "a-02"]
    assert seen.decision is not None
    assert seen.decision.action == "expired"
    assert "2003-06-17T16:00:00-07:00" in seen.decision.why


# --- language, area, senders -------------------------------------------------------------


def test_an_alert_with_no_vietnamese_info_waits_with_the_reason(fleet: Fleet) -> None:
    d = judged(fleet, alert(language="en-US"))
    assert d.action == "approve"
    assert "no <info> in Vietnamese (languages: en-US)" in d.why


def test_several_vietnamese_infos_are_spoken_in_order(fleet: Fleet) -> None:
    found = parse_cap(alert(infos=3))
    assert found.text == " ".join(
        f"Cảnh báo lũ đợt {n}. Bà con di chuyển lên chỗ cao." for n in (1, 2, 3)
    )


def test_an_area_over_the_share_or_naming_other_provinces_waits(fleet: Fleet) -> None:
    province = '<geocode><valueName>ma</valueName><value>93</value></geocode>'
    wide = judged(fleet, alert(area=province))
    assert wide.action == "approve"
    assert "takes 4 of the fleet's 4 clusters, more than 50%" in wide.why
    two = province.replace("93", "31400") + province.replace("93", "94")
    other = judged(fleet, alert(area=two))
    assert other.action == "approve"
    assert "names other provinces too (94)" in other.why
    trusted = CapConfig(senders=[CapSender(sender="*@example.vn", wide_areas=True)])
    assert judged(fleet, alert(area=province), trusted).action == "send"


def test_senders_not_listed_are_refused_or_held_as_the_policy_says(fleet: Fleet) -> None:
    listed = [CapSender(sender="*@kttv.gov.vn")]
    refused = judged(fleet, alert(), CapConfig(senders=listed))
    assert refused.action == "refuse"
    assert "kttv@example.vn is not one the policy lists (*@kttv.gov.vn)" in refused.why
    held = judged(fleet, alert(), CapConfig(senders=listed, unknown_senders="approve"))
    assert held.action == "approve"
    ours = judged(fleet, alert(sender="canhbao@kttv.gov.vn"), CapConfig(senders=listed))
    assert ours.action == "send"


# --- XML Signature -----------------------------------------------------------------------


def _certificate(tmp_path: Path, name: str) -> tuple[Any, bytes, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / f"{name}.pem"
    path.write_bytes(pem)
    return key, pem, path


def _signed(raw: bytes, key: Any, pem: bytes) -> bytes:
    from lxml import etree
    from signxml.signer import XMLSigner

    root = etree.fromstring(raw)
    signed = XMLSigner(c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#").sign(
        root, key=key, cert=pem.decode()
    )
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def test_a_signed_alert_is_checked_and_a_tampered_or_unsigned_one_refused(
    tmp_path: Path,
) -> None:
    key, pem, path = _certificate(tmp_path, "kttv")
    _other_key, other_pem, _ = _certificate(tmp_path, "impostor")
    config = CapConfig(senders=[CapSender(sender="kttv@example.vn", certificate=path)])
    raw = _signed(alert(), key, pem)
    taken = parse_cap(check_signature(raw, parse_cap(raw), config))
    assert taken.signed is False  # what was checked: the alert without its signature
    assert taken.text.startswith("Cảnh báo lũ đợt 1")

    tampered = raw.replace("Bà con di chuyển".encode(), "Bà con ở yên".encode())
    with pytest.raises(CapError, match="does not verify with the certificate of"):
        check_signature(tampered, parse_cap(tampered), config)
    forged = _signed(alert(), _other_key, other_pem)  # signed, by someone else's key
    with pytest.raises(CapError, match="does not verify"):
        check_signature(forged, parse_cap(forged), config)
    with pytest.raises(CapError, match="carries no XML Signature: refused"):
        check_signature(alert(), parse_cap(alert()), config)
    # A sender the policy names no certificate for: taken as it is.
    assert check_signature(alert(), parse_cap(alert()), CapConfig()) == alert()


# --- what the intake does with it, on a real controller ----------------------------------


def _intake(rig: WebRig, **config: Any) -> CapIntake:
    return CapIntake(rig.service, CapConfig(repeat=1, max_share=1.0, **config))


def _ahead(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(timespec="seconds")


def test_a_held_alert_airs_at_its_time_and_a_cancel_before_it_drops_it(cap_rig: WebRig) -> None:
    intake = _intake(cap_rig)
    who = cap_rig.user("quan-ly")
    onset = f"<onset>{_ahead(10)}</onset><expires>{_ahead(60)}</expires>"
    held = intake.take(alert(identifier="held-1", times=onset), who)
    assert held.action == "held"
    due = intake.next_due()
    assert due is not None
    assert intake.run_due(due - timedelta(seconds=1)) == []  # not yet
    [aid] = intake.run_due(due)
    found = cap_rig.service.get(who, aid)
    assert (found.clusters, found.source) == (["b-01"], "cap")
    assert found.latest_start <= datetime.fromisoformat(_ahead(60))

    intake.take(alert(identifier="held-2", times=onset), who)
    ref = "kttv@example.vn,held-2,2026-10-20T13:00:00+07:00"
    cancel = intake.take(alert(identifier="cancel-2", msg_type="Cancel", references=ref), who)
    assert cancel.action == "cancelled"
    assert intake.run_due(datetime.now(UTC) + timedelta(minutes=30)) == []


def test_repeats_air_again_until_the_alert_expires(cap_rig: WebRig) -> None:
    rule = CapRule(severity=["*"], urgency=["*"], certainty=["*"], action="send",
                   every=timedelta(minutes=20))  # fmt: skip
    intake = _intake(cap_rig, rules=[rule])
    who = cap_rig.user("quan-ly")
    first = intake.take(alert(identifier="again", times=f"<expires>{_ahead(50)}</expires>"),
                        who)  # fmt: skip
    assert first.action == "sent"
    due = intake.next_due()
    assert due is not None
    assert timedelta(minutes=19) < due - datetime.now(UTC) <= timedelta(minutes=20)
    # The intake is told the time (the announcements themselves go out now).
    assert len(intake.run_due(due)) == 1  # at +20 min
    again = intake.next_due()
    assert again == due + timedelta(minutes=20)  # +40: before it expires at +50
    assert len(intake.run_due(again)) == 1
    assert intake.next_due() is None  # +60 would be past its expiry: no more


# --- the dry run -----------------------------------------------------------------------


def _config(tmp_path: Path, cap: str) -> Path:
    (tmp_path / "fleet.yaml").write_text(FLEET, encoding="utf-8")
    (tmp_path / "playlists").mkdir(exist_ok=True)
    config = tmp_path / "controller.yaml"
    config.write_text(
        "broker_url: mqtt://127.0.0.1:1883\nfleet: fleet.yaml\nplaylists: [playlists]\n"
        f"store_url: sqlite:///{tmp_path / 'c.db'}\nprivate_key: controller.key\n"
        f"content_dir: content\ntimezone: Asia/Ho_Chi_Minh\nweb:\n  users_file: users.yaml\n"
        "  work_dir: web\n"
        f"  cap:\n{cap}",
        encoding="utf-8",
    )
    return config


def _check(config: Path, alert_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "cap", "check", str(alert_file), "--config",
         str(config), *args], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cap_check_says_an_expired_alert_will_not_air_and_why(tmp_path: Path) -> None:
    config = _config(tmp_path, "    repeat: 2\n")
    expired = tmp_path / "expired.xml"
    expired.write_bytes(alert(times="<expires>2026-10-20T13:00:00+07:00</expires>"))
    done = _check(config, expired, "--at", "2026-10-20T14:00:00+07:00")
    assert done.returncode == 0, done.stderr
    assert "would not air: it has expired" in done.stdout
    assert "why: it expired at 2026-10-20T13:00:00+07:00 (its <expires>)" in done.stdout
    vi = _check(config, expired, "--at", "2026-10-20T14:00:00+07:00", "--lang", "vi")
    assert "cảnh báo đã hết hạn lúc 2026-10-20T13:00:00+07:00 (theo <expires>)" in vi.stdout
    assert "Xã Bình: b-01" in done.stdout
    assert "words: Cảnh báo lũ đợt 1. Bà con di chuyển lên chỗ cao." in done.stdout
    ok = json.loads(_check(config, expired, "--at", "2026-10-20T12:30:00+07:00",
                           "--json").stdout)  # fmt: skip
    assert (ok["outcome"], ok["level"], ok["repeat"], ok["by_commune"]) == (
        "send", "emergency", 2, {"Xã Bình": ["b-01"]})
    assert not (tmp_path / "c.db").exists()  # nothing stored


def test_cap_check_names_a_file_that_is_not_an_alert(tmp_path: Path) -> None:
    config = _config(tmp_path, "    repeat: 2\n")
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<alert")
    done = _check(config, bad)
    assert done.returncode == 1
    assert f"{bad}: would be refused: not well-formed XML" in done.stderr


def test_a_flood_warning_over_several_communes_and_a_province_wide_polygon(
    fleet: Fleet,
) -> None:
    two = ('<geocode><valueName>ma</valueName><value>31399</value></geocode>'
           '<geocode><valueName>ma</valueName><value>31400</value></geocode>')  # fmt: skip
    both = preview(parse_cap(alert(area=two)), fleet, CapConfig(max_share=1.0), NOW)
    assert both.clusters == ["a-01", "a-02", "a-03", "b-01"]
    assert both.decision is not None
    assert both.decision.action == "send"
    province = "<polygon>9.0,105.0 10.5,105.0 10.5,106.5 9.0,106.5 9.0,105.0</polygon>"
    wide = preview(parse_cap(alert(area=province)), fleet, CapConfig(), NOW)
    assert wide.clusters == ["a-01", "a-02", "a-03", "b-01"]
    assert wide.decision is not None
    assert wide.decision.action == "approve"
    assert "takes 4 of the fleet's 4 clusters" in wide.decision.why


def test_the_approvals_page_shows_what_was_held_expired_or_refused(cap_rig: WebRig) -> None:
    from web_rig import PASSWORD

    who = cap_rig.user("quan-ly")
    assert cap_rig.ctx.cap is not None
    intake = cap_rig.ctx.cap
    intake.take(alert(identifier="later", times=f"<onset>{_ahead(30)}</onset>"), who)
    intake.take(alert(identifier="too-late", times="<expires>2026-10-20T13:00:00+07:00</expires>",
                      sent="2026-10-20T12:00:00+07:00"), who)  # fmt: skip
    with cap_rig.client() as c:
        page = c.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        c.post("/login", data={"name": "quan-ly", "password": PASSWORD, "csrf_token": token})
        text = c.get("/approvals").text
    listed = text.split('id="cap-not-aired"')[1].split("</ul>")[0]
    assert 'data-state="scheduled"' in listed
    assert "chờ đến" in listed
    assert 'data-state="expired"' in listed
    expired = listed.split('data-state="expired"')[1].split("</li>")[0]
    assert "đã hết hạn lúc" in expired
    assert "13:00" in expired  # 06:00 UTC, in the fleet's zone
