"""What a CAP alert should make happen: the province's policy, as a pure decision.

The warning authority says how bad (`severity`), how soon (`urgency`) and how sure
(`certainty`) an alert is, who sent it, where it applies and when (`effective`,
`onset`, `expires`). `decide()` turns that, the clusters it matched and the policy
(controller.config.CapConfig) into one `Decision`: air it now, hold it until its time,
wait for a manager's approval, or not air it at all (expired, refused), with the
level, the times it is spoken, how often it is aired again until it expires, and the
reasons: protocol.l10n Texts, shown to the manager in their language (`why_in`) and
stored and logged in English (`why`).

The checks, in order (the first that stops an alert wins):
1. expired (`expires` passed): never aired, recorded as expired;
2. a sender the policy does not list (when it lists senders): refused or held for
   approval, as `unknown_senders` says;
3. the rules table: the first rule whose severity, urgency and certainty lists match
   gives the level, repeats, interval and whether it is sent at once or approved;
4. no Vietnamese `<info>`: approval, whatever the rule (the Vietnamese voice would read
   another language);
5. an area wider than `max_share` of the fleet, or naming other provinces: approval,
   unless the sender is trusted for wide areas;
6. `policy: approve` makes every alert wait for a manager;
7. `effective` or `onset` ahead: held until then (`future: hold`), or aired at once
   (`future: now`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from protocol.l10n import Lang, Text

if TYPE_CHECKING:
    from controller.cap_message import CapAlert
    from controller.config import CapConfig, CapRule, CapSender

Action = Literal["send", "hold", "approve", "expired", "refuse"]
Level = Literal["emergency", "priority"]


@dataclass(frozen=True)
class Decision:
    action: Action
    level: Level
    repeat: int  # times the text is spoken in one airing
    every: timedelta | None  # aired again this often until expires (None: once)
    air_at: datetime | None  # hold: when it is aired
    expires_at: datetime | None
    reasons: list[Text] = field(default_factory=list)
    rule: int | None = None  # the index of the rule that matched (1-based), for the record

    @property
    def why(self) -> str:
        """The reasons in English: what is stored with the alert and logged."""
        return self.why_in("en")

    def why_in(self, lang: Lang) -> str:
        """The reasons in this language, joined by '; '."""
        return "; ".join(reason.in_(lang) for reason in self.reasons)


def sender_entry(config: CapConfig, sender: str) -> CapSender | None:
    """The policy's entry for this sender (identifier patterns, shell-style: *, ?)."""
    for entry in config.senders:
        if fnmatch.fnmatchcase(sender, entry.sender):
            return entry
    return None


def matching_rule(rules: list[CapRule], alert: CapAlert) -> tuple[int, CapRule] | None:
    for index, rule in enumerate(rules, 1):
        if (_listed(alert.severity, rule.severity) and _listed(alert.urgency, rule.urgency)
                and _listed(alert.certainty, rule.certainty)):  # fmt: skip
            return index, rule
    return None


def _listed(value: str, allowed: list[str]) -> bool:
    return "*" in allowed or value in allowed


def decide(
    alert: CapAlert,
    config: CapConfig,
    *,
    now: datetime,
    matched: int,
    fleet_size: int,
    other_provinces: list[str],
) -> Decision:
    """What taking this Actual Alert (or Update) should do; see the module's docstring."""
    expires = alert.expires
    if expires is not None and expires <= now:
        return Decision("expired", "emergency", 1, None, None, expires, [
            Text("it expired at {at} (its <expires>), before it was taken in",
                 at=expires.isoformat())
        ])
    entry = sender_entry(config, alert.sender)
    reasons: list[Text] = []
    if config.senders and entry is None:
        listed = ", ".join(s.sender for s in config.senders)
        stranger = Text("the sender {sender} is not one the policy lists ({listed})",
                        sender=alert.sender, listed=listed)
        if config.unknown_senders == "refuse":
            return Decision("refuse", "emergency", 1, None, None, expires, [stranger])
        reasons.append(stranger)
    unknown = bool(config.senders) and entry is None  # held for a manager, from here on
    found = matching_rule(config.rules, alert)
    index: int | None = None
    level: Level = "priority"
    action: Action = "approve"
    repeat, every = config.repeat, None
    if found is None:  # the table has no catch-all: the safe answer
        reasons.append(Text(
            "no rule of the policy matches severity {severity}, urgency {urgency}, "
            "certainty {certainty}", severity=alert.severity, urgency=alert.urgency,
            certainty=alert.certainty,
        ))
    else:
        index, rule = found
        level, every, action = rule.level, rule.every, rule.action
        repeat = rule.repeat or config.repeat
        if action == "approve":
            reasons.append(Text(
                "rule {rule} (severity {severity}, urgency {urgency}, certainty {certainty}) "
                "asks for a manager's approval", rule=index, severity=alert.severity,
                urgency=alert.urgency, certainty=alert.certainty,
            ))
    if unknown:
        action = "approve"
    if not alert.vietnamese:
        action = "approve"
        languages = ", ".join(sorted({i.language or "none given" for i in alert.infos}))
        reasons.append(Text(
            "the alert has no <info> in Vietnamese (languages: {languages}): the "
            "Vietnamese voice would read another language", languages=languages,
        ))
    wide = fleet_size > 0 and matched / fleet_size > config.max_share
    if (wide or other_provinces) and not (entry is not None and entry.wide_areas):
        action = "approve"
        if wide:
            reasons.append(Text(
                "its area takes {matched} of the fleet's {size} clusters, more than "
                "{share:.0%}", matched=matched, size=fleet_size, share=config.max_share,
            ))
        if other_provinces:
            reasons.append(Text("its area names other provinces too ({provinces})",
                                provinces=", ".join(other_provinces)))
    if config.policy == "approve" and action == "send":
        action = "approve"
        reasons.append(Text("the policy is that a manager approves every alert"))
    starts = alert.starts
    air_at = None
    if action == "send" and starts is not None and starts > now:
        if config.future == "hold":
            action, air_at = "hold", starts
            reasons.append(Text("it takes effect at {at}: held until then",
                                at=starts.isoformat()))
        else:
            reasons.append(Text("it takes effect at {at}; the policy airs it at once",
                                at=starts.isoformat()))
    if action == "send" and not reasons:
        reasons.append(Text(
            "rule {rule}: severity {severity}, urgency {urgency}, certainty {certainty}",
            rule=index, severity=alert.severity, urgency=alert.urgency,
            certainty=alert.certainty,
        ))
    return Decision(action, level, repeat, every, air_at, expires, reasons, index)
