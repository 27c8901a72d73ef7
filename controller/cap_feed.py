"""CAP alerts pulled over the network: `web.cap.feeds` in the controller config.

Each configured address (http or https only) is polled every `every_s` seconds on a
thread of its own, so a slow or dead server never holds up the controller. The answer
may be:

- a CAP 1.2 `<alert>` itself (an address that always shows the latest alert);
- an Atom feed: each `<entry>` either carries the `<alert>` (in its `<content>`, or
  as an escaped document in it) or links to it (`<link href>`, or `<content src>`);
- an RSS 2.0 feed: each `<item>` links to the alert by `<enclosure url>` or `<link>`
  (or carries a `<cap:alert>`).

Every alert is handed to `CapIntake.take` as the system sender `cap-feed` (the whole
province in scope), exactly like a file dropped in `watch_dir` (controller.cap.CapFolder).
What was taken is remembered, by entry (its id and `updated`, else its link) and by CAP
reference (sender,identifier,sent), the last `REMEMBER` of each, so polling the same
feed again takes nothing twice; a message the intake already remembers (an Alert, Update
or Cancel taken before a restart, posted to the API or dropped in the folder) is not taken
again either. The feed is fetched with a conditional GET (If-None-Match /
If-Modified-Since): an unchanged feed costs one request and a 304.

Failures: a feed that cannot be fetched, answers an HTTP error or is not a CAP alert,
Atom or RSS, is logged with its address, the reason and what to do, and polled again
at its next turn. An entry whose alert cannot be fetched or is refused is logged with the
feed and the entry; the others are taken all the same, and the feed's validators
(ETag, Last-Modified) are not kept, so the next poll reads the whole feed again and
tries that entry again. A problem that is the same as at the last poll is logged at
DEBUG only; when it clears, one INFO line says so.

Alerts from one poll are taken oldest `<sent>` first, so a Cancel or an Update that
arrives together with the alert it names comes after it.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

from controller.cap import CapIntake, system_sender, take_and_log
from controller.cap_message import MAX_CAP_BYTES, NS, CapAlert, CapError, parse_cap
from controller.config import CapFeedConfig
from controller.untrusted_xml import RefusedXmlError, parse_untrusted

log = logging.getLogger(__name__)

ATOM = "{http://www.w3.org/2005/Atom}"
MAX_FEED_BYTES = 4 * 1024 * 1024
REMEMBER = 10_000  # entries and CAP references kept in memory, the oldest forgotten first
ACCEPT = (
    "application/cap+xml, application/atom+xml, application/rss+xml, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
USER_AGENT = "loa-controller (CAP feed reader)"
_ORDER = {"Alert": 0, "Update": 1, "Cancel": 2}


NETWORK_ADVICE = (
    "if this lasts, check the address, this machine's network and proxy, and that the "
    "server is up"
)
PUBLISHER_ADVICE = "check the address with the feed's publisher"


class FetchError(Exception):
    """An address could not be read: why (the message), and what the operator can do."""

    def __init__(self, reason: str, advice: str = NETWORK_ADVICE) -> None:
        super().__init__(reason)
        self.advice = advice


class FeedError(Exception):
    """What an address answered is not a CAP alert, an Atom feed or an RSS feed."""

    advice = PUBLISHER_ADVICE


def http_opener(proxies: dict[str, str] | None = None) -> urllib.request.OpenerDirector:
    """An opener for http and https only (redirects too): no file:, ftp: or data: URLs.

    proxies: as for urllib.request.ProxyHandler; None takes them from the environment
    (http_proxy, https_proxy, no_proxy), {} uses none.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(proxies),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


@dataclass(frozen=True)
class Answer:
    """What a GET brought back: 200 with a body, or 304 (unchanged)."""

    status: int
    url: str  # after redirects
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None


def fetch(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    timeout: float,
    limit: int,
    etag: str | None = None,
    last_modified: str | None = None,
) -> Answer:
    """GET url within about `timeout` seconds and `limit` bytes; FetchError says why not."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{url!r} is not an http:// or https:// address; it is not fetched",
                         PUBLISHER_ADVICE)
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    # suspicious-url-open-usage: only http and https reach here (checked above), and the
    # opener has no handler for any other scheme, redirects included.
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as r:
            body = _read(r, timeout, limit, deadline)
            return Answer(200, r.geturl(), body, r.headers.get("ETag"),
                          r.headers.get("Last-Modified"))
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 304:
                return Answer(304, url)
            advice = (
                "the server is failing; if this lasts, tell the feed's publisher"
                if exc.code >= 500 else PUBLISHER_ADVICE
            )
            raise FetchError(f"the server answered HTTP {exc.code} {exc.reason}", advice) from None
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach it ({exc.reason})") from None
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"the connection failed ({exc!r})") from None


def _read(response: Any, timeout: float, limit: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise FetchError(f"the answer took longer than {timeout:g} s to arrive")
        chunk: bytes = response.read1(65536)  # returns after one read: the deadline holds
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise FetchError(f"the answer is larger than {limit // 1024} KiB", PUBLISHER_ADVICE)
        chunks.append(chunk)


@dataclass(frozen=True)
class Entry:
    """One entry of a feed: its alert embedded, or the address of it."""

    label: str  # for the log: the entry's id, else its link, else its position
    key: str | None  # what it is remembered by; None: by its CAP reference only
    link: str | None = None
    embedded: bytes | None = None


def read_feed(url: str, body: bytes) -> list[Entry] | None:
    """The entries of an Atom or RSS feed; None when the body is a CAP alert itself."""
    try:
        root = parse_untrusted(body)
    except RefusedXmlError as exc:
        raise FeedError(f"not accepted: {exc}") from None
    except ET.ParseError as exc:
        raise FeedError(
            f"the answer is not XML ({exc}): perhaps a web page about the feed, not the "
            "feed itself"
        ) from None
    if root.tag.rsplit("}", 1)[-1] == "alert":
        return None  # the intake says whether it is CAP 1.2
    if root.tag == ATOM + "feed":
        return [_atom_entry(url, e, i) for i, e in enumerate(root.findall(ATOM + "entry"), 1)]
    if root.tag == "rss":
        return [_rss_item(url, e, i) for i, e in enumerate(root.iter("item"), 1)]
    raise FeedError(
        f"it is neither a CAP 1.2 <alert> nor an Atom or RSS feed (its root element is "
        f"{root.tag!r})"
    )


def _embedded(entry: ET.Element, content: ET.Element | None) -> bytes | None:
    alert = next(entry.iter(NS + "alert"), None)
    if alert is not None:
        alert.tail = None
        serialised: bytes = ET.tostring(alert, encoding="utf-8")
        return serialised
    text = (content.text or "").strip() if content is not None else ""
    if text.startswith("<") and "alert" in text[:2000]:
        return text.encode("utf-8")  # the alert as escaped text (type="text" or "html")
    return None


def _key(url: str, ident: str, updated: str) -> str:
    return f"{url} {ident} {updated}".rstrip()


def _rank(kind: str | None, href: str) -> int:
    """How likely a link is to be the CAP document: 1 (surely) to 4 (a web page)."""
    kind = (kind or "").lower()
    if "cap" in kind:
        return 1
    if "xml" in kind or href.endswith((".xml", ".cap")):
        return 2
    return 4 if "html" in kind else 3


def _atom_entry(url: str, entry: ET.Element, position: int) -> Entry:
    ident = (entry.findtext(ATOM + "id") or "").strip()
    updated = (entry.findtext(ATOM + "updated") or "").strip()
    content = entry.find(ATOM + "content")
    links: list[tuple[int, str]] = []
    if content is not None and content.get("src"):
        links.append((0, content.get("src", "")))
    for element in entry.findall(ATOM + "link"):
        href = element.get("href")
        if not href or element.get("rel") == "self":
            continue
        links.append((_rank(element.get("type"), href), href))
    href = min(links, key=lambda found: found[0])[1] if links else None
    link = urljoin(url, href) if href else None
    label = ident or link or f"number {position}"
    ident = ident or link or ""
    return Entry(label, _key(url, ident, updated) if ident else None, link,
                 _embedded(entry, content))


def _rss_item(url: str, item: ET.Element, position: int) -> Entry:
    found = item.find("guid")
    guid = (found.text or "").strip() if found is not None else ""
    links: list[tuple[int, str]] = []
    for enclosure in item.findall("enclosure"):
        if enclosure.get("url"):
            links.append((min(_rank(enclosure.get("type"), ""), 2), enclosure.get("url", "")))
    page = (item.findtext("link") or "").strip()
    if page:
        links.append((_rank(None, page), page))
    if found is not None and found.get("isPermaLink", "true") != "false" and guid:
        links.append((5, guid))
    href = min(links, key=lambda found: found[0])[1] if links else None
    link = urljoin(url, href) if href else None
    ident = guid or link or ""
    updated = (item.findtext("pubDate") or "").strip()
    return Entry(ident or f"number {position}", _key(url, ident, updated) if ident else None,
                 link, _embedded(item, None))


class Remembered:
    """The last `limit` keys (with a note each), the longest unused forgotten first."""

    def __init__(self, limit: int = REMEMBER) -> None:
        self.limit = limit
        self._keys: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: str) -> str | None:
        """The key's note, if remembered; it counts as used."""
        if key not in self._keys:
            return None
        self._keys.move_to_end(key)
        return self._keys[key]

    def put(self, key: str, note: str = "") -> None:
        self._keys[key] = note
        self._keys.move_to_end(key)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def pop(self, key: str) -> str | None:
        return self._keys.pop(key, None)


@dataclass(frozen=True)
class FeedOutcome:
    """What one poll did with one feed or entry."""

    feed: str  # the configured address
    entry: str  # the entry's label; "" for the feed itself
    # sent | pending | cancelled | ignored | no-clusters (CapIntake), unchanged (304),
    # already taken, or "failed: why"
    outcome: str


@dataclass
class _Doc:
    entry: Entry
    where: str
    raw: bytes
    alert: CapAlert | None  # None: not parsable; the intake says why when it refuses it


class CapFeed:
    """Polls the configured addresses for CAP alerts and hands new ones to the intake."""

    def __init__(
        self,
        intake: CapIntake,
        feeds: Sequence[CapFeedConfig],
        province: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        opener: urllib.request.OpenerDirector | None = None,
        remember: int = REMEMBER,
    ) -> None:
        self._intake = intake
        self.feeds = list(feeds)
        self._who = system_sender(province)
        self._clock = clock
        self._opener = opener or http_opener()
        self._due = {f.url: float("-inf") for f in self.feeds}
        self._validators: dict[str, tuple[str | None, str | None]] = {}
        self.taken = Remembered(remember)  # entry keys and "cap <ref>"
        self._troubles = Remembered(remember)  # what was last logged about a feed or entry
        self._polling = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- polling --------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> list[FeedOutcome]:
        """Poll every feed due at `now` (the clock's time if None); what came of each."""
        outcomes: list[FeedOutcome] = []
        with self._polling:
            now = self._clock() if now is None else now
            for feed in self.feeds:
                if self._due[feed.url] > now or self._stop.is_set():
                    continue
                self._due[feed.url] = now + feed.every_s
                try:
                    outcomes += self._poll(feed)
                except Exception:
                    log.exception(
                        "CAP feed %s: polling it failed unexpectedly; nothing more was taken "
                        "from it. It is polled again in %g s", feed.url, feed.every_s,
                    )
                    outcomes.append(FeedOutcome(feed.url, "", "failed: unexpected error"))
        return outcomes

    def next_due(self) -> float:
        """When the next feed is due, on the clock's scale."""
        return min(self._due.values(), default=float("inf"))

    def _poll(self, feed: CapFeedConfig) -> list[FeedOutcome]:
        url = feed.url
        again = f"It is polled again in {feed.every_s:g} s"
        etag, modified = self._validators.get(url, (None, None))
        try:
            answer = fetch(self._opener, url, timeout=feed.timeout_s, limit=MAX_FEED_BYTES,
                           etag=etag, last_modified=modified)
            if answer.status == 304:
                self._cleared(url, f"CAP feed {url} answers again (unchanged)")
                log.debug("CAP feed %s: unchanged", url)
                return [FeedOutcome(url, "", "unchanged")]
            entries = read_feed(answer.url, answer.body)
        except (FetchError, FeedError) as exc:
            self._trouble(url, f"CAP feed {url}: {exc}; nothing was taken from it. {again}; "
                          f"{exc.advice}")
            return [FeedOutcome(url, "", f"failed: {exc}")]
        self._cleared(url, f"CAP feed {url} answers again")
        if entries is None:  # the address is a CAP document itself
            whole = Entry("", None)
            docs = [_Doc(whole, url, answer.body, _parsed(answer.body))]
            outcomes: list[FeedOutcome] = []
            if_refused = f"{again}; if it stays refused, tell the publisher of this address"
        else:
            docs, outcomes = self._documents(feed, entries)
            if_refused = (f"The other entries are taken; this one is tried again in "
                          f"{feed.every_s:g} s. If it stays refused, tell the feed's publisher")
        complete = not any(o.outcome.startswith("failed") for o in outcomes)
        for doc in sorted(docs, key=_oldest_first):
            if self._stop.is_set():
                return outcomes  # stopping: the rest at the next start
            outcome = self._take(feed, doc, if_refused)
            complete = complete and not outcome.startswith("failed")
            outcomes.append(FeedOutcome(url, "" if entries is None else doc.entry.label, outcome))
        if complete:  # everything dealt with: the next poll may be a 304
            self._validators[url] = (answer.etag, answer.last_modified)
        else:
            self._validators.pop(url, None)
        return outcomes

    def _documents(
        self, feed: CapFeedConfig, entries: list[Entry]
    ) -> tuple[list[_Doc], list[FeedOutcome]]:
        """The alert of every entry not taken yet; failures as outcomes."""
        docs: list[_Doc] = []
        outcomes: list[FeedOutcome] = []
        for entry in entries:
            if entry.key is not None and self.taken.get(entry.key) is not None:
                continue
            if entry.embedded is not None:
                where = f"entry {entry.label} of CAP feed {feed.url}"
                docs.append(_Doc(entry, where, entry.embedded, _parsed(entry.embedded)))
                continue
            if entry.link is None:
                self._trouble(_trouble_key(feed, entry), (
                    f"CAP feed {feed.url}, entry {entry.label}: it neither carries a CAP alert "
                    "nor links to one; it is passed over"))
                if entry.key is not None:
                    self.taken.put(entry.key, "no alert")
                continue
            if self._stop.is_set():
                break
            try:
                answer = fetch(self._opener, entry.link, timeout=feed.timeout_s,
                               limit=MAX_CAP_BYTES)
            except FetchError as exc:
                self._trouble(_trouble_key(feed, entry), (
                    f"CAP feed {feed.url}, entry {entry.label}: cannot fetch its alert "
                    f"{entry.link}: {exc}. The other entries are taken; this one is tried "
                    f"again in {feed.every_s:g} s; {exc.advice}"))
                outcomes.append(FeedOutcome(feed.url, entry.label, f"failed: {exc}"))
                continue
            where = f"{entry.link} (entry {entry.label} of CAP feed {feed.url})"
            docs.append(_Doc(entry, where, answer.body, _parsed(answer.body)))
        return docs, outcomes

    def _take(self, feed: CapFeedConfig, doc: _Doc, if_refused: str) -> str:
        entry = doc.entry
        trouble_key = _trouble_key(feed, entry)
        if doc.alert is not None:
            ref_key = f"cap {doc.alert.ref}"
            if self.taken.get(ref_key) is not None or self._intake.known(doc.alert.ref):
                log.debug("CAP alert from %s: %s was taken already", doc.where, doc.alert.ref)
                self._remember(entry, ref_key)
                return "already taken"
        try:
            result = take_and_log(
                self._intake, doc.raw, self._who, doc.where, if_refused=if_refused,
                warn=lambda message: self._trouble(trouble_key, message),
            )
        except (CapError, OSError, ValueError) as exc:
            return f"failed: {exc}"
        except Exception as exc:
            log.exception("CAP alert from %s could not be taken in; it is tried again in %g s",
                          doc.where, feed.every_s)
            return f"failed: {exc!r}"
        self._cleared(trouble_key)  # take_and_log has said what became of it
        self._remember(entry, f"cap {doc.alert.ref}" if doc.alert is not None else None)
        return result.action

    def _remember(self, entry: Entry, ref_key: str | None) -> None:
        if entry.key is not None:
            self.taken.put(entry.key, "taken")
        if ref_key is not None:
            self.taken.put(ref_key, "taken")

    # --- logging a problem once -----------------------------------------------------------

    def _trouble(self, key: str, message: str) -> None:
        """A warning, unless it is the same as the last one about this feed or entry."""
        if self._troubles.get(key) == message:
            log.debug("%s (the same as at the last poll)", message)
            return
        self._troubles.put(key, message)
        log.warning("%s", message)

    def _cleared(self, key: str, message: str | None = None) -> None:
        """The feed or entry is fine again: say so if a problem was logged about it."""
        if self._troubles.pop(key) is not None and message is not None:
            log.info("%s", message)

    # --- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cap-feed", daemon=True)
        self._thread.start()
        for feed in self.feeds:
            log.info("polling %s for CAP alerts every %g s", feed.url, feed.every_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("polling the CAP feeds failed; trying again at the next poll")
            self._stop.wait(max(0.0, self.next_due() - self._clock()))


def _trouble_key(feed: CapFeedConfig, entry: Entry) -> str:
    return entry.key or f"{feed.url} entry {entry.label}"


def _parsed(raw: bytes) -> CapAlert | None:
    try:
        return parse_cap(raw)
    except CapError:
        return None


def _oldest_first(doc: _Doc) -> tuple[int, float, int]:
    """Alerts by <sent>, an Alert before the Update or Cancel sent at the same time."""
    if doc.alert is None:
        return (0, 0.0, 0)  # refused anyway; said first
    try:
        sent = datetime.fromisoformat(doc.alert.sent)
    except ValueError:
        return (2, 0.0, _ORDER.get(doc.alert.msg_type, 3))
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    return (1, sent.timestamp(), _ORDER.get(doc.alert.msg_type, 3))
