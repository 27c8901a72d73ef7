"""Command admission: only the controller's fresh, signed commands for this cluster pass.

A speaker network is a public megaphone, so every payload on a command topic goes
through `Guard.admit` before it can have any effect. In order:

1. signature: the payload must be a JSON command signed with the controller key pinned
   in the agent config (`protocol.signing.Verifier`); unsigned, badly signed, non-JSON
   and malformed payloads are rejected;
2. membership bookkeeping: membership commands are retained, so the broker hands the
   current one over again on every reconnect, and the controller publishes it again
   after each of its reconnections and every few minutes. The same membership command
   again, or one older than the current one (a lower `version`, or the same version
   issued earlier), is ignored silently (`Ignored`), not reported. Memberships are
   ordered by version, so they are not remembered as seen (a replay is older);
3. time: a command past its `expires_at` is rejected as expired (`Expired`, carrying the
   verified command once its address is checked: a play is then reported as `expired`);
   one issued more than five minutes in this cluster's future is rejected (a clock
   problem or a forgery);
4. addressing: the cluster id must be in `to.clusters`, or one of its groups in
   `to.groups`, and the topic the command came on must be the cluster's own topic or one
   of its groups' topics; membership commands only on the cluster's own topics;
5. replay: a command id seen before (remembered on disk across restarts, until that
   command expires) is not obeyed again. A play or an ack command seen before is the
   same command delivered again (QoS 1 is at least once: a broker resends what it has no
   PUBACK for after a reconnection), not an attack: it raises `Duplicate` (an `Ignored`),
   and the agent answers a play with its `received` again, so that a controller that
   asks learns of it (device_agent/agent.py). A stop seen before is rejected as
   replayed: stopping "everything" again could cut a later play.

The controller sends a play a cluster has not confirmed again as a new command (new id,
same play id, docs/protocol.md): the guard admits it as any fresh command, and the
player schedules a play id once, answering it as a duplicate too.

Key rotations (device_agent/trust.py) come only on the cluster's own `key` topic and
must be signed by the key they retire; the retained copy of one already applied is
ignored silently, like a membership.

A command that passes is remembered as seen before `admit` returns it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from device_agent.localdb import StateDocument, StateTable
from protocol import topics
from protocol.clock import Clock
from protocol.messages import Command, KeyRotationBody, MembershipBody, MessageError, decode_json
from protocol.signing import SignatureError, Verifier, key_text

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW = timedelta(minutes=5)

RejectCode = Literal[
    "unsigned",  # no signature at all
    "bad-signature",  # signed, but not by the controller key this cluster trusts
    "invalid",  # not JSON, or not a valid command
    "expired",  # expires_at is not after now
    "future",  # issued more than MAX_CLOCK_SKEW after now
    "misaddressed",  # not for this cluster, or arrived on a topic not its own
    "replayed",  # this command id was already admitted
    "ignored",  # a membership already applied or superseded (see Ignored)
]


class Rejected(Exception):
    """A command refused by the guard; `reason` is written for a technician."""

    def __init__(
        self, reason: str, command_id: str | None = None, code: RejectCode = "invalid"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id
        self.code: RejectCode = code


class Ignored(Rejected):
    """Not admitted, but not an attack either: nothing to report, nothing to do."""

    def __init__(self, reason: str, command_id: str | None = None) -> None:
        super().__init__(reason, command_id, "ignored")


class Duplicate(Ignored):
    """A play, live or ack command admitted before, delivered again: not obeyed twice, not a
    refusal either. `command` is the command, verified and addressed to this cluster."""

    def __init__(self, command: Command) -> None:
        super().__init__(f"{command.body.kind} command already received once", command.id)
        self.command = command


class Expired(Rejected):
    """A command signed by the controller and addressed to this cluster that came after its
    `expires_at` (held up by a broker that was down, or by this cluster's link): not
    obeyed. `command` is the command, verified; a play is reported as `expired`."""

    def __init__(self, reason: str, command: Command) -> None:
        super().__init__(reason, command.id, "expired")
        self.command = command


@dataclass(frozen=True)
class Membership:
    """The groups this cluster belongs to, and the membership command that said so."""

    groups: tuple[str, ...]
    command_id: str | None = None
    issued_at: datetime | None = None
    commune: str | None = None
    version: int = 0  # MembershipBody.version (0: none, or the groups of the config)
    signed: str | None = None  # the signed command, as received (for `loa-agent check`)

    def older_than(self, command: Command) -> bool | None:
        """Whether this membership is older than a membership command (None: the same)."""
        body = command.body
        version = body.version or 0 if isinstance(body, MembershipBody) else 0
        if command.id == self.command_id:
            return None
        if self.issued_at is None:
            return True
        return (self.version, self.issued_at) <= (version, command.issued_at)


class MembershipState:
    """The current membership, kept on disk so a restart knows its groups before connecting.

    Without a document (unit tests) it lives in memory only.
    """

    def __init__(
        self, document: StateDocument | None, initial_groups: Iterable[str] = ()
    ) -> None:
        self._file = document
        self._current = Membership(groups=tuple(dict.fromkeys(initial_groups)))
        saved = self._file.load() if self._file else None
        if isinstance(saved, dict):
            try:
                issued = saved.get("issued_at")
                signed = saved.get("signed")
                self._current = Membership(
                    groups=tuple(str(g) for g in saved["groups"]),
                    command_id=saved.get("command_id"),
                    issued_at=datetime.fromisoformat(issued) if issued else None,
                    commune=saved.get("commune"),
                    version=int(saved.get("version") or 0),
                    signed=signed if isinstance(signed, str) else None,
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.error(
                    "%s is damaged (%s); using the groups from the config until the "
                    "controller's membership arrives",
                    document, exc,
                )

    def current(self) -> Membership:
        return self._current

    def apply(self, command: Command, signed: bytes | None = None) -> Membership:
        """Make an admitted membership command the current membership, on disk first.
        signed: the payload as received (kept, so that it can be verified again)."""
        body = command.body
        if not isinstance(body, MembershipBody):
            raise TypeError(f"command {command.id} is a {body.kind} command, not a membership")
        new = Membership(
            groups=tuple(dict.fromkeys(body.groups)),
            command_id=command.id,
            issued_at=command.issued_at,
            commune=body.commune,
            version=body.version or 0,
            signed=signed.decode("utf-8", "replace") if signed is not None else None,
        )
        if self._file:
            self._file.save(
                {
                    "groups": list(new.groups),
                    "command_id": new.command_id,
                    "issued_at": command.issued_at.isoformat(),
                    "commune": new.commune,
                    "version": new.version,
                    "signed": new.signed,
                }
            )
        self._current = new
        return new


class SeenStore:
    """Ids of admitted commands, each remembered until its command expires.

    With a table the ids survive restarts (a replay after a reboot is still a replay), a
    row each: remembering one writes one row (and deletes those expired), whatever the
    number remembered. Ids an earlier version kept as one document are moved to rows
    when the store opens. Without a table they live in memory only (unit tests).
    """

    def __init__(self, table: StateTable | None = None) -> None:
        self._file = table
        self._seen: dict[str, datetime] = {}
        self._saved: set[str] = set()  # the ids with a row
        if table is None:
            self._earliest: datetime | None = None
            return
        rows = table.load()
        legacy = None if rows else table.legacy_document()
        if isinstance(legacy, dict) and isinstance(legacy.get("seen"), dict):
            rows = [(str(cid), json.dumps(exp)) for cid, exp in legacy["seen"].items()]
        damaged: list[str] = []
        for command_id, body in rows:
            try:
                expires = datetime.fromisoformat(json.loads(body))
            except (TypeError, ValueError):
                log.warning("%s: skipped a damaged entry for command %s", table, command_id)
                damaged.append(command_id)
                continue
            self._seen[command_id] = expires
            self._saved.add(command_id)
        if legacy is not None:
            table.replace_legacy({cid: _expiry_text(exp) for cid, exp in self._seen.items()})
        elif damaged:
            table.save({}, damaged)
        self._earliest = min(self._seen.values(), default=None)  # the next to forget

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, command_id: str) -> bool:
        return command_id in self._seen

    def remember(
        self, command_id: str, expires_at: datetime, now: datetime, *, persist: bool = True
    ) -> None:
        """Remember command_id (forgetting what has expired by now); if persist, also on
        disk (ids remembered without persist live in memory only, and are not saved)."""
        expired: list[str] = []
        if self._earliest is not None and self._earliest <= now:
            expired = [cid for cid, exp in self._seen.items() if exp <= now]
            for cid in expired:
                del self._seen[cid]
            self._earliest = min(self._seen.values(), default=None)
        self._seen[command_id] = expires_at
        if self._earliest is None or expires_at < self._earliest:
            self._earliest = expires_at
        gone = [cid for cid in expired if cid in self._saved]
        self._saved.difference_update(gone)
        if self._file is None or not (persist or gone):
            return
        changed = {}
        if persist:
            changed[command_id] = _expiry_text(expires_at)
            self._saved.add(command_id)
        self._file.save(changed, gone)


def _expiry_text(expires_at: datetime) -> str:
    return json.dumps(expires_at.isoformat())


def _claimed_id(payload: bytes) -> str | None:
    """The id a refused payload claims to have, if it looks like one (for the event's ref)."""
    try:
        obj = decode_json(payload)
    except MessageError:
        return None
    value = obj.get("id")
    if isinstance(value, str) and 8 <= len(value) <= 64 and value.isprintable():
        return value
    return None


def _short(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


class Guard:
    """Decides whether a payload that arrived on a command topic is obeyed."""

    def __init__(
        self,
        verifier: Verifier,
        cluster_id: str,
        membership: Callable[[], Membership],
        clock: Clock,
        seen_store: SeenStore,
        *,
        max_skew: timedelta = MAX_CLOCK_SKEW,
        rotation_applied: Callable[[bytes], str | None] | None = None,
    ) -> None:
        """rotation_applied: why a payload on the key topic is a rotation applied already
        (ControllerKeys.already_applied), else None."""
        self._verifier = verifier
        self._cluster_id = topics.check_id(cluster_id, "cluster id")
        self._key_topic = topics.cluster_topic(cluster_id, "key")
        self._rotation_applied = rotation_applied
        self._membership = membership
        self._clock = clock
        self._seen = seen_store
        self._max_skew = max_skew

    def admit(self, topic: str, payload: bytes) -> Command:
        """The command, if it is to be obeyed; else raise Rejected (or Ignored) saying why."""
        if topic == self._key_topic and self._rotation_applied is not None:
            why = self._rotation_applied(payload)
            if why is not None:
                raise Ignored(why, _claimed_id(payload))
        try:
            command, signer = self._verifier.verify_signed(payload)
        except SignatureError as exc:
            code: RejectCode = "unsigned" if "unsigned" in str(exc) else "bad-signature"
            raise Rejected(str(exc), _claimed_id(payload), code) from None
        except MessageError as exc:
            raise Rejected(str(exc), _claimed_id(payload), "invalid") from None

        body = command.body
        if isinstance(body, KeyRotationBody) and key_text(signer) != body.old_key:
            raise Rejected(
                "a key rotation must be signed by the key it retires", command.id,
                "bad-signature",
            )
        current = self._membership()
        is_membership = isinstance(command.body, MembershipBody)
        if is_membership:
            newer = current.older_than(command)
            if newer is None:
                raise Ignored("membership unchanged (retained copy of the current one)", command.id)
            if not newer:
                assert current.issued_at is not None
                raise Ignored(
                    f"membership version {getattr(command.body, 'version', None) or 0} issued "
                    f"{_short(command.issued_at)} is older than the current one (version "
                    f"{current.version}, issued {_short(current.issued_at)})",
                    command.id,
                )

        now = self._clock.now()
        if command.expires_at <= now:
            # Addressed elsewhere is the graver fault; else it is this cluster's, too late.
            self._check_address(topic, command, current, is_membership)
            raise Expired(
                f"expired at {_short(command.expires_at)} (this cluster's clock says "
                f"{_short(now)})",
                command,
            )
        if command.issued_at > now + self._max_skew:
            raise Rejected(
                f"issued at {_short(command.issued_at)}, more than "
                f"{int(self._max_skew.total_seconds() // 60)} min ahead of this cluster's clock "
                f"({_short(now)}): check the time on the controller and on this cluster (NTP)",
                command.id,
                "future",
            )

        self._check_address(topic, command, current, is_membership)
        if is_membership:  # ordered by version and time: a replay is older, not new
            return command

        if self._seen.seen(command.id):
            if command.body.kind in ("play", "ack", "live"):
                raise Duplicate(command)
            raise Rejected(
                "replayed: this command was already received once", command.id, "replayed"
            )
        # A replayed ack can only repeat what the controller already said (those events
        # are gone from the outbox), so acks, the most frequent command, are remembered in
        # memory only: no disk write per ack on an SD card.
        self._seen.remember(
            command.id, command.expires_at, now, persist=command.body.kind != "ack"
        )
        return command

    def _check_address(
        self, topic: str, command: Command, current: Membership, is_membership: bool
    ) -> None:
        me = self._cluster_id
        groups = set(current.groups)
        where = topics.parse(topic)
        for_me = me in command.to.clusters
        for_my_group = bool(groups.intersection(command.to.groups))
        if where is None or where.channel not in ("command", "membership", "key"):
            raise Rejected(f"a command cannot arrive on {topic}", command.id, "misaddressed")
        own_topic = where.scope == "cluster" and where.name == me
        if isinstance(command.body, KeyRotationBody) or where.channel == "key":
            if not (own_topic and for_me and where.channel == "key"
                    and isinstance(command.body, KeyRotationBody)):
                raise Rejected(
                    f"a {command.body.kind} command on {topic}: key rotations come on this "
                    "cluster's own key topic, and only they do",
                    command.id,
                    "misaddressed",
                )
            return
        if is_membership:
            assert isinstance(command.body, MembershipBody)
            if not (own_topic and for_me and command.body.cluster == me):
                raise Rejected(
                    f"addressed to another cluster: membership of {command.body.cluster!r} on "
                    f"{topic}",
                    command.id,
                    "misaddressed",
                )
            return
        if where.channel == "membership":
            raise Rejected(
                f"a {command.body.kind} command on the membership topic {topic}",
                command.id,
                "misaddressed",
            )
        group_topic = where.scope == "group" and where.name in groups
        if not (for_me or for_my_group) or not (own_topic or group_topic):
            targets = ", ".join(
                [f"cluster {c}" for c in command.to.clusters]
                + [f"group {g}" for g in command.to.groups]
            )
            raise Rejected(
                f"addressed to another cluster (to: {targets or 'nobody'}; came on {topic}; "
                f"this is {me} in groups {', '.join(sorted(groups)) or '(none)'})",
                command.id,
                "misaddressed",
            )


class RejectionLimiter:
    """At most `per_minute` rejection reports a minute; counts the ones held back.

    A flood of forged commands must not fill the outbox (or the SD card with log lines):
    past the limit, rejections are only counted, and the count is reported once the
    minute is over.
    """

    WINDOW = timedelta(minutes=1)

    def __init__(self, clock: Clock, per_minute: int = 10) -> None:
        self._clock = clock
        self._per_minute = per_minute
        self._window_start: datetime | None = None
        self._reported = 0
        self._suppressed = 0  # held back in the current window
        self._unreported = 0  # held back in windows that are over, not yet summarised

    def _roll(self, now: datetime) -> None:
        if self._window_start is None or now - self._window_start >= self.WINDOW:
            self._unreported += self._suppressed
            self._suppressed = 0
            self._reported = 0
            self._window_start = now

    def allow(self) -> bool:
        """True if this rejection may be logged and reported; False if only counted."""
        self._roll(self._clock.now())
        if self._reported < self._per_minute:
            self._reported += 1
            return True
        self._suppressed += 1
        return False

    def summary_due_at(self) -> datetime | None:
        """When the held-back count should be reported, if any were held back."""
        if self._unreported:
            return self._clock.now()
        if self._suppressed and self._window_start is not None:
            return self._window_start + self.WINDOW
        return None

    def take_summary(self) -> int:
        """How many were held back in windows that are over (0 if none); counts them once."""
        self._roll(self._clock.now())
        count, self._unreported = self._unreported, 0
        return count
