"""The real pages in headless Chromium (Debian's, driven by Playwright), on a running
controller with real agents on a real broker.

A commune officer signs in, sends a typed announcement to one village, watches the
clusters go delivered -> playing live, stops it and sees them interrupted; the same
officer forging a target in another commune is refused in the page; "Nghe thử" plays
the text in the page and sends nothing; a manager hears a programme before approving it;
English on demand; a signed-in page stays signed in across a restart of the controller.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BrokerUnderTest, require
from identity_support import enrolments_aside
from web_rig import PASSWORD, WebRig

CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


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


def test_send_to_one_village_watch_it_play_and_stop_it(rig: WebRig, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    page.set_default_timeout(30_000)
    page.goto(f"{rig.url}/login")
    assert page.locator("h1").inner_text() == "Đăng nhập"
    page.fill("input[name=name]", "can-bo-a")
    page.fill("input[name=password]", "sai-mat-khau")
    page.click("button[type=submit]")
    assert "Sai tên đăng nhập hoặc mật khẩu" in page.locator("#error").inner_text()
    sign_in(page, rig, "can-bo-a")
    assert page.locator("h1").inner_text() == "Thông báo khẩn mới"
    # Only the officer's own commune is offered.
    offered = page.locator("input[name=targets]").evaluate_all("els => els.map(e => e.value)")
    assert offered == ["xa-a", "ap-a1", "a-01", "a-02", "ap-a2", "a-03"]

    page.check("input[name=targets][value=ap-a1]")
    # Emergency interrupts everything: it is chosen, never the level a form starts with.
    assert page.is_checked("input[name=level][value=priority]")
    assert not page.is_checked("input[name=level][value=emergency]")
    page.check("input[name=level][value=emergency]")
    page.fill("textarea[name=text]", "Bão sắp vào. Bà con ở trong nhà, tránh xa bờ sông.")
    page.fill("input[name=repeat]", "5")
    page.fill("input[name=gap_s]", "2")
    page.click("#send")
    # Nothing is sent before the officer confirms, on a page naming where it goes.
    page.wait_for_selector("#confirm-targets")
    assert "Ấp Một" in page.locator("#confirm-targets").inner_text()
    assert "2 cụm loa" in page.locator("#confirm-what").inner_text()
    assert "Khẩn cấp" in page.locator("#confirm-what").inner_text()
    assert rig.controller.store.events.count() == 0
    page.click("#confirm")
    page.wait_for_url(f"{rig.url}/announcements/urgent-*")

    rows = page.locator("#clusters tbody tr")
    assert rows.count() == 2
    # Live: the page updates itself from the API until both clusters play.
    for cid in ("a-01", "a-02"):
        page.wait_for_selector(f'tr[data-cluster="{cid}"] td.status[data-status=playing]')
    assert page.locator('tr[data-cluster="a-01"] td.status').inner_text() == "đang phát"
    events = rig.controller.store.events.of_play(page.url.rsplit("/", 1)[-1])
    kinds = {(e["cluster"], e["kind"]) for e in events}
    assert {("a-01", "delivered"), ("a-02", "delivered")} <= kinds

    page.click("#stop")
    page.wait_for_selector("#stopped")
    assert "can-bo-a" in page.locator("#stopped").inner_text()
    for cid in ("a-01", "a-02"):
        page.wait_for_selector(f'tr[data-cluster="{cid}"] td.status[data-status=interrupted]')
    assert page.locator('tr[data-cluster="a-02"] td.status').inner_text() == "bị ngắt"
    # Nothing reached the other village or the other commune.
    assert rig.controller.store.events.play_states(page.url.rsplit("/", 1)[-1]).keys() == {
        "a-01", "a-02"
    }


def test_an_officer_forging_a_target_in_another_commune_is_refused(
    rig: WebRig, browser: Any
) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "can-bo-a")
    assert page.locator("input[name=targets][value=xa-b]").count() == 0
    # Add the other commune to the form by hand, as a curious officer could.
    page.evaluate("""() => {
        const box = document.createElement('input');
        box.type = 'checkbox'; box.name = 'targets'; box.value = 'xa-b'; box.checked = true;
        document.getElementById('send-form').appendChild(box);
    }""")
    page.fill("textarea[name=text]", "Thử loa xã bên")
    with page.expect_response(lambda r: r.url.endswith("/send")) as answer:
        page.click("#send")
    assert answer.value.status == 403
    error = page.locator("#error").inner_text()
    assert "Không được phép" in error
    assert "xa-b" in error
    assert "Xã An" in error
    assert "Không có gì được gửi" in error
    assert rig.controller.store.events.count() == 0
    assert rig.service.recent(rig.user("quan-ly")) == []


def test_pages_in_english_and_managers_pages(rig: WebRig, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{rig.url}/login?lang=en")
    assert page.locator("h1").inner_text() == "Sign in"
    sign_in(page, rig, "quan-ly")
    assert page.locator("h1").inner_text() == "New urgent announcement"  # the cookie stays
    page.goto(f"{rig.url}/approvals")
    item = page.locator('li[data-programme="luat-tuan"]')
    assert "Pending" in item.inner_text()
    item.locator("button").click()
    page.wait_for_url(f"{rig.url}/approvals")
    assert "Approved" in page.locator('li[data-programme="luat-tuan"]').inner_text()
    page.goto(f"{rig.url}/audit")
    assert "approve" in page.locator("#audit").inner_text()
    # A commune officer is not a manager.
    officer = browser.new_page()
    sign_in(officer, rig, "can-bo-a")
    response = officer.goto(f"{rig.url}/audit")
    assert response.status == 403


PLAYED = """() => {
    const a = document.getElementById('listen-audio');
    return a && !a.hidden && a.duration > 1 && a.currentTime > 0;
}"""


def test_listen_first_plays_the_text_in_the_page_and_sends_nothing(
    rig: WebRig, browser: Any
) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "can-bo-a")
    listen = page.locator("#listen")
    assert listen.inner_text() == "Nghe thử"
    page.check("input[name=targets][value=ap-a1]")
    page.fill("textarea[name=text]", "Lúc 14h30 ngày 6/12, nước sông lên 1,5 m. Gọi 0912 345 678.")
    with page.expect_response(lambda r: r.url.endswith("/send/preview")) as answer:
        listen.click()
    assert answer.value.status == 200
    assert answer.value.headers["content-type"].startswith("audio/ogg")
    page.wait_for_function(PLAYED)  # playing in the page
    assert page.url == f"{rig.url}/send"
    # Nothing went anywhere.
    assert rig.controller.store.events.count() == 0
    assert rig.service.recent(rig.user("quan-ly")) == []
    assert enrolments_aside(rig.service.audit_entries(rig.user("quan-ly"))) == []
    # A target outside the officer's commune is refused as sending would be, beside the button.
    page.evaluate("""() => {
        const box = document.createElement('input');
        box.type = 'checkbox'; box.name = 'targets'; box.value = 'xa-b'; box.checked = true;
        document.getElementById('send-form').appendChild(box);
    }""")
    with page.expect_response(lambda r: r.url.endswith("/send/preview")) as refused:
        listen.click()
    assert refused.value.status == 403
    page.wait_for_selector("#listen-note:has-text('Không được phép')")


def test_the_approval_page_plays_a_programmes_bulletin(rig: WebRig, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "quan-ly")
    page.goto(f"{rig.url}/approvals")
    item = page.locator('li[data-programme="luat-tuan"]')
    assert "Nghe bản tin 1" in item.inner_text()
    with page.expect_response(lambda r: "/approvals/luat-tuan/audio/1" in r.url) as answer:
        item.locator("audio").evaluate("a => a.play()")
    assert answer.value.status in (200, 206)
    assert answer.value.headers["content-type"].startswith("audio/ogg")
    page.wait_for_function(
        """() => { const a = document.querySelector('li[data-programme="luat-tuan"] audio');
                   return a.duration > 0.5 && a.currentTime > 0; }"""
    )
    assert "Chờ duyệt" in item.inner_text()  # listening approves nothing
    # A commune officer may not fetch it.
    officer = browser.new_page()
    sign_in(officer, rig, "can-bo-a")
    assert officer.goto(f"{rig.url}/approvals/luat-tuan/audio/1").status == 403


def test_a_signed_in_page_stays_signed_in_across_a_controller_restart(
    rig: WebRig, browser: Any
) -> None:
    from sqlalchemy import func, select

    from controller.store.schema import web_sessions

    def stored() -> int:
        with rig.controller.store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(web_sessions)).scalar_one())

    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "can-bo-a")
    rig.restart()
    page.reload()
    assert page.url == f"{rig.url}/send"
    assert page.locator("h1").inner_text() == "Thông báo khẩn mới"
    assert "can-bo-a" in page.locator("form[action='/logout'] button").inner_text()
    # The form's CSRF token is still the session's: signing out ends it in the store.
    assert stored() == 1
    page.click("form[action='/logout'] button")
    page.wait_for_url(f"{rig.url}/login")
    assert stored() == 0
    page.goto(f"{rig.url}/send")
    assert page.url == f"{rig.url}/login"


def test_record_in_the_browser_and_send_it(rig: WebRig) -> None:
    """The phone's microphone (Chromium's fake one, a beeping tone) into the form."""
    chromium = shutil.which("chromium")
    require("chromium", chromium is not None, "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=[
            *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        ])
        try:
            context = b.new_context()
            context.grant_permissions(["microphone"], origin=rig.url)
            page = context.new_page()
            page.set_default_timeout(30_000)
            sign_in(page, rig, "can-bo-a")
            page.check("input[name=targets][value=a-03]")
            record = page.locator("#record")
            assert record.inner_text() == "Ghi âm"
            record.click()
            page.wait_for_selector("#record:has-text('Dừng ghi âm')")
            page.wait_for_timeout(2500)
            record.click()
            page.wait_for_selector("#recorded:not([hidden])")
            assert page.locator("#audio-file").evaluate("e => e.files.length") == 1
            page.click("#send")
            page.click("#confirm")  # the recording waits on the server meanwhile
            page.wait_for_url(f"{rig.url}/announcements/urgent-*")
            page.wait_for_selector('tr[data-cluster="a-03"] td.status[data-status=finished]')
        finally:
            b.close()


LISTEN = """async (audio) => {
    // What the listen button plays: its duration as Chromium decodes it, and the SHA-256
    // of the bytes it fetches.
    if (audio.readyState < 1) {
        await new Promise((ok, fail) => {
            audio.addEventListener("loadedmetadata", ok, {once: true});
            audio.addEventListener("error", () => fail(String(audio.error && audio.error.code)),
                                   {once: true});
            audio.load();
        });
    }
    const bytes = await (await fetch(audio.currentSrc)).arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return {
        duration: audio.duration,
        sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
    };
}"""


def test_the_listen_buttons_play_what_the_clusters_are_sent(rig: WebRig, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, rig, "quan-ly")
    page.check("input[name=targets][value=b-01]")
    page.fill("textarea[name=text]", "Thông báo khẩn. Nước sông đang lên.")
    page.click("#send")
    page.click("#confirm")
    page.wait_for_url(f"{rig.url}/announcements/urgent-*")
    announcement = rig.service.get(rig.user("quan-ly"), page.url.rsplit("/", 1)[-1])
    [(profile, sha256)] = announcement.audio
    assert (profile, sha256) == ("horn", announcement.audio_sha256)
    player = page.locator("p.listen audio")
    assert "Nghe thử (loa nén ngoài trời)" in page.locator("p.listen").inner_text()
    heard = player.evaluate(LISTEN)
    assert heard["sha256"] == sha256  # the prepared Opus the clusters got, byte for byte
    assert heard["duration"] == pytest.approx(announcement.duration_s, abs=0.1)

    # A programme awaiting approval: its bulletin as dispatch will prepare and send it.
    page.goto(f"{rig.url}/approvals")
    item = page.locator('li[data-programme="luat-tuan"]')
    heard = item.locator("audio").evaluate(LISTEN)
    programme = rig.controller.playlists.programmes["luat-tuan"]
    [bulletin] = rig.controller.dispatcher.prepare(programme, "horn")
    assert heard["sha256"] == bulletin.sha256

    # Another commune's officer may not listen to it.
    officer = browser.new_page()
    sign_in(officer, rig, "can-bo-a")
    response = officer.goto(f"{rig.url}/announcements/{announcement.id}/audio/{sha256}")
    assert response.status == 404
