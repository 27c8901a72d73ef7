"""Every page and error path a commune officer and a manager reach, in Vietnamese, in
real Chromium on a running controller with real agents: no English shows.

What counts as English is derived, not listed by hand (tests/l10n_support.py): every
word of four letters or more of the English side of the message catalog and of the web
app's words that no Vietnamese text uses, and every run of three English words between
placeholders. The page's visible text is read (a tooltip keeping an agent's English
reason for the technician is not visible text); so is the audit log's CSV.
"""

from __future__ import annotations

import re
from typing import Any

from conftest import wait_until
from l10n_support import english_in
from test_web_browser import browser, rig, sign_in
from web_rig import WebRig

from controller.samples import tone

__all__ = ["browser", "rig"]  # the fixtures, shared with the other browser tests

#: Words of the rig's data that pages show on purpose: user names (the rig registers the
#: clusters' keys as "test"), a programme id.
DATA = {"luat", "tuan", "quan", "test"}


def visible(page: Any) -> str:
    return str(page.evaluate("() => document.body.innerText"))


def no_english(page: Any, where: str) -> str:
    """The page's visible text, after checking it has no English."""
    text = visible(page)
    assert english_in(text, DATA) == [], f"{where} ({page.url}): English in\n{text}"
    return text


def test_an_officer_and_a_manager_see_no_english(rig: WebRig, browser: Any) -> None:
    # A cluster offline, so that the announcement has a reason to show for it.
    rig.agents.pop("a-03").stop()
    wait_until(lambda: rig.state("a-03") == "offline", 20, "a-03 to be seen offline")
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.set_default_timeout(30_000)

    # --- signing in ---------------------------------------------------------------------
    page.goto(f"{rig.url}/login")
    no_english(page, "sign-in page")
    page.fill("input[name=name]", "can-bo-a")
    page.fill("input[name=password]", "sai-mat-khau")
    page.click("button[type=submit]")
    assert "Sai tên đăng nhập" in no_english(page, "wrong password")
    sign_in(page, rig, "can-bo-a")
    no_english(page, "send page")

    # --- what the service refuses, each shown on the send page ----------------------------
    page.fill("textarea[name=text]", "Thử loa")
    page.click("#send")
    page.wait_for_selector("#error")
    assert "hãy chọn ít nhất một nơi phát" in no_english(page, "no target")

    page.check("input[name=targets][value=ap-a2]")
    page.evaluate("() => document.querySelector('input[name=repeat]').removeAttribute('max')")
    page.fill("input[name=repeat]", "11")
    page.click("#send")
    page.wait_for_selector("#error")
    assert "số lần phát 11: hãy ghi từ 1 đến 10" in no_english(page, "repeat 11")

    # an upload that is not audio: why, without the server's path or ffmpeg's words
    page.fill("input[name=repeat]", "1")
    page.fill("textarea[name=text]", "")
    page.set_input_files("#audio-file", files=[{
        "name": "thong-bao.wav", "mimeType": "audio/wav", "buffer": b"RIFF not a sound",
    }])
    page.click("#send")
    page.wait_for_selector("#error")
    text = no_english(page, "an upload that is not audio")
    assert "Không dùng được tệp âm thanh" in text
    assert str(rig.tmp) not in text
    assert "/upload" not in text

    # the listen button without a text: said beside it
    page.goto(f"{rig.url}/send")
    page.click("#listen")
    page.wait_for_function(
        "() => document.getElementById('listen-note').textContent.includes('hãy gõ')"
    )
    no_english(page, "listen without a text")

    # a form that does not parse, and one sent with an expired token
    page.evaluate("""() => {
        const repeat = document.querySelector('input[name=repeat]');
        repeat.type = 'text'; repeat.value = 'ba';
    }""")
    page.check("input[name=targets][value=ap-a2]")
    page.fill("textarea[name=text]", "Thử")
    page.click("#send")
    page.wait_for_selector("#error")
    assert "không hợp lệ" in no_english(page, "a form that does not parse")
    page.goto(f"{rig.url}/send")
    page.locator("#send-form input[name=csrf_token]").evaluate("e => { e.value = 'x'; }")
    page.check("input[name=targets][value=ap-a2]")
    page.fill("textarea[name=text]", "Thử")
    page.click("#send")
    page.wait_for_selector("#error")
    assert "Phiên làm việc đã hết hạn" in no_english(page, "expired form")

    # --- sending: confirmation, going back, confirming -------------------------------------
    page.goto(f"{rig.url}/send")
    page.check("input[name=targets][value=xa-a]")
    page.fill("textarea[name=text]", "Nước sông đang lên. Bà con chú ý.")
    page.click("#send")
    page.wait_for_selector("#confirm-targets")
    assert "Xã An" in no_english(page, "confirmation")
    page.click("#back")
    page.wait_for_selector("#send-form")
    assert page.input_value("textarea[name=text]") == "Nước sông đang lên. Bà con chú ý."
    page.click("#send")
    page.click("#confirm")
    page.wait_for_url(f"{rig.url}/announcements/urgent-*")
    for cid in ("a-01", "a-02"):
        page.wait_for_selector(f'tr[data-cluster="{cid}"] td.status[data-status=playing]')
    assert "· Xã An" in page.locator("main p.muted").first.inner_text()  # not xa-a
    offline = page.locator('tr[data-cluster="a-03"] td.reason')
    assert offline.inner_text().startswith("mất kết nối từ ")
    assert re.search(r"\d\d:\d\d ngày \d\d/\d\d/\d{4}", visible(page))
    no_english(page, "announcement, playing")
    page.click("#stop")
    page.wait_for_selector("#stopped")
    for cid in ("a-01", "a-02"):
        page.wait_for_selector(f'tr[data-cluster="{cid}"] td.status[data-status=interrupted]')
    page.wait_for_function(
        "() => document.querySelector('tr[data-cluster=\"a-01\"] td.reason').textContent"
        ".length > 0"
    )
    assert "theo lệnh" in page.locator('tr[data-cluster="a-01"] td.reason').inner_text()
    no_english(page, "announcement, stopped (updated live)")
    page.reload()
    no_english(page, "announcement, stopped (as served)")

    # --- history, and what an officer may not see --------------------------------------------
    page.goto(f"{rig.url}/announcements")
    no_english(page, "history")
    for path, status in (
        ("/audit", 403), ("/approvals", 403), ("/enrolments", 403),
        ("/announcements/urgent-none", 404), ("/no-such-page", 404),
    ):
        answer = page.goto(f"{rig.url}{path}")
        assert answer.status == status, path
        no_english(page, f"officer at {path}")

    # --- the manager ---------------------------------------------------------------------------
    manager = browser.new_page()
    manager.set_default_timeout(30_000)
    sign_in(manager, rig, "quan-ly")
    manager.goto(f"{rig.url}/approvals")
    assert "chờ duyệt: chưa được duyệt lần nào" in no_english(manager, "approvals, pending")
    manager.locator('li[data-programme="luat-tuan"] button').click()
    manager.wait_for_url(f"{rig.url}/approvals")
    approved = no_english(manager, "approvals, approved")
    assert re.search(r"đã duyệt bởi quan-ly lúc \d\d:\d\d ngày \d\d/\d\d/\d{4}", approved)
    manager.goto(f"{rig.url}/enrolments")
    no_english(manager, "enrolments")
    # an announcement whose audio the manager uploads (a real recording)
    manager.goto(f"{rig.url}/send")
    manager.check("input[name=targets][value=b-01]")
    manager.set_input_files("#audio-file", str(tone(rig.tmp / "ghi-am.wav", 1.0)))
    manager.check("input[name=level][value=emergency]")
    manager.click("#send")
    assert "Khẩn cấp" in no_english(manager, "confirmation with a recording")
    manager.click("#confirm")
    manager.wait_for_url(f"{rig.url}/announcements/urgent-*")
    no_english(manager, "announcement with a recording")
    manager.goto(f"{rig.url}/audit")
    audit = no_english(manager, "audit log")
    for action in ("phát thông báo khẩn", "dừng phát", "phê duyệt"):
        assert action in audit
    csv = manager.request.get(f"{rig.url}/audit.csv")
    assert csv.ok
    body = csv.text()
    assert body.splitlines()[0].startswith("Thời điểm,Người thực hiện,Thao tác,")
    # The CSV keeps each announcement's id (urgent-...) and each audio's hash: data.
    assert english_in(body, DATA | {"urgent"}) == [], body
    for path in ("/no-such-page", "/approvals/nothing/audio/1"):
        manager.goto(f"{rig.url}{path}")
        no_english(manager, f"manager at {path}")
