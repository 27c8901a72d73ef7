"""Why a cluster is where it is, in the reader's language.

The reasons beside a cluster's state are English on the wire and in the store: agents
write them (device_agent/player.py: preempted, stopped, missed because ...) and so does
the controller (controller/urgent.py and controller/confirmations.py: not connected, not
confirmed, not received; controller/silence.py: nothing heard). The page and
`loa-controller fleet` show each one they know as a sentence of the catalog, its times in
the fleet's time zone; one they do not know (a new agent's, an output's own error) as a
plain "the receiver box reported a problem", the English kept for the technician (the
cell's tooltip on the page).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from protocol.l10n import Lang, Text, When
from protocol.messages import LEVELS


@dataclass(frozen=True)
class Shown:
    """A reason as the page shows it, and the English it came from (None: the same)."""

    text: str
    original: str | None = None


Parts = dict[str, str]


def _time(written: str, tz: tzinfo) -> When | str:
    """A time the controller wrote: ISO 8601, or "2026-12-06 14:30:00 +07" (a date and
    time in the fleet's zone, then the zone's abbreviation)."""
    try:
        at = datetime.fromisoformat(written)
    except ValueError:
        found = re.match(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d)?", written)
        if found is None:
            return written
        at = datetime.fromisoformat(found[0])
    return When(at if at.tzinfo is not None else at.replace(tzinfo=tz), tz)


def _what(written: str) -> Text | str:
    """A play as the agent describes it: "<bulletin> (<level>)"."""
    found = re.fullmatch(r"(?P<bulletin>.*) \((?P<level>\w+)\)", written)
    if found is None or found["level"] not in LEVELS:
        return written
    return Text("{bulletin} ({level})", bulletin=found["bulletin"], level=LEVEL[found["level"]])


LEVEL: dict[str, Text] = {
    "normal": Text("normal"), "priority": Text("priority"), "emergency": Text("emergency"),
}

Rule = tuple[re.Pattern[str], Callable[[Parts, tzinfo], Text]]

RULES: list[Rule] = [
    (re.compile(r"not connected since (?P<at>\S+)"),
     lambda p, tz: Text("not connected since {at}", at=_time(p["at"], tz))),
    (re.compile(r"not connected \(never seen\)"), lambda p, tz: Text("never connected")),
    (re.compile(r"sent (?P<n>\d+) times, not confirmed yet"),
     lambda p, tz: Text("sent {n} times, not confirmed yet", n=p["n"])),
    (re.compile(r"not received: no confirmation from the cluster by (?P<at>.+?)"
                r"(?: \(it refused the command: (?P<refusal>.*)\))?"),
     lambda p, tz: Text("not received: the cluster did not confirm it by {at}",
                        at=_time(p["at"], tz))
     if not p.get("refusal") else
     Text("not received: the cluster did not confirm it by {at} (it refused the command)",
          at=_time(p["at"], tz))),
    (re.compile(r"stopped by the controller"), lambda p, tz: Text("stopped by the controller")),
    (re.compile(r"stopped"), lambda p, tz: Text("stopped")),
    (re.compile(r"the agent was shut down during the play"),
     lambda p, tz: Text("the receiver box was shut down during the play")),
    (re.compile(r"preempted by (?P<what>.+)"),
     lambda p, tz: Text("interrupted by {what}", what=_what(p["what"]))),
    (re.compile(r"audio incomplete: (?P<missing>\d+) of (?P<total>\d+) chunks missing"),
     lambda p, tz: Text("the audio did not arrive whole: {missing} of {total} parts missing",
                        missing=p["missing"], total=p["total"])),
    (re.compile(r"agent was not running \(powered off or restarting\) until (?P<at>\S+), "
                r"after its latest start \S+"),
     lambda p, tz: Text("the receiver box was off or restarting until {at}, too late to play",
                        at=p["at"])),
    (re.compile(r"output busy with (?P<what>.+) past its latest start \S+"),
     lambda p, tz: Text("the speakers were busy with {what} until too late",
                        what=_what(p["what"]))),
    (re.compile(r"not played again after its interruption: the output was busy.*"),
     lambda p, tz: Text("not played again after its interruption: the speakers were busy "
                        "until too late")),
    (re.compile(r"nothing heard for (?P<s>[\d.]+) s \(more than 1\.5 × its keepalive of "
                r"(?P<keepalive>[\d.]+) s\)"),
     lambda p, tz: Text("nothing heard for {s:g} s (more than 1.5 × its keepalive of "
                        "{keepalive:g} s)", s=float(p["s"]), keepalive=float(p["keepalive"]))),
    (re.compile(r"could not start by its latest start (?P<at>\S+)"),
     lambda p, tz: Text("could not start by {at}", at=p["at"])),
]


#: The details the audit log keeps of a cluster's enrolment (controller/identities.py).
AUDIT_RULES: list[Rule] = [
    (re.compile(r"token expires (?P<at>\S+), approves itself"),
     lambda p, tz: Text("token valid until {at}, approves itself", at=_time(p["at"], tz))),
    (re.compile(r"token expires (?P<at>\S+), needs a manager's approval"),
     lambda p, tz: Text("token valid until {at}, needs a manager's approval",
                        at=_time(p["at"], tz))),
    (re.compile(r"replaces key (?P<key>\S+)"),
     lambda p, tz: Text("replaces key {key}", key=p["key"])),
    (re.compile(r"registered key (?P<key>\S+) \(the token approves itself\)"),
     lambda p, tz: Text("registered key {key} (the token approves itself)", key=p["key"])),
    (re.compile(r"registered key (?P<key>\S+), made by (?P<by>.+)"),
     lambda p, tz: Text("registered key {key}, made by {by}", key=p["key"], by=p["by"])),
    (re.compile(r"registered key (?P<key>\S+)"),
     lambda p, tz: Text("registered key {key}", key=p["key"])),
    (re.compile(r"retired key (?P<key>\S+) \(box replaced\)"),
     lambda p, tz: Text("retired key {key} (box replaced)", key=p["key"])),
    (re.compile(r"rejected the join request of key (?P<key>\S+)"),
     lambda p, tz: Text("rejected the join request of key {key}", key=p["key"])),
]


def _apply(rules: list[Rule], written: str, lang: Lang, tz: tzinfo) -> Shown:
    """written, a "; "-separated list of parts, in this language; a part no rule knows
    makes it a plain sentence with the original kept."""
    said: list[str] = []
    for part in (part.strip() for part in written.split("; ")):
        for pattern, text in rules:
            found = pattern.fullmatch(part)
            if found is not None:
                said.append(text({k: v for k, v in found.groupdict().items() if v}, tz).in_(lang))
                break
        else:
            return Shown("", written)
    return Shown("; ".join(said))


def shown(reason: str | None, lang: Lang, tz: tzinfo) -> Shown:
    """A cluster's reason in this language; one the rules do not know, as a plain
    sentence with the original kept."""
    if not reason or lang == "en":
        return Shown(reason or "")
    found = _apply(RULES, reason, lang, tz)
    if found.original is not None:
        return Shown(Text("the receiver box reported a problem").in_(lang), reason)
    return found


#: The keys of an audit row's key=value details (controller/urgent.py, approval.py, cap.py).
DETAIL_KEYS: dict[str, Text] = {
    "source": Text("source"), "repeat": Text("times"), "gap_s": Text("gap (s)"),
    "voice": Text("voice"), "ref": Text("reference"), "policy": Text("policy"),
}
_KEY_VALUES = re.compile(r"\w+=\S+(?: \w+=\S+)*")


def audit_detail(detail: str | None, lang: Lang, tz: tzinfo) -> Shown:
    """What the audit log says of an action (an enrolment step, or key=value details of a
    send or an approval), in this language."""
    if not detail or lang == "en":
        return Shown(detail or "")
    if _KEY_VALUES.fullmatch(detail):
        pairs = [pair.partition("=") for pair in detail.split()]
        return Shown(", ".join(
            f"{DETAIL_KEYS[k].in_(lang) if k in DETAIL_KEYS else k}: {v}" for k, _eq, v in pairs
        ))
    found = _apply(AUDIT_RULES, detail, lang, tz)
    if found.original is not None:
        return Shown(Text("see the English record").in_(lang), detail)
    return found
