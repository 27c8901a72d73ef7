"""The manager's pages in headless Chromium on a running controller with real agents.

Reports: the numbers in the table and the chart are those of the events the test
stored, and the CSV and XLSX the page hands out say the same; a commune officer is not
shown them. Fleet: every cluster with its state, filtered by commune and state, on a map
drawn from the coordinates (no tile server, no network), a cluster going offline seen
as such, a cluster's page with its events; an officer sees only their commune."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BrokerUnderTest, require, wait_until
from report_support import EXPECTED, write_known_history
from web_rig import PASSWORD, TZ, WebRig

from controller.schedule import plan

CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DAY_QUERY = "from=2026-11-27&to=2026-11-27"


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    require("chromium", chromium is not None, "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("playwright", False, "pip install playwright")
        raise
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    require("espeak-ng", shutil.which("espeak-ng") is not None, "apt-get install espeak-ng")
    r = WebRig(tmp_path, broker.address)
    r.start()
    write_known_history(r.controller.store, states_directly=True)
    try:
        yield r
    finally:
        r.stop()


def sign_in(page: Any, rig: WebRig, name: str) -> None:
    page.goto(f"{rig.url}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{rig.url}/send")


def table(page: Any) -> dict[str, dict[str, str]]:
    """The report table's figures, by row key and column."""
    found: dict[str, dict[str, str]] = page.locator("#report tbody tr").evaluate_all(
        """rows => Object.fromEntries(rows.map(r => [r.dataset.key, Object.fromEntries(
             [...r.querySelectorAll('td[data-col]')].map(c => [c.dataset.col,
                                                               c.textContent.trim()]))]))"""
    )
    return found


def test_the_report_page_shows_what_the_events_say_and_hands_out_the_same(
    rig: WebRig, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(accept_downloads=True)
    page.set_default_timeout(30_000)
    sign_in(page, rig, "quan-ly")
    page.click("a[href='/reports']")
    assert page.locator("h1").inner_text() == "Báo cáo kết quả phát"

    # Choose the day and the rows in the form, as a manager would.
    page.fill("input[name=from]", "2026-11-27")
    page.fill("input[name=to]", "2026-11-27")
    page.select_option("select[name=by]", "cluster")
    page.click("#report-form button[type=submit]")
    page.wait_for_url(f"{rig.url}/reports?{DAY_QUERY}&by=cluster")
    rows = table(page)
    assert set(rows) == {"a-01", "a-02", "a-03", "b-01", "total"}
    for cluster, figures in EXPECTED.items():
        scheduled, aired, cut, missed, failed, none, seconds, offline, _ = figures
        assert rows[cluster] == {
            "scheduled": str(scheduled), "aired": str(aired), "interrupted": str(cut),
            "missed": str(missed), "failed": str(failed), "no_result": str(none),
            "seconds": f"{seconds:.1f}", "live": "0.0", "offline": f"{offline:.0f}",
            "reasons": rows[cluster]["reasons"],
        }, cluster
    assert rows["a-03"]["scheduled"] == "0"
    assert rows["total"]["scheduled"] == "8"
    assert rows["b-01"]["reasons"] == "missed: not received ×1"

    # The chart: aired in full against scheduled, per commune, bars to scale.
    bars = page.locator("#chart g.bar").evaluate_all(
        """gs => gs.map(g => [g.dataset.commune, g.dataset.aired, g.dataset.scheduled,
             g.querySelector('rect.aired').getBBox().width,
             g.querySelector('rect.scheduled').getBBox().width])"""
    )
    assert [b[:3] for b in bars] == [["xa-a", "3", "6"], ["xa-b", "0", "2"]]
    assert bars[0][3] == pytest.approx(bars[0][4] / 2)  # 3 of 6
    assert bars[1][3] == 0
    assert bars[1][4] == pytest.approx(bars[0][4] / 3)  # 2 scheduled against 6

    # The cluster × day heat map: aired in full of scheduled, coloured by the share.
    heat = page.locator("#heatmap tbody tr").evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.cluster, [...r.querySelectorAll("
        "'td[data-day]')].map(c => [c.dataset.day, c.textContent.trim(), c.className])]))"
    )
    assert heat == {
        "a-01": [["2026-11-27", "2/3", "heat-2"]],
        "a-02": [["2026-11-27", "1/3", "heat-1"]],
        "a-03": [["2026-11-27", "", "none"]],
        "b-01": [["2026-11-27", "0/2", "heat-0"]],
    }

    # The downloads say the same, with Vietnamese headers.
    with page.expect_download() as got:
        page.click("#csv")
    text = Path(got.value.path()).read_text(encoding="utf-8-sig")
    written = {r["Mã cụm loa"]: r for r in csv.DictReader(io.StringIO(text))}
    assert written["a-02"]["Số giây đã phát"] == "85.0"
    assert written["b-01"]["Thời gian mất kết nối (giây)"] == "9000.0"
    assert written["Tổng cộng"]["Lượt phát theo lịch"] == "8"
    with page.expect_download() as got:
        page.click("#xlsx")
    saved = tmp_path / "bao-cao.xlsx"
    got.value.save_as(saved)
    from openpyxl import load_workbook

    sheet = load_workbook(saved).worksheets[0]
    header = [c.value for c in sheet[1]]
    xlsx = {r[0]: dict(zip(header, r, strict=True)) for r in sheet.iter_rows(min_row=2,
                                                                            values_only=True)}
    assert xlsx["a-01"]["Đã phát xong mức khẩn cấp"] == 1
    assert xlsx["a-01"]["Số giây đã phát"] == 110

    # By programme: the one not sent is there too.
    page.goto(f"{rig.url}/reports?{DAY_QUERY}&by=programme")
    rows = table(page)
    assert rows["phap-luat"]["not_sent"] == "1"
    assert rows["tin-sang"]["seconds"] == "100.0"

    # A range that is not one is said so, in the page's language.
    page.goto(f"{rig.url}/reports?from=2026-11-30&to=2026-11-01")
    assert "Khoảng ngày không hợp lệ" in page.locator("#error").inner_text()


def test_a_commune_officer_is_not_shown_the_reports(rig: WebRig, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, rig, "can-bo-a")
    assert page.locator("a[href='/reports']").count() == 0
    answer = page.goto(f"{rig.url}/reports?{DAY_QUERY}")
    assert answer is not None
    assert answer.status == 403
    assert page.request.get(f"{rig.url}/reports.csv?{DAY_QUERY}").status == 403


def fleet_rows(page: Any) -> dict[str, str]:
    found: dict[str, str] = page.locator("#fleet tbody tr[data-cluster]").evaluate_all(
        "rows => Object.fromEntries(rows.map(r => [r.dataset.cluster, r.dataset.state]))"
    )
    return found


def dots(page: Any) -> dict[str, tuple[str, float, float]]:
    found = page.locator("#map circle.dot").evaluate_all(
        "cs => cs.map(c => [c.dataset.cluster, c.dataset.state, c.cx.baseVal.value, "
        "c.cy.baseVal.value])"
    )
    return {c: (state, x, y) for c, state, x, y in found}


def test_the_fleet_page_lists_filters_and_maps_every_cluster(
    rig: WebRig, browser: Any
) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "quan-ly")
    page.click("a[href='/fleet']")
    assert page.locator("h1").inner_text() == "Cụm loa"
    assert fleet_rows(page) == {c: "online" for c in ("a-01", "a-02", "a-03", "b-01")}
    assert "4 cụm loa: 4 trực tuyến, 0 mất kết nối" in page.locator("#counts").inner_text()

    # The map, from the fleet file's coordinates: north is up, east is right.
    placed = dots(page)
    assert set(placed) == {"a-01", "a-02", "a-03", "b-01"}
    assert placed["a-02"][1] > placed["a-01"][1]  # 105.81 E is east of 105.80 E
    assert placed["a-02"][2] < placed["a-01"][2]  # 9.81 N is north of 9.80 N
    assert placed["b-01"][1] < placed["a-03"][1] < placed["a-01"][1]
    assert placed["b-01"][2] > placed["a-03"][2] > placed["a-01"][2]
    communes = page.locator("#map polygon.commune").evaluate_all(
        "ps => ps.map(p => p.dataset.commune)"
    )
    assert sorted(communes) == ["xa-a", "xa-b"]
    assert page.locator("script[src], link[href^='http']").count() == 0  # nothing fetched

    # b-01 goes offline: the page says so, in the table and on the map.
    rig.agents["b-01"].stop()
    wait_until(lambda: rig.state("b-01") == "offline", 20, "b-01 to be seen offline")
    page.select_option("select[name=state]", "offline")
    page.click("#fleet-filter button[type=submit]")
    page.wait_for_url(f"{rig.url}/fleet?commune=&state=offline")
    assert fleet_rows(page) == {"b-01": "offline"}
    assert dots(page)["b-01"][0] == "offline"
    assert page.locator("#map circle.dot.offline").count() == 1

    page.goto(f"{rig.url}/fleet?commune=xa-a")
    assert fleet_rows(page) == {c: "online" for c in ("a-01", "a-02", "a-03")}

    # A cluster's page: its state and its latest events, newest first.
    page.click("#fleet a[href='/fleet/a-01']")
    page.wait_for_url(f"{rig.url}/fleet/a-01")
    assert "trực tuyến" in page.locator("#state").inner_text()
    kinds = page.locator("#events tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.kind, r.dataset.play])"
    )
    assert kinds[:3] == [["missed", "tin-chieu@1"], ["finished", "tin-sang@1"],
                         ["playing", "tin-sang@1"]]
    cut = page.locator("#events tr[data-kind=interrupted]").inner_text()
    assert "bị ngắt" in cut
    assert "preempted by Khẩn (emergency)" in cut


def test_a_commune_officer_sees_only_their_commune(rig: WebRig, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, rig, "can-bo-b")
    page.goto(f"{rig.url}/fleet")
    assert fleet_rows(page) == {"b-01": "online"}
    assert set(dots(page)) == {"b-01"}
    answer = page.goto(f"{rig.url}/fleet/a-01")
    assert answer is not None
    assert answer.status == 404


def test_the_calendar_is_the_plan_the_scheduler_fires_with_approval_and_holidays(
    rig: WebRig, browser: Any
) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "quan-ly")
    page.click("a[href='/calendar']")
    assert page.locator("h1").inner_text() == "Lịch phát"
    # The week of Tết 2027 (Saturday 6 February), for commune xa-a.
    page.select_option("select[name=target]", "xa-a")
    page.fill("input[name=day]", "2027-02-03")
    page.click("#calendar-form button[type=submit]")
    page.wait_for_url(f"{rig.url}/calendar?target=xa-a&view=week&day=2027-02-03")
    days = page.locator("#calendar section.day").evaluate_all(
        "ds => ds.map(d => [d.dataset.day, [...d.querySelectorAll('li.play')].map("
        "p => [p.dataset.play, p.dataset.level, p.dataset.approval])])"
    )
    start = datetime(2027, 2, 1, tzinfo=TZ)
    planned = plan(rig.controller.playlists, start, start + timedelta(days=7), TZ)
    assert [d[0] for d in days] == [f"2027-02-0{i}" for i in range(1, 8)]
    assert [p[0] for d in days for p in d[1]] == [o.play_id for o in planned]
    assert {tuple(p[1:]) for d in days for p in d[1]} == {("normal", "pending")}
    tet = page.locator("section.day[data-day='2027-02-06']")
    assert "Tết Nguyên Đán" in tet.locator(".holiday-name").inner_text()
    assert "Thứ Bảy 06/02/2027" in tet.locator("h2").inner_text()
    assert "Chờ duyệt" in tet.locator("li.play").inner_text()

    # Approved, the same plays show approved; xa-b has none of them.
    rig.controller.approvals.approve(
        rig.controller.playlists.programmes["luat-tuan"], "Lê Quản Lý",
        datetime.combine(start.date(), time(0), TZ), fleet=rig.controller.fleet, source="web",
    )
    page.goto(f"{rig.url}/calendar?view=day&day=2027-02-06&target=xa-a")
    [play] = page.locator("li.play").evaluate_all("ps => ps.map(p => p.dataset.approval)")
    assert play == "approved"
    page.goto(f"{rig.url}/calendar?view=week&day=2027-02-03&target=xa-b")
    assert page.locator("li.play").count() == 0


def _png() -> bytes:
    """A 256 × 256 tile, one colour: a real PNG, as a tile server sends."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\xdd\xe8\xd0" * 256
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 256, 256, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * 256)) + chunk(b"IEND", b""))


@pytest.fixture
def tile_server() -> Iterator[tuple[str, list[str]]]:
    """A tile server on this machine: every /{z}/{x}/{y}.png is a tile; the paths asked."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []
    tile = _png()

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(tile)))
            self.end_headers()
            self.wfile.write(tile)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_with_a_tile_server_the_map_uses_it_and_the_vendored_library(
    rig: WebRig, browser: Any, tile_server: tuple[str, list[str]]
) -> None:
    from conftest import free_port

    from controller.web.app import create_app
    from controller.web.server import WebServer

    origin, asked = tile_server
    rig.ctx.map_tiles = origin + "/{z}/{x}/{y}.png"
    rig.ctx.map_attribution = "Bản đồ: Sở Thử"
    server = WebServer(create_app(rig.ctx), "127.0.0.1", free_port())
    server.start()
    try:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/login")
        page.fill("input[name=name]", "quan-ly")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/send")
        answer = page.goto(f"{server.url}/fleet")
        assert answer is not None
        assert f"img-src 'self' data: {origin};" in answer.headers["content-security-policy"]
        page.wait_for_selector("#tile-map[data-ready=yes]", state="attached", timeout=10_000)
        assert errors == []
        markers = page.locator("#tile-map path.cluster-marker").evaluate_all(
            "ps => ps.map(p => [p.dataset.cluster, p.classList.contains('online')])"
        )
        assert sorted(markers) == [[c, True] for c in ("a-01", "a-02", "a-03", "b-01")]
        assert page.locator("#plain-map").is_hidden()
        assert "Bản đồ: Sở Thử" in page.locator(".leaflet-control-attribution").inner_text()
        wait_until(lambda: len(asked) > 0, 10, "the map to ask the tile server for tiles")
        assert all(p.endswith(".png") and p.count("/") == 3 for p in asked), asked
        assert {u.split("/")[2] for u in fetched} <= {server.url.split("/")[2],
                                                      origin.split("/")[2]}
        assert f"{server.url}/static/vendor/leaflet/leaflet.js" in fetched
    finally:
        server.stop()


def test_the_approval_page_shows_the_airings_approving_lets_through(
    rig: WebRig, browser: Any
) -> None:
    page = browser.new_page()
    sign_in(page, rig, "quan-ly")
    now = datetime.now(TZ)
    expected = [o.start.astimezone(TZ).isoformat()
                for o in plan(rig.controller.playlists, now, now + timedelta(days=7), TZ)
                if o.programme == "luat-tuan"][:5]
    page.goto(f"{rig.url}/approvals")
    item = page.locator("li[data-programme=luat-tuan]")
    shown = item.locator(".airings time").evaluate_all("ts => ts.map(t => t.dataset.at)")
    assert shown == expected
    assert len(shown) == 5
    assert "Sẽ phát lúc:" in item.locator(".airings").inner_text()


def test_a_manager_uploads_a_programmes_audio_for_a_playlist_to_name(
    rig: WebRig, browser: Any, tmp_path: Path
) -> None:
    import hashlib
    import wave

    from controller import ffmpeg
    from controller.playlist import load_playlists
    from controller.samples import tone

    source = tone(tmp_path / "Bản tin thử.wav", 2.0, freq=330)
    silent = tmp_path / "im-lang.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\0\0" * 48000 * 2)

    page = browser.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, rig, "quan-ly")
    page.click("a[href='/content']")
    assert page.locator("h1").inner_text() == "Nội dung chương trình"
    page.set_input_files("input[name=audio]", str(source))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#added")
    assert page.locator("#added-name").inner_text() == "audio/ban-tin-thu.wav"
    kept = rig.tmp / "playlists" / "audio" / "ban-tin-thu.wav"
    assert page.locator("#added-sha256").inner_text() == hashlib.sha256(
        kept.read_bytes()
    ).hexdigest()
    profiles = page.locator("#prepared li").evaluate_all("ls => ls.map(l => l.dataset.profile)")
    assert profiles == ["horn"]
    # Kept normalised: mono 48 kHz at the fleet's loudness target (-16 LUFS).
    with wave.open(str(kept)) as w:
        assert (w.getnchannels(), w.getframerate()) == (1, 48000)
    level = ffmpeg.decode_pcm(kept, sample_rate=48000, measure=True).loudness
    assert level is not None
    assert level.integrated_lufs == pytest.approx(-16.0, abs=1.0)
    assert page.locator("#files tr[data-name='audio/ban-tin-thu.wav']").count() == 1

    # A playlist can name it as the page says.
    playlist = rig.tmp / "moi.yaml"
    playlist.write_text(
        "programmes:\n  - id: moi\n    name: Mới\n"
        "    bulletins: [{files: [playlists/audio/ban-tin-thu.wav]}]\n"
        "    schedule: {times: ['07:00']}\n    targets: [xa-a]\n", encoding="utf-8",
    )
    assert "moi" in load_playlists([playlist], rig.controller.fleet).programmes

    # The same name again is refused unless replacing; a silent file is refused; neither
    # changes what is kept.
    before = kept.read_bytes()
    page.set_input_files("input[name=audio]", str(source))
    page.click("#upload button[type=submit]")
    assert "already exists" in page.locator("#error").inner_text()
    page.set_input_files("input[name=audio]", str(silent))
    page.fill("input[name=name]", "ban-tin-thu")
    page.check("input[name=replace]")
    page.click("#upload button[type=submit]")
    refused = page.locator("#error").inner_text()
    assert refused.startswith("Tệp không dùng được:")
    assert "im-lang.wav" in refused
    assert kept.read_bytes() == before
    assert not list((rig.tmp / "playlists" / "audio").glob(".upload-*"))

    # A commune officer has no such page.
    officer = browser.new_page()
    sign_in(officer, rig, "can-bo-a")
    answer = officer.goto(f"{rig.url}/content")
    assert answer is not None
    assert answer.status == 403
