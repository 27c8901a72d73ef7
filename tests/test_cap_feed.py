"""CAP alerts pulled from feeds (controller/cap_feed.py), against a real HTTP server.

The server (http.server on a free loopback port, on a thread) serves files from a
folder, records every request, and answers conditional GETs with 304. The alerts go
into a real controller's CAP intake (conftest's `cap_rig`, policy send). Tests call
`CapFeed.poll(now=...)` with the time they want: nothing sleeps.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from textwrap import dedent
from typing import cast

import pytest
from conftest import BrokerUnderTest, cap_xml, free_port, wait_until
from hostile_xml import ATTACKS, OPENS, SPEC_EXAMPLES, hostile
from web_rig import WebRig

from controller.cap import system_sender
from controller.cap_feed import (
    CapFeed,
    FeedError,
    FeedOutcome,
    Remembered,
    http_opener,
    read_feed,
)
from controller.config import CapFeedConfig, load_controller_config
from controller.urgent import Announcement
from protocol.config_errors import ConfigError

FLOOD_REF = "kttv@example.vn,{},2026-10-20T06:00:00+07:00"
NEAR_B01 = "<circle>9.50,105.50 5</circle>"  # commune xa-b's only cluster


# --- the HTTP server ---------------------------------------------------------------------


class Site:
    """Files served over HTTP from `root`, every request recorded.

    validators: "etag" (ETag and If-None-Match), "last-modified" (Last-Modified and
    If-Modified-Since), or "" (neither: every GET is a 200). `fail` forces a status on a
    path, `redirect` sends a path elsewhere, and a path in `stalled` is held until
    `release` is set.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.validators = "etag"
        self.fail: dict[str, int] = {}
        self.redirect: dict[str, str] = {}
        self.stalled: set[str] = set()
        self.release = threading.Event()
        self.requests: list[tuple[str, dict[str, str], int]] = []  # path, headers, status
        self._lock = threading.Lock()
        self._mtime = 1_700_000_000
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def put(self, name: str, body: bytes) -> None:
        """Write a file; each write is 10 s newer than the last (Last-Modified moves on)."""
        path = self.root / name
        path.write_bytes(body)
        self._mtime += 10
        os.utime(path, (self._mtime, self._mtime))

    def asked(self, name: str) -> list[dict[str, str]]:
        """The headers (lower-case names) of every request for `name`, in order."""
        with self._lock:
            return [h for p, h, _ in self.requests if p == name]

    def answered(self, name: str) -> list[int]:
        with self._lock:
            return [s for p, _, s in self.requests if p == name]

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _, _ in self.requests]

    def record(self, name: str, headers: dict[str, str], status: int) -> None:
        with self._lock:
            self.requests.append((name, headers, status))

    def start(self) -> None:
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self.release.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Site) -> None:
        super().__init__(("127.0.0.1", site.port), _Handler)
        self.site = site


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        site = cast(_Server, self.server).site
        name = self.path.lstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if name in site.stalled:
            site.release.wait(30)

        def answer(status: int) -> None:
            # Recorded before the answer goes out, so the client never gets ahead of it.
            site.record(name, headers, status)
            if status >= 400:
                self.send_error(status)
            else:
                self.send_response(status)

        if name in site.fail:
            answer(site.fail[name])
            return
        if name in site.redirect:
            answer(302)
            self.send_header("Location", site.redirect[name])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = site.root / name
        if not path.is_file():
            answer(404)
            return
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        mtime = int(path.stat().st_mtime)
        since = headers.get("if-modified-since")
        if (site.validators == "etag" and headers.get("if-none-match") == etag) or (
            site.validators == "last-modified" and since is not None
            and parsedate_to_datetime(since).timestamp() >= mtime
        ):
            answer(304)
            self.end_headers()
            return
        answer(200)
        kind = {".atom": "application/atom+xml", ".rss": "application/rss+xml",
                ".xml": "application/cap+xml"}.get(Path(name).suffix, "text/plain")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if site.validators == "etag":
            self.send_header("ETag", etag)
        if site.validators == "last-modified":
            self.send_header("Last-Modified", formatdate(mtime, usegmt=True))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads site.requests instead


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path / "site")
    s.start()
    try:
        yield s
    finally:
        s.stop()


# --- documents -----------------------------------------------------------------------------


def atom(*entries: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>KTTV cảnh báo</title><id>urn:kttv:feed</id>"
        "<updated>2026-10-20T06:00:00+07:00</updated>"
        f"{''.join(entries)}</feed>"
    ).encode()


def linked(ident: str, href: str) -> str:
    """An Atom entry with a web page and the CAP document as alternates (the CAP one wins)."""
    return (
        f"<entry><id>{ident}</id><title>{ident}</title>"
        "<updated>2026-10-20T06:00:00+07:00</updated>"
        f'<link rel="alternate" type="text/html" href="/pages/{ident}.html"/>'
        f'<link rel="alternate" type="application/cap+xml" href="{href}"/></entry>'
    )


def bare(alert: bytes) -> str:
    """The alert without its XML declaration, to embed in a feed."""
    return alert.decode().split("?>", 1)[1]


def cap_announcements(rig: WebRig) -> list[Announcement]:
    """The CAP alerts sent, oldest first."""
    found = [a for a in rig.service.recent(rig.user("quan-ly")) if a.source == "cap"]
    return list(reversed(found))


def feed_for(rig: WebRig, *urls: str, timeout_s: float = 5, remember: int = 10_000) -> CapFeed:
    assert rig.ctx.cap is not None
    feeds = [CapFeedConfig(url=u, every_s=60, timeout_s=timeout_s) for u in urls]
    return CapFeed(rig.ctx.cap, feeds, "tinh-t", opener=http_opener(proxies={}),
                   remember=remember)


def got(outcomes: list[FeedOutcome]) -> list[tuple[str, str]]:
    return [(o.entry, o.outcome) for o in outcomes]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- a CAP document, Atom, RSS ---------------------------------------------------------------


@pytest.mark.parametrize("validators", ["etag", "last-modified"])
def test_a_bare_alert_address_is_taken_once_then_costs_a_304(
    cap_rig: WebRig, site: Site, validators: str
) -> None:
    site.validators = validators
    site.put("latest.xml", cap_xml(identifier="bare-1"))
    feed = feed_for(cap_rig, site.url("latest.xml"))

    assert got(feed.poll(now=0)) == [("", "sent")]
    [sent] = cap_announcements(cap_rig)
    assert sent.clusters == ["a-01", "a-02", "a-03"]
    assert sent.created_by == "cap-feed"

    assert feed.poll(now=59) == []  # every_s 60: not due yet
    assert got(feed.poll(now=60)) == [("", "unchanged")]
    first, second = site.asked("latest.xml")
    assert "if-none-match" not in first
    assert "if-modified-since" not in first
    if validators == "etag":
        assert second["if-none-match"].startswith('"')
    else:
        assert second["if-modified-since"].endswith("GMT")
    assert site.answered("latest.xml") == [200, 304]
    assert len(cap_announcements(cap_rig)) == 1

    # The same address later shows a new alert: it is taken (dedup is by CAP reference).
    site.put("latest.xml", cap_xml(identifier="bare-2"))
    assert got(feed.poll(now=120)) == [("", "sent")]
    assert len(cap_announcements(cap_rig)) == 2


def test_an_atom_feed_s_entries_are_fetched_and_taken_once(cap_rig: WebRig, site: Site) -> None:
    site.put("a1.xml", cap_xml(identifier="atom-1"))
    site.put("a2.xml", cap_xml(identifier="atom-2", area=NEAR_B01))
    site.put("kttv.atom", atom(linked("urn:kttv:1", "a1.xml"), linked("urn:kttv:2", "a2.xml")))
    feed = feed_for(cap_rig, site.url("kttv.atom"))

    assert got(feed.poll(now=0)) == [("urn:kttv:1", "sent"), ("urn:kttv:2", "sent")]
    assert [a.clusters for a in cap_announcements(cap_rig)] == [["a-01", "a-02", "a-03"],
                                                                 ["b-01"]]
    assert not any(p.startswith("pages/") for p in site.paths())  # the CAP link was chosen

    # Polled again: one conditional request, a 304, nothing fetched or taken.
    assert got(feed.poll(now=60)) == [("", "unchanged")]
    assert "if-none-match" in site.asked("kttv.atom")[1]
    assert site.answered("kttv.atom") == [200, 304]

    # A server that ignores validators: the feed comes whole, the entries are remembered.
    site.validators = ""
    assert feed.poll(now=120) == []
    assert site.answered("kttv.atom") == [200, 304, 200]

    # A new entry: only it is fetched and taken.
    site.put("a3.xml", cap_xml(identifier="atom-3"))
    site.put("kttv.atom", atom(linked("urn:kttv:3", "a3.xml"), linked("urn:kttv:1", "a1.xml"),
                               linked("urn:kttv:2", "a2.xml")))
    assert got(feed.poll(now=180)) == [("urn:kttv:3", "sent")]
    assert (len(site.asked("a1.xml")), len(site.asked("a2.xml"))) == (1, 1)
    assert len(cap_announcements(cap_rig)) == 3


def test_alerts_embedded_in_atom_content_are_taken_without_another_request(
    cap_rig: WebRig, site: Site
) -> None:
    as_xml = bare(cap_xml(identifier="embedded-1"))
    as_text = html.escape(bare(cap_xml(identifier="embedded-2", area=NEAR_B01)))
    site.put("embedded.atom", atom(
        "<entry><id>urn:kttv:e1</id><updated>2026-10-20T06:00:00+07:00</updated>"
        f'<content type="application/cap+xml">{as_xml}</content></entry>',
        "<entry><id>urn:kttv:e2</id><updated>2026-10-20T06:00:00+07:00</updated>"
        f'<link href="/pages/e2.html" type="text/html"/>'
        f'<content type="text">{as_text}</content></entry>',
    ))
    feed = feed_for(cap_rig, site.url("embedded.atom"))

    assert got(feed.poll(now=0)) == [("urn:kttv:e1", "sent"), ("urn:kttv:e2", "sent")]
    assert site.paths() == ["embedded.atom"]
    assert [a.clusters for a in cap_announcements(cap_rig)] == [["a-01", "a-02", "a-03"],
                                                                 ["b-01"]]
    assert got(feed.poll(now=60)) == [("", "unchanged")]


def test_an_rss_feed_links_its_alerts_by_enclosure_or_link(cap_rig: WebRig, site: Site) -> None:
    site.put("r1.xml", cap_xml(identifier="rss-1"))
    site.put("r2.xml", cap_xml(identifier="rss-2", area=NEAR_B01))
    site.put("kttv.rss", f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>KTTV</title><link>{site.url("")}</link>
  <item><title>Lũ</title><link>{site.url("pages/r1.html")}</link>
    <guid isPermaLink="false">kttv-rss-1</guid>
    <enclosure url="{site.url("r1.xml")}" type="application/cap+xml" length="1"/></item>
  <item><title>Lũ Bình</title><link>{site.url("r2.xml")}</link>
    <guid isPermaLink="false">kttv-rss-2</guid></item>
</channel></rss>""".encode())
    feed = feed_for(cap_rig, site.url("kttv.rss"))

    assert got(feed.poll(now=0)) == [("kttv-rss-1", "sent"), ("kttv-rss-2", "sent")]
    assert sorted(site.paths()) == ["kttv.rss", "r1.xml", "r2.xml"]
    assert got(feed.poll(now=60)) == [("", "unchanged")]
    assert len(cap_announcements(cap_rig)) == 2


# --- Cancel ----------------------------------------------------------------------------------


def test_a_cancel_in_the_feed_stops_the_alert_taken_earlier(cap_rig: WebRig, site: Site) -> None:
    site.put("flood.xml", cap_xml(identifier="flood-1"))
    site.put("kttv.atom", atom(linked("urn:kttv:flood", "flood.xml")))
    feed = feed_for(cap_rig, site.url("kttv.atom"))
    assert got(feed.poll(now=0)) == [("urn:kttv:flood", "sent")]
    [aid] = [a.id for a in cap_announcements(cap_rig)]

    site.put("cancel.xml", cap_xml(
        identifier="flood-1-cancel", msg_type="Cancel", references=FLOOD_REF.format("flood-1"),
        sent="2026-10-20T08:00:00+07:00",
    ))
    site.put("kttv.atom", atom(linked("urn:kttv:cancel", "cancel.xml"),
                               linked("urn:kttv:flood", "flood.xml")))
    assert got(feed.poll(now=60)) == [("urn:kttv:cancel", "cancelled")]
    stopped = cap_rig.service.get(cap_rig.user("quan-ly"), aid)
    assert stopped.stopped_by == "cap-feed"
    entries = cap_rig.service.audit_entries(system_sender("tinh-t"))
    assert [(e.action, e.user) for e in entries if e.action.startswith("cap-")] == [
        ("cap-cancel", "cap-feed"), ("cap-alert", "cap-feed")
    ]


def test_an_alert_and_its_cancel_in_one_poll_are_taken_oldest_first(
    cap_rig: WebRig, site: Site
) -> None:
    cancel = bare(cap_xml(
        identifier="flood-2-cancel", msg_type="Cancel", references=FLOOD_REF.format("flood-2"),
        sent="2026-10-20T08:00:00+07:00",
    ))
    alert = bare(cap_xml(identifier="flood-2"))
    # Feeds list the newest first: the Cancel comes before the alert it names.
    site.put("kttv.atom", atom(
        "<entry><id>urn:kttv:c</id><updated>2026-10-20T08:00:00+07:00</updated>"
        f'<content type="application/cap+xml">{cancel}</content></entry>',
        "<entry><id>urn:kttv:a</id><updated>2026-10-20T06:00:00+07:00</updated>"
        f'<content type="application/cap+xml">{alert}</content></entry>',
    ))
    feed = feed_for(cap_rig, site.url("kttv.atom"))
    assert got(feed.poll(now=0)) == [("urn:kttv:a", "sent"), ("urn:kttv:c", "cancelled")]
    [sent] = cap_announcements(cap_rig)
    assert sent.stopped_by == "cap-feed"


# --- failures --------------------------------------------------------------------------------


def test_a_dead_failing_or_wrong_server_is_logged_and_polled_again(
    cap_rig: WebRig, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="controller")
    url = site.url("kttv.atom")
    feed = feed_for(cap_rig, url)
    site.stop()  # connection refused

    [down] = got(feed.poll(now=0))
    assert down[1].startswith("failed: cannot reach it")
    [said] = warnings(caplog)
    assert url in said
    assert "Connection refused" in said
    assert "polled again in 60 s" in said
    assert "nothing was taken" in said

    site.start()
    site.fail["kttv.atom"] = 500
    assert got(feed.poll(now=60)) == [("", "failed: the server answered HTTP 500 "
                                            "Internal Server Error")]
    assert url in warnings(caplog)[-1]
    assert "HTTP 500" in warnings(caplog)[-1]
    # The same failure at the next poll: not another warning.
    count = len(warnings(caplog))
    assert got(feed.poll(now=120))[0][1].startswith("failed: the server answered HTTP 500")
    assert len(warnings(caplog)) == count

    del site.fail["kttv.atom"]
    site.put("kttv.atom", b"Service temporarily unavailable, try later\n")
    assert got(feed.poll(now=180))[0][1].startswith("failed: the answer is not XML")
    assert url in warnings(caplog)[-1]
    assert "web page" in warnings(caplog)[-1]
    site.put("kttv.atom", b"<html><body>Hello</body></html>")
    assert "neither a CAP 1.2 <alert> nor an Atom or RSS feed" in got(feed.poll(now=240))[0][1]

    site.put("a1.xml", cap_xml(identifier="after-recovery"))
    site.put("kttv.atom", atom(linked("urn:kttv:1", "a1.xml")))
    assert got(feed.poll(now=300)) == [("urn:kttv:1", "sent")]
    assert any(r.getMessage() == f"CAP feed {url} answers again" for r in caplog.records)
    assert len(cap_announcements(cap_rig)) == 1


def test_a_bad_entry_does_not_stop_the_others_and_is_tried_again(
    cap_rig: WebRig, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controller")
    site.put("bad.xml", b"<alert")
    site.put("good.xml", cap_xml(identifier="good-1"))
    site.put("kttv.atom", atom(linked("urn:kttv:bad", "bad.xml"),
                               linked("urn:kttv:gone", "gone.xml"),
                               linked("urn:kttv:good", "good.xml")))
    feed = feed_for(cap_rig, site.url("kttv.atom"))

    outcomes = dict(got(feed.poll(now=0)))
    assert outcomes["urn:kttv:good"] == "sent"
    assert outcomes["urn:kttv:bad"].startswith("failed: not well-formed XML")
    assert outcomes["urn:kttv:gone"] == "failed: the server answered HTTP 404 Not Found"
    bad = next(w for w in warnings(caplog) if "urn:kttv:bad" in w)
    assert site.url("bad.xml") in bad
    assert site.url("kttv.atom") in bad
    assert "tried again in 60 s" in bad
    gone = next(w for w in warnings(caplog) if "urn:kttv:gone" in w)
    assert site.url("gone.xml") in gone
    assert "HTTP 404" in gone

    # Not everything was dealt with: the next poll reads the whole feed (no 304) and
    # tries the two failed entries again, not the good one.
    assert sorted(got(feed.poll(now=60))) == [
        ("urn:kttv:bad", "failed: not well-formed XML: unclosed token: line 1, column 0"),
        ("urn:kttv:gone", "failed: the server answered HTTP 404 Not Found"),
    ]
    assert "if-none-match" not in site.asked("kttv.atom")[1]
    assert (len(site.asked("bad.xml")), len(site.asked("good.xml"))) == (2, 1)

    site.put("bad.xml", cap_xml(identifier="corrected", area=NEAR_B01))
    site.put("gone.xml", cap_xml(identifier="found-again", status="Exercise"))
    assert sorted(got(feed.poll(now=120))) == [("urn:kttv:bad", "sent"),
                                               ("urn:kttv:gone", "ignored")]
    assert got(feed.poll(now=180)) == [("", "unchanged")]
    assert [a.clusters for a in cap_announcements(cap_rig)] == [["a-01", "a-02", "a-03"],
                                                                 ["b-01"]]


def test_alerts_and_feeds_with_a_dtd_are_refused_and_nothing_they_name_is_read(
    cap_rig: WebRig, site: Site, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """UTF-16 documents, where no "<!DOCTYPE" is to be found byte for byte: bare, linked
    from a feed and embedded in one; neither the local file nor the DTD they name is read,
    and the good entry beside them is taken."""
    caplog.set_level(logging.INFO, logger="controller")
    secret = tmp_path / "secret.txt"
    secret.write_text("mat-khau-may-chu", encoding="utf-8")
    site.put("cap.dtd", b'<!ENTITY where "o Xa An">')
    for attack in ATTACKS:
        site.put(f"{attack}.xml", hostile(attack, "utf-16-le", secret, site.url("cap.dtd")))
    site.put("good.xml", cap_xml(identifier="good-1"))
    entries = [linked(f"urn:kttv:{a}", f"{a}.xml") for a in ATTACKS]
    site.put("kttv.atom", atom(*entries, linked("urn:kttv:good", "good.xml")))
    site.put("bare.xml", hostile("internal-entity", "utf-16-be", secret))
    feed = feed_for(cap_rig, site.url("kttv.atom"), site.url("bare.xml"))

    with OPENS.watching(secret) as opened:
        outcomes = {(o.feed.rsplit("/", 1)[-1], o.entry): o.outcome for o in feed.poll(now=0)}
    assert opened == []
    assert outcomes.pop(("kttv.atom", "urn:kttv:good")) == "sent"
    assert len(outcomes) == len(ATTACKS) + 1  # and the bare one
    # The feed reader refuses the bare one, the intake those the feed links to.
    assert outcomes.pop(("bare.xml", "")).startswith(
        "failed: not accepted: the document declares a DTD, <!DOCTYPE alert ...>")
    for outcome in outcomes.values():
        assert outcome.startswith("failed: not accepted as a CAP alert: the document declares "
                                  "a DTD, <!DOCTYPE alert ...>"), outcome
    assert "cap.dtd" not in site.paths()
    assert not any("mat-khau-may-chu" in r.getMessage() for r in caplog.records)
    refused = [w for w in warnings(caplog) if "declares a DTD" in w]
    assert any(site.url("bare.xml") in w for w in refused)
    assert any("urn:kttv:billion-laughs" in w for w in refused)
    assert [a.clusters for a in cap_announcements(cap_rig)] == [["a-01", "a-02", "a-03"]]


def test_the_cap_specification_s_example_alerts_are_taken_from_a_feed(
    cap_rig: WebRig, site: Site
) -> None:
    """They are for places outside the fleet: read and taken, with no cluster to air on."""
    names = sorted(p.name for p in SPEC_EXAMPLES.glob("*.xml"))
    assert len(names) == 4
    for name in names:
        site.put(name, (SPEC_EXAMPLES / name).read_bytes())
    site.put("spec.atom", atom(*(linked(f"urn:spec:{n}", n) for n in names)))
    feed = feed_for(cap_rig, site.url("spec.atom"))
    assert sorted(got(feed.poll(now=0))) == [(f"urn:spec:{n}", "no-clusters") for n in names]
    assert cap_announcements(cap_rig) == []


def test_a_slow_server_times_out_and_the_other_feeds_go_on(cap_rig: WebRig, site: Site) -> None:
    site.stalled.add("slow.atom")
    site.put("latest.xml", cap_xml(identifier="quick"))
    feed = feed_for(cap_rig, site.url("slow.atom"), site.url("latest.xml"), timeout_s=0.5)
    started = time.monotonic()
    outcomes = feed.poll(now=0)
    assert time.monotonic() - started < 5
    assert [(o.feed, o.outcome) for o in outcomes] == [
        (site.url("slow.atom"), "failed: no answer within 0.5 s"),
        (site.url("latest.xml"), "sent"),
    ]


def test_only_http_and_https_documents_are_fetched(cap_rig: WebRig, site: Site) -> None:
    site.redirect["to-file.xml"] = "file:///etc/hostname"
    site.redirect["to-ftp.xml"] = "ftp://127.0.0.1/cap.xml"
    site.put("kttv.atom", atom(linked("urn:kttv:file", "file:///etc/hostname"),
                               linked("urn:kttv:to-file", "to-file.xml"),
                               linked("urn:kttv:to-ftp", "to-ftp.xml")))
    feed = feed_for(cap_rig, site.url("kttv.atom"))
    outcomes = dict(got(feed.poll(now=0)))
    assert "is not an http:// or https:// address" in outcomes["urn:kttv:file"]
    assert "Redirection to url 'file:///etc/hostname' is not allowed" in (
        outcomes["urn:kttv:to-file"])
    assert "unknown url type: ftp" in outcomes["urn:kttv:to-ftp"]
    assert cap_announcements(cap_rig) == []


def test_an_alert_already_in_the_store_is_not_taken_again_after_a_restart(
    cap_rig: WebRig, site: Site
) -> None:
    site.put("a1.xml", cap_xml(identifier="before-restart"))
    site.put("kttv.atom", atom(linked("urn:kttv:1", "a1.xml")))
    assert got(feed_for(cap_rig, site.url("kttv.atom")).poll(now=0)) == [("urn:kttv:1", "sent")]
    restarted = feed_for(cap_rig, site.url("kttv.atom"))  # remembers nothing
    assert got(restarted.poll(now=0)) == [("urn:kttv:1", "already taken")]
    assert got(restarted.poll(now=60)) == [("", "unchanged")]
    assert len(cap_announcements(cap_rig)) == 1


def test_a_cancel_still_in_the_feed_is_not_applied_again_after_a_restart(
    cap_rig: WebRig, site: Site
) -> None:
    from controller.cap import CapIntake
    from controller.config import CapConfig

    site.put("flood.xml", cap_xml(identifier="flood-3"))
    site.put("cancel.xml", cap_xml(
        identifier="flood-3-cancel", msg_type="Cancel", references=FLOOD_REF.format("flood-3"),
        sent="2026-10-20T08:00:00+07:00",
    ))
    site.put("kttv.atom", atom(linked("urn:kttv:cancel", "cancel.xml"),
                               linked("urn:kttv:flood", "flood.xml")))
    assert got(feed_for(cap_rig, site.url("kttv.atom")).poll(now=0)) == [
        ("urn:kttv:flood", "sent"), ("urn:kttv:cancel", "cancelled")
    ]
    [sent] = cap_announcements(cap_rig)
    assert sent.stopped_by == "cap-feed"

    def audit() -> list[tuple[str, str]]:
        return [(e.action, e.subject) for e in cap_rig.service.audit.entries()]

    done = audit()
    assert [a for a in done if a[0] in ("cap-cancel", "stop")] == [
        ("cap-cancel", "flood-3-cancel"), ("stop", sent.id)
    ]
    # A restart: a new intake on the same database, a feed that remembers nothing.
    cap_rig.ctx.cap = CapIntake(cap_rig.service, CapConfig(policy="send", repeat=1, max_share=1.0))
    restarted = feed_for(cap_rig, site.url("kttv.atom"))
    assert got(restarted.poll(now=0)) == [
        ("urn:kttv:flood", "already taken"), ("urn:kttv:cancel", "already taken")
    ]
    assert audit() == done
    assert cap_rig.service.get(cap_rig.user("quan-ly"), sent.id).stopped_at == sent.stopped_at


def test_the_feed_thread_polls_and_stops_at_once(cap_rig: WebRig, site: Site) -> None:
    site.put("latest.xml", cap_xml(identifier="threaded"))
    feed = feed_for(cap_rig, site.url("latest.xml"))
    feed.start()
    try:
        wait_until(lambda: cap_announcements(cap_rig), 20, "the feed thread to take the alert")
    finally:
        started = time.monotonic()
        feed.stop()  # it was waiting 60 s for the next poll
    assert time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name == "cap-feed"]
    assert site.asked("latest.xml")  # one poll, made by the thread


# --- pieces ----------------------------------------------------------------------------------


def test_what_is_remembered_is_bounded() -> None:
    seen = Remembered(limit=3)
    for key in "abcd":
        seen.put(key, "taken")
    assert len(seen) == 3
    assert seen.get("a") is None
    assert seen.get("b") == "taken"  # used: now the newest
    seen.put("e")
    assert (seen.get("b"), seen.get("c")) == ("taken", None)


def test_documents_that_are_neither_cap_nor_a_feed_are_told_apart() -> None:
    assert read_feed("http://h/x", cap_xml()) is None
    assert read_feed("http://h/x", atom()) == []
    with pytest.raises(FeedError, match="declares a DTD"):
        read_feed("http://h/x", b'<!DOCTYPE feed [<!ENTITY a "b">]><feed/>')


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_utf16_feed_with_an_entity_is_refused(encoding: str) -> None:
    feed = ('<?xml version="1.0" encoding="UTF-16"?>\n'
            '<!DOCTYPE feed [<!ENTITY kttv "urn:kttv:1">]>\n'
            '<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:kttv:feed</id>'
            '<entry><id>&kttv;</id><link href="a1.xml"/></entry></feed>')
    body = ("\ufeff" + feed).encode(encoding)
    assert b"<!DOCTYPE" not in body.upper()
    with pytest.raises(FeedError, match=re.escape("declares a DTD, <!DOCTYPE feed ...>")):
        read_feed("http://h/x", body)


def test_a_feed_address_that_is_not_http_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "controller.yaml"
    path.write_text(dedent("""\
        fleet: fleet.yaml
        playlists: [playlists]
        private_key: controller.key
        content_dir: content
        web:
          users_file: users.yaml
          work_dir: web
          cap:
            policy: send
            feeds:
              - url: https://canhbao.example.vn/cap.atom
              - url: ftp://canhbao.example.vn/cap.xml
                every_s: 5
        """), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_controller_config(path)
    said = {p.line: str(p) for p in caught.value.problems}
    assert sorted(said) == [12, 13]
    assert said[12].startswith(f"{path}:12:")
    assert "ftp://canhbao.example.vn/cap.xml" in said[12]
    assert "https://host/path" in said[12]
    assert "out of range" in said[13]

    path.write_text(path.read_text(encoding="utf-8").replace("ftp://", "https://")
                    .replace("every_s: 5", "every_s: 120"), encoding="utf-8")
    config = load_controller_config(path)
    assert config.web is not None
    assert config.web.cap is not None
    assert [(f.url, f.every_s) for f in config.web.cap.feeds] == [
        ("https://canhbao.example.vn/cap.atom", 60), ("https://canhbao.example.vn/cap.xml", 120)
    ]


# --- wired into `loa-controller run` ---------------------------------------------------------


def test_loa_controller_run_polls_the_configured_feeds(
    tmp_path: Path, broker: BrokerUnderTest, site: Site
) -> None:
    from controller.users import User, hash_password, save_users
    from protocol.signing import generate_keypair

    root = Path(__file__).resolve().parent.parent
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh-t\n  name: Tỉnh Thử\n  communes:\n"
        "    - {id: xa-a, name: Xã An, code: '31399', clusters: [{id: a-01, name: Chợ}]}\n",
        encoding="utf-8",
    )
    (tmp_path / "playlists").mkdir()
    save_users(tmp_path / "users.yaml", [
        User(name="quan-ly", role="manager", scope=["tinh-t"], password=hash_password("x" * 12))
    ])
    site.put("latest.xml", cap_xml(identifier="run-1"))
    config = tmp_path / "controller.yaml"
    config.write_text(dedent(f"""\
        broker_url: {broker.url}
        fleet: fleet.yaml
        playlists: [playlists]
        store_url: sqlite:///controller.db
        private_key: controller.key
        content_dir: content
        web:
          port: {free_port()}
          users_file: users.yaml
          work_dir: web
          cap:
            policy: approve
            feeds:
              - url: {site.url("latest.xml")}
        """), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def pending() -> bool:
        try:
            with closing(sqlite3.connect(tmp_path / "controller.db")) as db:
                rows = db.execute("select ref from cap_alerts where state = 'pending'")
                return rows.fetchall() == [(FLOOD_REF.format("run-1"),)]
        except sqlite3.Error:  # not created yet
            return False

    try:
        wait_until(pending, 30, "`loa-controller run` to take the alert from the feed")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    said = err.decode()
    assert proc.returncode == 0, said
    assert f"polling {site.url('latest.xml')} for CAP alerts every 60 s" in said
    assert f"CAP alert from {site.url('latest.xml')}: pending" in said
