"""A CAP 1.2 message as Loa reads it: every `<info>` block (language, severity, urgency,
certainty, effective, onset, expires, areas), which of them are spoken, and the parser
that refuses what is not a CAP alert (controller/untrusted_xml.py: no DTD, no entity).

controller/cap.py acts on messages; controller/cap_policy.py decides what they should do.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

from controller.untrusted_xml import RefusedXmlError, parse_untrusted
from protocol.l10n import Text

NS = "{urn:oasis:names:tc:emergency:cap:1.2}"
DSIG = "{http://www.w3.org/2000/09/xmldsig#}"
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
class Info:
    """One <info> block: what the alert says in one language."""

    language: str
    event: str
    headline: str
    instruction: str
    description: str
    severity: str
    urgency: str
    certainty: str
    effective: datetime | None
    onset: datetime | None
    expires: datetime | None
    areas: list[Area]

    @property
    def text(self) -> str:
        parts = [p.strip().rstrip(".") for p in (self.headline or self.event, self.instruction)
                 if p.strip()]  # fmt: skip
        return ". ".join(parts) + "." if parts else ""


@dataclass(frozen=True)
class CapAlert:
    identifier: str
    sender: str
    sent: str
    status: str
    msg_type: str
    references: list[str]  # "sender,identifier,sent"
    infos: list[Info]
    signed: bool = False  # it carried an XML Signature (checked by CapIntake)

    @property
    def ref(self) -> str:
        return f"{self.sender},{self.identifier},{self.sent}"

    @property
    def vietnamese(self) -> bool:
        return any(_is_vietnamese(i) for i in self.infos)

    @property
    def spoken(self) -> list[Info]:
        """The <info> blocks aired: every Vietnamese one, in order; else the first."""
        vi = [i for i in self.infos if _is_vietnamese(i)]
        return vi or self.infos[:1]

    @property
    def headline(self) -> str:
        first = self.spoken[0] if self.spoken else None
        return (first.headline or first.event) if first is not None else ""

    @property
    def instruction(self) -> str:
        return self.spoken[0].instruction if self.spoken else ""

    @property
    def description(self) -> str:
        return self.spoken[0].description if self.spoken else ""

    @property
    def text(self) -> str:
        return " ".join(t for t in (i.text for i in self.spoken) if t)

    @property
    def areas(self) -> list[Area]:
        return [a for i in self.spoken for a in i.areas]

    @property
    def severity(self) -> str:
        return self.spoken[0].severity if self.spoken else "Unknown"

    @property
    def urgency(self) -> str:
        return self.spoken[0].urgency if self.spoken else "Unknown"

    @property
    def certainty(self) -> str:
        return self.spoken[0].certainty if self.spoken else "Unknown"

    @property
    def expires(self) -> datetime | None:
        """When the alert stops applying: the latest <expires> of the blocks aired (none if
        one of them has none)."""
        ends = [i.expires for i in self.spoken]
        return max(e for e in ends if e is not None) if ends and None not in ends else None

    @property
    def starts(self) -> datetime | None:
        """When the alert takes effect: the earliest <onset> (else <effective>) ahead of
        its sending, of the blocks aired; None when they say nothing."""
        begins = [i.onset or i.effective for i in self.spoken]
        given = [b for b in begins if b is not None]
        return min(given) if given else None


def _is_vietnamese(info: Info) -> bool:
    return info.language.lower().startswith("vi")


def _text(el: ET.Element | None, name: str) -> str:
    if el is None:
        return ""
    found = el.find(NS + name)
    return (found.text or "").strip() if found is not None else ""


def _point(text: str) -> tuple[float, float]:
    lat, lon = text.split(",")
    return float(lat), float(lon)


def _time(info: ET.Element, name: str) -> datetime | None:
    """A CAP dateTime (with its offset, as CAP 1.2 requires), or None when absent."""
    value = _text(info, name)
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CapError(
            f"<{name}>{value[:40]}</{name}> is not a CAP time: write it as "
            "2026-10-20T06:00:00+07:00"
        ) from None
    if at.tzinfo is None:
        raise CapError(f"<{name}>{value[:40]}</{name}> has no offset: CAP times carry one, "
                       "e.g. +07:00")  # fmt: skip
    return at


def _areas(info: ET.Element) -> list[Area]:
    areas: list[Area] = []
    try:
        for area in info.findall(NS + "area"):
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
    return areas


def parse_cap(raw: bytes) -> CapAlert:
    if len(raw) > MAX_CAP_BYTES:
        raise CapError(Text("the alert is larger than {kib} KiB", kib=MAX_CAP_BYTES // 1024))
    try:
        root = parse_untrusted(raw)
    except RefusedXmlError as exc:
        raise CapError(Text("not accepted as a CAP alert: {exc}", exc=str(exc))) from None
    except ET.ParseError as exc:
        raise CapError(Text("not well-formed XML: {exc}", exc=str(exc))) from None
    if root.tag != NS + "alert":
        raise CapError(Text(
            "the root element is {tag!r}, not a CAP 1.2 <alert> "
            "(namespace urn:oasis:names:tc:emergency:cap:1.2)", tag=root.tag,
        ))
    missing = [n for n in ("identifier", "sender", "sent", "status", "msgType")
               if not _text(root, n)]
    if missing:
        raise CapError(Text("the alert lacks {missing}",
                            missing=", ".join("<" + m + ">" for m in missing)))
    infos = [
        Info(
            language=_text(info, "language") or "en-US",  # CAP 1.2's default
            event=_text(info, "event"), headline=_text(info, "headline"),
            instruction=_text(info, "instruction"), description=_text(info, "description"),
            severity=_text(info, "severity") or "Unknown",
            urgency=_text(info, "urgency") or "Unknown",
            certainty=_text(info, "certainty") or "Unknown",
            effective=_time(info, "effective"), onset=_time(info, "onset"),
            expires=_time(info, "expires"), areas=_areas(info),
        )
        for info in root.findall(NS + "info")
    ]
    return CapAlert(
        identifier=_text(root, "identifier"), sender=_text(root, "sender"),
        sent=_text(root, "sent"), status=_text(root, "status"), msg_type=_text(root, "msgType"),
        references=_text(root, "references").split(), infos=infos,
        signed=root.find(DSIG + "Signature") is not None,
    )


