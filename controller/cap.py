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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update

from controller.cap_message import (
    ACTING_STATUS,
    MAX_CAP_BYTES,
    Area,
    CapAlert,
    CapError,
    Info,
    parse_cap,
)
from controller.cap_policy import Decision, decide, sender_entry
from controller.config import CapConfig
from controller.fleet import Fleet
from controller.store import aware
from controller.store.schema import cap_alerts
from controller.urgent import AnnouncementRequest, Principal, SystemPrincipal, UrgentService
from protocol.l10n import Lang, Text

log = logging.getLogger(__name__)

# What the intake's callers and tests take from here, read from controller/cap_message.py.
__all__ = [
    "ACTING_STATUS", "MAX_CAP_BYTES", "Area", "CapAlert", "CapError", "CapFolder",
    "CapIntake", "CapResult", "Info", "Preview", "check_signature", "clusters_in_area",
    "parse_cap", "preview", "system_sender", "take_and_log",
]


@dataclass(frozen=True)
class CapResult:
    identifier: str
    msg_type: str
    # sent | pending | held | expired | refused | cancelled | ignored | no-clusters |
    # already-taken
    action: str
    announcements: list[str]
    detail: Text  # for the one who sent it in, in their language (the log: .in_("en"))


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


def other_provinces(fleet: Fleet, areas: list[Area]) -> list[str]:
    """Province statistics codes (two digits) the areas name, other than the fleet's own."""
    ours = fleet.province.code
    return sorted({code for area in areas for code in area.geocodes
                   if len(code) == 2 and code.isdigit() and code != ours})  # fmt: skip


@dataclass(frozen=True)
class Preview:
    """What taking an alert would do (`loa-controller cap check`, and the intake itself)."""

    alert: CapAlert
    clusters: list[str]  # the fleet's clusters in its areas
    decision: Decision | None  # None: nothing to air (not Actual, a Cancel, no cluster)


def preview(alert: CapAlert, fleet: Fleet, config: CapConfig, now: datetime) -> Preview:
    clusters = clusters_in_area(fleet, alert.areas)
    if alert.msg_type not in ("Alert", "Update") or alert.status != ACTING_STATUS:
        return Preview(alert, clusters, None)
    if not clusters:
        return Preview(alert, clusters, None)
    decision = decide(
        alert, config, now=now, matched=len(clusters), fleet_size=len(fleet.clusters),
        other_provinces=other_provinces(fleet, alert.areas),
    )
    return Preview(alert, clusters, decision)


def check_signature(raw: bytes, alert: CapAlert, config: CapConfig) -> bytes:
    """The signed alert's bytes, checked against its sender's certificate; CapError if the
    sender must sign and did not, or the signature fails. Unsigned alerts from senders
    without a certificate pass as they are."""
    entry = sender_entry(config, alert.sender)
    certificate = entry.certificate if entry is not None else None
    if certificate is None:
        return raw
    if not alert.signed:
        raise CapError(
            f"the sender {alert.sender} signs its alerts (cap.senders names its certificate "
            f"{certificate}), and this one carries no XML Signature: refused"
        )
    from signxml.exceptions import InvalidInput, InvalidSignature
    from signxml.verifier import (  # lxml: loaded only for signed alerts
        SignatureConfiguration,
        XMLVerifier,
    )

    try:
        pem = certificate.read_text(encoding="ascii")
    except (OSError, ValueError) as exc:
        raise CapError(f"cannot read the certificate {certificate} of {alert.sender}: {exc}; "
                       "correct cap.senders in controller.yaml") from None  # fmt: skip
    try:
        verified = XMLVerifier().verify(
            raw, x509_cert=pem,
            expect_config=SignatureConfiguration(location="./", require_x509=False),
        )
    except (InvalidSignature, InvalidInput) as exc:
        raise CapError(
            f"the alert's XML Signature does not verify with the certificate of "
            f"{alert.sender} ({certificate}): {exc}; refused, nothing aired"
        ) from None
    first = verified[0] if isinstance(verified, list) else verified
    return bytes(first.signed_data)


class CapIntake:
    def __init__(self, service: UrgentService, config: CapConfig) -> None:
        self._service = service
        self._config = config
        self._lock = threading.Lock()
        self._taking = threading.Lock()  # one message at a time: check, act, remember
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, raw: bytes, who: Principal) -> CapResult:
        alert = parse_cap(raw)
        signed = check_signature(raw, alert, self._config)
        if signed is not raw:  # what the key signed, and nothing else, is taken
            alert = parse_cap(signed)
        with self._taking:
            before = self._row(alert.ref)
            if before is not None:
                return _already_taken(alert, before)
            return self._take(alert, who)

    def _take(self, alert: CapAlert, who: Principal) -> CapResult:
        now = self._service.now()
        if alert.msg_type not in ("Alert", "Update", "Cancel"):
            return CapResult(alert.identifier, alert.msg_type, "ignored", [],
                             Text("msgType {type} is not aired", type=alert.msg_type))
        if alert.msg_type in ("Cancel", "Update") and alert.status != ACTING_STATUS:
            return self._not_actual(alert, who, now)
        clusters: list[str] = []
        decision: Decision | None = None
        if alert.msg_type != "Cancel" and alert.status == ACTING_STATUS:
            seen = preview(alert, self._service.fleet(), self._config, now)
            reach = self._service.reach(who)
            clusters = [c for c in seen.clusters if c in reach]
            decision = seen.decision
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
                                 Text("cancelled {n} referenced alert(s)",
                                      n=len(alert.references)))
        if alert.status != ACTING_STATUS:  # an Alert: Cancels and Updates returned above
            return CapResult(alert.identifier, alert.msg_type, "ignored", [],
                             Text("status {status}: only Actual alerts are aired",
                                  status=alert.status))
        if not clusters or decision is None:
            if alert.msg_type == "Update":
                self._remember(alert, who, now, "ignored")
            return CapResult(alert.identifier, alert.msg_type, "no-clusters", [],
                             Text("no cluster of ours lies in the alert's area"))
        return self._act(alert, who, now, clusters, decision)

    def _act(self, alert: CapAlert, who: Principal, now: datetime, clusters: list[str],
             decision: Decision) -> CapResult:  # fmt: skip
        why = decision.why  # English: the audit log, the stored outcome, the log
        reasons = _Reasons(decision)
        self._service.audit.record(
            at=now, user=who.name, action="cap-alert", subject=alert.identifier,
            level=decision.level, title=alert.headline[:200], text=alert.text,
            clusters=clusters, detail=f"ref={alert.ref}; {decision.action}: {why}",
        )
        if decision.action in ("expired", "refuse"):
            state = "expired" if decision.action == "expired" else "refused"
            self._remember(alert, who, now, state, clusters, outcome=f"{state}: {why}",
                           decision=decision)  # fmt: skip
            log.warning("CAP alert %s from %s not aired: %s", alert.identifier, alert.sender,
                        why)  # fmt: skip
            return CapResult(alert.identifier, alert.msg_type, "refused"
                             if state == "refused" else "expired", [], reasons)  # fmt: skip
        if decision.action == "hold":
            self._remember(alert, who, now, "scheduled", clusters, decision=decision,
                           due=decision.air_at)  # fmt: skip
            return CapResult(alert.identifier, alert.msg_type, "held", [],
                             Text("{why}; {n} clusters", why=reasons, n=len(clusters)))
        self._remember(alert, who, now, "pending", clusters, decision=decision,
                       outcome=f"waiting: {why}" if decision.action == "approve" else None)
        if decision.action == "approve":
            return CapResult(alert.identifier, alert.msg_type, "pending", [],
                             Text("waiting for a manager's approval: {why}; {n} clusters",
                                  why=reasons, n=len(clusters)))  # fmt: skip
        sent = self.send(alert.ref, who)
        return CapResult(alert.identifier, alert.msg_type, "sent", [sent],
                         Text("sent to {n} clusters ({why})", n=len(clusters), why=reasons))

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
        detail = (
            Text("status {status}: only Actual messages act on announcements; the alert(s) it "
                 "cancels are left as they are", status=alert.status)
            if alert.msg_type == "Cancel" else
            Text("status {status}: only Actual messages act on announcements; the alert(s) it "
                 "updates are left as they are and nothing new is sent", status=alert.status)
        )
        return CapResult(alert.identifier, alert.msg_type, "ignored", [], detail)

    def _remember(
        self, alert: CapAlert, who: Principal, now: datetime, state: str,
        clusters: list[str] | None = None, outcome: str | None = None,
        decision: Decision | None = None, due: datetime | None = None,
    ) -> None:
        values: dict[str, Any] = {}
        if decision is not None:
            values = {
                "level": decision.level,
                "repeat": decision.repeat or self._config.repeat,
                "every_s": int(decision.every.total_seconds()) if decision.every else None,
                "expires_at": decision.expires_at.astimezone(UTC)
                if decision.expires_at else None,
                "due_at": due.astimezone(UTC) if due else None,
            }
        with self._lock, self._service.store.engine.begin() as conn:
            conn.execute(insert(cap_alerts).values(
                ref=alert.ref, received_at=now.astimezone(UTC), received_by=who.name,
                state=state, text=alert.text, clusters=json.dumps(clusters or []),
                headline=alert.headline[:200], msg_type=alert.msg_type, outcome=outcome,
                **values,
            ))

    def send(self, ref: str, who: Principal, now: datetime | None = None) -> str:
        """Air an alert now: a pending one a manager approves, a held one whose time has
        come, or a repeat (`now`: the time it is aired at, the clock's by default). An
        alert past its expiry is not aired (recorded as expired)."""
        row = self._row(ref)
        if row is None or row["state"] not in ("pending", "scheduled", "sent"):
            raise CapError(Text("no pending CAP alert {ref!r}", ref=ref))
        now = now or self._service.now()
        expires = aware(row["expires_at"]) if row.get("expires_at") else None
        if expires is not None and expires <= now:
            self._set(ref, "expired", row["announcement"], due=None)
            raise CapError(
                f"CAP alert {ref} expired at {expires.isoformat()}: not aired"
            )
        req = AnnouncementRequest(
            targets=list(json.loads(row["clusters"])), level=row.get("level") or "emergency",
            text=row["text"], repeat=row.get("repeat") or self._config.repeat, gap_s=3.0,
            title=row["headline"] or None, ref=ref, expires_at=expires,
        )
        sent = self._service.send(who, req, source="cap")
        again = None
        if row.get("every_s") and expires is not None:
            at = now + timedelta(seconds=int(row["every_s"]))
            again = at if at < expires else None
        self._set(ref, "sent", sent.id, due=again)
        return sent.id

    def next_due(self) -> datetime | None:
        with self._service.store.engine.connect() as conn:
            found = conn.execute(
                select(func.min(cap_alerts.c.due_at))
                .where(cap_alerts.c.state.in_(("scheduled", "sent")))
            ).scalar()
        return aware(found) if found is not None else None

    def run_due(self, now: datetime | None = None) -> list[str]:
        """Air what is due: held alerts whose time has come, and repeats; their ids."""
        now = now or self._service.now()
        with self._service.store.engine.connect() as conn:
            refs = [r[0] for r in conn.execute(
                select(cap_alerts.c.ref).where(
                    cap_alerts.c.state.in_(("scheduled", "sent")),
                    cap_alerts.c.due_at <= now.astimezone(UTC),
                ).order_by(cap_alerts.c.due_at)
            )]  # fmt: skip
        who = system_sender(self._service.fleet().province.id)
        aired = []
        for ref in refs:
            with self._taking:
                try:
                    aired.append(self.send(ref, who, now))
                except CapError as exc:
                    log.warning("%s", exc)
                    self._set(ref, None, None, due=None)
                except Exception:  # the store or the audio failed: try again shortly
                    log.exception("could not air CAP alert %s now; trying again", ref)
        return aired

    def start(self) -> None:
        """Air held alerts and repeats when they are due (a thread; stop() ends it)."""
        self._thread = threading.Thread(target=self._run, name="cap-due", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                due = self.next_due()
                if due is not None and due <= self._service.now():
                    self.run_due()
            except Exception:
                log.exception("looking for CAP alerts due failed; trying again")

    def pending(self) -> list[dict[str, Any]]:
        with self._service.store.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(cap_alerts).where(cap_alerts.c.state == "pending")
                .order_by(cap_alerts.c.received_at)
            ).mappings()]
        for row in rows:
            row["received_at"] = aware(row["received_at"])
        return rows

    def not_aired(self, days: int = 7) -> list[dict[str, Any]]:
        """Alerts taken in the last `days` that were not aired (expired, refused) or wait
        for their time (held), newest first: what the approvals page shows beside the
        alerts waiting for a manager."""
        since = self._service.now() - timedelta(days=days)
        with self._service.store.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(cap_alerts)
                .where(cap_alerts.c.state.in_(("scheduled", "expired", "refused")),
                       cap_alerts.c.received_at >= since.astimezone(UTC))
                .order_by(cap_alerts.c.received_at.desc()).limit(50)
            ).mappings()]  # fmt: skip
        for row in rows:
            for key in ("received_at", "expires_at", "due_at"):
                row[key] = aware(row[key]) if row.get(key) else None
        return rows

    def known(self, ref: str) -> bool:
        """Whether the message `ref` (sender,identifier,sent: an Alert, Update or Cancel) was
        already acted on and remembered."""
        return self._row(ref) is not None

    def _row(self, ref: str) -> dict[str, Any] | None:
        with self._service.store.engine.connect() as conn:
            row = conn.execute(select(cap_alerts).where(cap_alerts.c.ref == ref)).mappings().first()
        return dict(row) if row else None

    def _set(self, ref: str, state: str | None, announcement: str | None = None, *,
             due: datetime | None = None) -> None:  # fmt: skip
        values: dict[str, Any] = {"due_at": due.astimezone(UTC) if due else None}
        if state is not None:
            values.update(state=state, announcement=announcement)
        with self._lock, self._service.store.engine.begin() as conn:
            conn.execute(update(cap_alerts).where(cap_alerts.c.ref == ref).values(**values))

    def _cancel(self, references: list[str], who: Principal) -> list[str]:
        stopped: list[str] = []
        for ref in references:
            row = self._row(ref)
            if row is not None and row["state"] in ("pending", "scheduled"):
                self._set(ref, "cancelled", row["announcement"])
            elif row is not None and row["state"] == "sent":
                self._set(ref, "sent", row["announcement"], due=None)  # no more repeats
            for announcement in self._service.find_by_ref(ref):
                self._service.stop(who, announcement)
                stopped.append(announcement)
        return stopped


class _Reasons(Text):
    """A decision's reasons as a Text: in the reader's language when shown."""

    def __init__(self, decision: Decision) -> None:  # no msgid of its own: the reasons have theirs
        self.msgid, self.values = "", {}
        self.decision = decision

    def in_(self, lang: Lang) -> str:
        return self.decision.why_in(lang)


def _already_taken(alert: CapAlert, row: dict[str, Any]) -> CapResult:
    at = aware(row["received_at"])
    outcome = row.get("outcome") or (
        row["state"] + (f" as {row['announcement']}" if row["announcement"] else "")
    )
    return CapResult(
        alert.identifier, alert.msg_type, "already-taken", [],
        Text("{ref} was already taken at {at} by {who} ({outcome}); nothing was done again",
             ref=alert.ref, at=at.isoformat(timespec="seconds"), who=row["received_by"],
             outcome=outcome),
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
    log.info("CAP alert from %s: %s (%s)", where, result.action, result.detail.in_("en"))
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
