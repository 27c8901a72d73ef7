"""CAP 1.2 intake: a public alert for our area becomes an emergency announcement.

An alert (OASIS Common Alerting Protocol 1.2, XML) is posted to POST /api/v1/cap by a
manager or an integration signed in as one. Its `<area>`s are matched against the fleet:

- `<geocode>` values equal to a node's national statistics code (`code:` in the fleet
  file: "93" a province, "31399" a commune) take every cluster under that node;
- `<polygon>` ("lat,lon lat,lon ...", closed) and `<circle>` ("lat,lon radius_km") take
  the clusters whose coordinates lie inside.

The matched clusters are narrowed to what the poster may reach. The Vietnamese `<info>`
(language vi*, else the first) gives the text: its headline, then its instruction, which
the text-to-speech engine speaks at emergency level, repeated as configured. The policy
(`web.cap.policy`) says whether it is sent at once (`send`) or kept pending until a
manager sends it from the approvals page (`approve`).

`Cancel` stops the announcements (and drops the pending alerts) its `<references>` name;
`Update` does the same, then takes the new alert in. Only `<status>Actual</status>` is
aired; Exercise, Test, System and Draft alerts are acknowledged and not aired. Only an
Actual Cancel or Update acts, too: one with another status stops and changes nothing
(CAP 1.2: such messages must not act on real alerts); it is remembered as ignored, with
why. XML with a DTD or entity declaration, in whatever encoding, is refused outright by
the parser (controller/untrusted_xml.py: no entity expansion, no external fetch).

Every message taken (an Alert aired or waiting for approval, every Update and Cancel)
is remembered in `cap_alerts` by its own reference (sender,identifier,sent), so the same
message taken again (re-posted, dropped again, still listed by a feed after a restart)
does nothing and is answered `already-taken`. Messages are taken one at a time.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from controller.config import CapConfig
from controller.fleet import Fleet
from controller.store import aware
from controller.store.schema import cap_alerts
from controller.untrusted_xml import RefusedXmlError, parse_untrusted
from controller.urgent import AnnouncementRequest, Principal, SystemPrincipal, UrgentService
from protocol.l10n import Text

log = logging.getLogger(__name__)

NS = "{urn:oasis:names:tc:emergency:cap:1.2}"
MAX_CAP_BYTES = 512 * 1024

# Per CAP 1.2, Exercise, Test, System and Draft messages must not act on real alerts.
ACTING_STATUS = "Actual"


class CapError(ValueError):
    """The posted document is not a CAP 1.2 alert we can act on; says why."""


@dataclass(frozen=True)
class Area:
    geocodes: list[str]
    polygons: list[list[tuple[float, float]]]
    circles: list[tuple[float, float, float]]


@dataclass(frozen=True)
class CapAlert:
    identifier: str
    sender: str
    sent: str
    status: str
    msg_type: str
    references: list[str]  # "sender,identifier,sent"
    headline: str
    instruction: str
    description: str
    areas: list[Area]

    @property
    def ref(self) -> str:
        return f"{self.sender},{self.identifier},{self.sent}"

    @property
    def text(self) -> str:
        parts = [p.strip().rstrip(".") for p in (self.headline, self.instruction) if p.strip()]
        return ". ".join(parts) + "." if parts else ""


@dataclass(frozen=True)
class CapResult:
    identifier: str
    msg_type: str
    action: str  # sent | pending | cancelled | ignored | no-clusters | already-taken
    announcements: list[str]
    detail: str


def _text(el: ET.Element | None, name: str) -> str:
    if el is None:
        return ""
    found = el.find(NS + name)
    return (found.text or "").strip() if found is not None else ""


def _point(text: str) -> tuple[float, float]:
    lat, lon = text.split(",")
    return float(lat), float(lon)


def parse_cap(raw: bytes) -> CapAlert:
    if len(raw) > MAX_CAP_BYTES:
        raise CapError(f"the alert is larger than {MAX_CAP_BYTES // 1024} KiB")
    try:
        root = parse_untrusted(raw)
    except RefusedXmlError as exc:
        raise CapError(f"not accepted as a CAP alert: {exc}") from None
    except ET.ParseError as exc:
        raise CapError(f"not well-formed XML: {exc}") from None
    if root.tag != NS + "alert":
        raise CapError(
            f"the root element is {root.tag!r}, not a CAP 1.2 <alert> "
            "(namespace urn:oasis:names:tc:emergency:cap:1.2)"
        )
    missing = [n for n in ("identifier", "sender", "sent", "status", "msgType")
               if not _text(root, n)]
    if missing:
        raise CapError(f"the alert lacks {', '.join('<' + m + '>' for m in missing)}")
    infos = root.findall(NS + "info")
    info = next((i for i in infos if _text(i, "language").lower().startswith("vi")), None)
    info = info if info is not None else (infos[0] if infos else None)
    areas: list[Area] = []
    try:
        for area in info.findall(NS + "area") if info is not None else []:
            geocodes = [_text(g, "value") for g in area.findall(NS + "geocode")]
            polygons = [
                [_point(p) for p in (poly.text or "").split()]
                for poly in area.findall(NS + "polygon")
            ]
            circles = []
            for circle in area.findall(NS + "circle"):
                centre, radius = (circle.text or "").split()
                lat, lon = _point(centre)
                circles.append((lat, lon, float(radius)))
            areas.append(Area([g for g in geocodes if g], polygons, circles))
    except ValueError:
        raise CapError(
            "an <area> has a polygon or circle that is not 'lat,lon lat,lon ...' or "
            "'lat,lon radius_km'"
        ) from None
    return CapAlert(
        identifier=_text(root, "identifier"), sender=_text(root, "sender"),
        sent=_text(root, "sent"), status=_text(root, "status"), msg_type=_text(root, "msgType"),
        references=_text(root, "references").split(),
        headline=_text(info, "headline") or _text(info, "event"),
        instruction=_text(info, "instruction"), description=_text(info, "description"),
        areas=areas,
    )


def _inside(lat: float, lon: float, polygon: list[tuple[float, float]]) -> bool:
    """Ray casting on (lat, lon) pairs; good enough at a province's scale."""
    inside = False
    n = len(polygon)
    for i in range(n):
        (y1, x1), (y2, x2) = polygon[i], polygon[(i + 1) % n]
        if (y1 > lat) != (y2 > lat):
            x = x1 + (lat - y1) * (x2 - x1) / (y2 - y1)
            if lon < x:
                inside = not inside
    return inside


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(a))


def clusters_in_area(fleet: Fleet, areas: list[Area]) -> list[str]:
    """The fleet's clusters the alert's areas cover."""
    found: set[str] = set()
    by_code = {n.code: n.id for n in fleet.nodes.values() if n.code}
    for area in areas:
        for code in area.geocodes:
            if code in by_code:
                found.update(fleet.clusters_in(by_code[code]))
        for c in fleet.clusters.values():
            if c.lat is None or c.lon is None:
                continue
            if any(len(p) >= 3 and _inside(c.lat, c.lon, p) for p in area.polygons) or any(
                _km(c.lat, c.lon, lat, lon) <= r for lat, lon, r in area.circles
            ):
                found.add(c.id)
    return sorted(found)


class CapIntake:
    def __init__(self, service: UrgentService, config: CapConfig) -> None:
        self._service = service
        self._config = config
        self._lock = threading.Lock()
        self._taking = threading.Lock()  # one message at a time: check, act, remember

    def take(self, raw: bytes, who: Principal) -> CapResult:
        alert = parse_cap(raw)
        with self._taking:
            before = self._row(alert.ref)
            if before is not None:
                return _already_taken(alert, before)
            return self._take(alert, who)

    def _take(self, alert: CapAlert, who: Principal) -> CapResult:
        now = self._service.now()
        if alert.msg_type not in ("Alert", "Update", "Cancel"):
            return CapResult(alert.identifier, alert.msg_type, "ignored", [],
                             f"msgType {alert.msg_type} is not aired")
        if alert.msg_type in ("Cancel", "Update") and alert.status != ACTING_STATUS:
            return self._not_actual(alert, who, now)
        clusters: list[str] = []
        if alert.msg_type != "Cancel" and alert.status == ACTING_STATUS:
            reach = self._service.reach(who)
            clusters = [c for c in clusters_in_area(self._service.fleet(), alert.areas)
                        if c in reach]
            if clusters and not alert.text:  # refused before anything is done
                raise CapError("the alert has neither a headline nor an instruction to speak")
        if alert.msg_type in ("Cancel", "Update"):
            stopped = self._cancel(alert.references, who)
            if alert.msg_type == "Cancel":
                self._service.audit.record(
                    at=now, user=who.name, action="cap-cancel", subject=alert.identifier,
                    detail=f"references {' '.join(alert.references)}; stopped {stopped}",
                )
                self._remember(alert, who, now, "applied")
                return CapResult(alert.identifier, alert.msg_type, "cancelled", stopped,
                                 f"cancelled {len(alert.references)} referenced alert(s)")
        if alert.status != ACTING_STATUS:  # an Alert: Cancels and Updates returned above
            return CapResult(alert.identifier, alert.msg_type, "ignored", [],
                             f"status {alert.status}: only Actual alerts are aired")
        if not clusters:
            if alert.msg_type == "Update":
                self._remember(alert, who, now, "ignored")
            return CapResult(alert.identifier, alert.msg_type, "no-clusters", [],
                             "no cluster of ours lies in the alert's area")
        self._service.audit.record(
            at=now, user=who.name, action="cap-alert", subject=alert.identifier, level="emergency",
            title=alert.headline[:200], text=alert.text, clusters=clusters,
            detail=f"ref={alert.ref} policy={self._config.policy}",
        )
        self._remember(alert, who, now, "pending", clusters)
        if self._config.policy == "approve":
            return CapResult(alert.identifier, alert.msg_type, "pending", [],
                             f"waiting for a manager's approval; {len(clusters)} clusters")
        sent = self.send(alert.ref, who)
        return CapResult(alert.identifier, alert.msg_type, "sent", [sent],
                         f"sent to {len(clusters)} clusters")

    def _not_actual(self, alert: CapAlert, who: Principal, now: datetime) -> CapResult:
        """A Cancel or Update that is an exercise, a test, a system message or a draft:
        what it references is left as it is and nothing new is aired. It is remembered as
        ignored, with why, so taking it again says what became of it."""
        rule = "only Actual messages act on announcements"
        self._remember(alert, who, now, "ignored",
                       outcome=f"ignored: status {alert.status}; {rule}")
        verb, more = (("cancels", "") if alert.msg_type == "Cancel"
                      else ("updates", " and nothing new is sent"))
        log.info(
            "CAP %s %s from %s (status %s, taken in as %s) ignored: %s, so the alert(s) it "
            "%s (%s) are left as they are%s",
            alert.msg_type, alert.identifier, alert.sender, alert.status, who.name, rule,
            verb, ", ".join(alert.references) or "none named", more,
        )
        return CapResult(alert.identifier, alert.msg_type, "ignored", [],
                         f"status {alert.status}: {rule}; the alert(s) it {verb} are left as "
                         f"they are{more}")

    def _remember(
        self, alert: CapAlert, who: Principal, now: datetime, state: str,
        clusters: list[str] | None = None, outcome: str | None = None,
    ) -> None:
        with self._lock, self._service.store.engine.begin() as conn:
            conn.execute(insert(cap_alerts).values(
                ref=alert.ref, received_at=now.astimezone(UTC), received_by=who.name,
                state=state, text=alert.text, clusters=json.dumps(clusters or []),
                headline=alert.headline[:200], msg_type=alert.msg_type, outcome=outcome,
            ))

    def send(self, ref: str, who: Principal) -> str:
        """Send a pending alert (policy approve: a manager's go-ahead)."""
        row = self._row(ref)
        if row is None or row["state"] != "pending":
            raise CapError(Text("no pending CAP alert {ref!r}", ref=ref))
        req = AnnouncementRequest(
            targets=list(json.loads(row["clusters"])), level="emergency", text=row["text"],
            repeat=self._config.repeat, gap_s=3.0, title=row["headline"] or None, ref=ref,
        )
        sent = self._service.send(who, req, source="cap")
        self._set(ref, "sent", sent.id)
        return sent.id

    def pending(self) -> list[dict[str, Any]]:
        with self._service.store.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(cap_alerts).where(cap_alerts.c.state == "pending")
                .order_by(cap_alerts.c.received_at)
            ).mappings()]
        for row in rows:
            row["received_at"] = aware(row["received_at"])
        return rows

    def known(self, ref: str) -> bool:
        """Whether the message `ref` (sender,identifier,sent: an Alert, Update or Cancel) was
        already acted on and remembered."""
        return self._row(ref) is not None

    def _row(self, ref: str) -> dict[str, Any] | None:
        with self._service.store.engine.connect() as conn:
            row = conn.execute(select(cap_alerts).where(cap_alerts.c.ref == ref)).mappings().first()
        return dict(row) if row else None

    def _set(self, ref: str, state: str, announcement: str | None = None) -> None:
        with self._lock, self._service.store.engine.begin() as conn:
            conn.execute(update(cap_alerts).where(cap_alerts.c.ref == ref).values(
                state=state, announcement=announcement))

    def _cancel(self, references: list[str], who: Principal) -> list[str]:
        stopped: list[str] = []
        for ref in references:
            row = self._row(ref)
            if row is not None and row["state"] == "pending":
                self._set(ref, "cancelled")
            for announcement in self._service.find_by_ref(ref):
                self._service.stop(who, announcement)
                stopped.append(announcement)
        return stopped


def _already_taken(alert: CapAlert, row: dict[str, Any]) -> CapResult:
    at = aware(row["received_at"])
    outcome = row.get("outcome") or (
        row["state"] + (f" as {row['announcement']}" if row["announcement"] else "")
    )
    return CapResult(
        alert.identifier, alert.msg_type, "already-taken", [],
        f"{alert.ref} was already taken at {at.isoformat(timespec='seconds')} by "
        f"{row['received_by']} ({outcome}); nothing was done again",
    )


def system_sender(province: str) -> SystemPrincipal:
    """Who alerts from a watched folder or a feed are taken in as: the system sender
    `cap-feed`, a manager of the whole province."""
    return SystemPrincipal(name="cap-feed", role="manager", scope=[province])


def take_and_log(
    intake: CapIntake,
    raw: bytes,
    who: Principal,
    where: str,
    *,
    if_refused: str,
    warn: Callable[[str], None] | None = None,
) -> CapResult:
    """Hand one alert to the intake and log what became of it, naming where it came from.

    `where` says where the alert came from ("file /srv/cap/x.xml", "https://... (entry
    ...)"); `if_refused` what happens to it and what the operator can do when the intake
    refuses it. A refusal is logged (by `warn`, else as a warning) and raised again.
    """
    try:
        result = intake.take(raw, who)
    except (CapError, OSError, ValueError) as exc:
        message = f"CAP alert from {where} refused: {exc}. {if_refused}"
        if warn is None:
            log.warning("%s", message)
        else:
            warn(message)
        raise
    log.info("CAP alert from %s: %s (%s)", where, result.action, result.detail)
    return result


class CapFolder:
    """CAP alerts dropped as files into a folder: by a feed fetcher, a USB stick, a person.

    Every `*.xml` file that appears is taken in as if posted to the API by the system
    sender `cap-feed` (scope: the whole province), then moved to `done/` or, when it is
    refused, to `failed/` with a `.reason.txt` beside it saying why. The folder is
    scanned every `interval_s` seconds; a file still being written (changed within the
    last interval) waits for the next scan.
    """

    def __init__(
        self, intake: CapIntake, folder: Path, province: str, interval_s: float = 2.0
    ) -> None:
        self._intake = intake
        self.folder = folder
        self._who = system_sender(province)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for sub in ("done", "failed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def scan(self, now: float | None = None) -> list[tuple[str, str]]:
        """Take in the files that are ready; (file name, outcome) for each."""
        now = time.time() if now is None else now
        outcomes = []
        files = sorted(self.folder.glob("*.xml"), key=lambda p: (p.stat().st_mtime, p.name))
        failed = self.folder / "failed"
        for path in files:
            if now - path.stat().st_mtime < self._interval:
                continue  # may still be being written
            try:
                raw = path.read_bytes()
            except OSError as exc:
                log.warning("CAP file %s cannot be read (%s); it is moved to %s/", path, exc,
                            failed)
                self._file_failed(path, f"cannot read it: {exc}")
                outcomes.append((path.name, f"failed: cannot read it: {exc}"))
                continue
            try:
                result = take_and_log(
                    self._intake, raw, self._who, f"file {path}",
                    if_refused=f"It is moved to {failed}/ with the reason in "
                    f"{path.name}.reason.txt; correct it and drop it in again",
                )
            except (CapError, OSError, ValueError) as exc:
                self._file_failed(path, str(exc))
                outcomes.append((path.name, f"failed: {exc}"))
                continue
            path.replace(self.folder / "done" / path.name)
            outcomes.append((path.name, result.action))
        return outcomes

    def _file_failed(self, path: Path, reason: str) -> None:
        path.replace(self.folder / "failed" / path.name)
        (self.folder / "failed" / f"{path.name}.reason.txt").write_text(
            f"{reason}\n", encoding="utf-8"
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cap-folder", daemon=True)
        self._thread.start()
        log.info("taking CAP alerts from files dropped in %s", self.folder)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.scan()
            except Exception:
                log.exception("scanning %s for CAP alerts failed; trying again", self.folder)
