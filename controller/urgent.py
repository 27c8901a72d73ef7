"""Urgent announcements (thông báo khẩn): the one service behind the page, the API and the CLI.

Everything a user may do with an urgent announcement goes through `UrgentService`, so
the rules hold whichever door was used:

- **Scope.** A user reaches only the clusters under the fleet nodes of its scope
  (controller.users). Targets are resolved against the fleet as it is now; a target
  with any cluster outside the scope refuses the whole announcement
  (`TargetForbiddenError`, shown as HTTP 403) and nothing is sent.
- **Audio.** An uploaded or recorded file, or text spoken by the offline text-to-speech
  engine (controller.tts) with the voice of the targeted clusters (their own when they
  share one, else their lowest common ancestor's: controller.fleet.Fleet.voice_for).
  Repeats are joined into one recording with the chosen gap of silence, then prepared
  as Opus (controller.audio) like any bulletin: once for each audio profile among the
  targeted clusters (horns outdoors, full-range indoors). `preview()` makes the same
  audio for listening first, and keeps and sends nothing.
- **Send.** One play at `priority` or `emergency` level, starting now; a higher level
  preempts what the agents are playing (a normal bulletin is reported `interrupted`).
  Clusters of different audio profiles get a play each (controller.distribution.
  per_profile), under the announcement's id with `+<profile>`; progress, stop and the
  listen buttons cover them all.
- **Progress.** Per targeted cluster, from the status events the intake stores:
  sent → received → delivered → playing → finished, or interrupted / missed / failed with
  the agent's reason; a cluster known to be offline shows as offline (it still gets the
  announcement if it comes back before the announcement's latest start). A cluster that
  never confirmed it by its latest start shows as missed, "not received: no confirmation
  from the cluster by ..." (controller/confirmations.py); until then, how many times it
  was sent.
- **Stop.** A signed stop to the announcement's clusters.
- **Audit.** Every send and stop is written to the audit log (controller.audit).
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from sqlalchemy import insert, select, update

from controller import ffmpeg
from controller.audio import AudioLibrary, PreparedAudio
from controller.audio_chain import DEFAULT_PROFILE
from controller.audit import AuditEntry, AuditLog
from controller.confirmations import MISSED, PENDING, ConfirmationRecords
from controller.distribution import (
    PROFILE_MARK,
    PlaySpec,
    new_play_id,
    per_profile,
    play_ids,
    sent_as,
)
from controller.fleet import Fleet
from controller.store import FINAL_KINDS, Store, aware
from controller.store.schema import urgent_announcements as announcements
from controller.tts import TextToSpeech
from protocol.clock import Clock
from protocol.l10n import Text
from protocol.messages import Level

log = logging.getLogger(__name__)

URGENT_LEVELS: tuple[Level, ...] = ("priority", "emergency")
#: How long after it is sent an announcement may still start, by default (the config's
#: `urgent_expiry`): its command expires then, and a cluster that gets it later (it was
#: offline, or the broker was down) reports it `expired` and plays nothing.
DEFAULT_URGENT_EXPIRY = timedelta(minutes=3)
MAX_REPEAT = 10
MAX_GAP_S = 60.0
MAX_TITLE = 200

Source = Literal["web", "api", "cli", "cap"]
ClusterStatus = Literal[
    "sent", "offline", "received", "delivered", "playing", "finished", "interrupted",
    "missed", "failed", "expired",
]
FINAL: frozenset[str] = frozenset(FINAL_KINDS)
_ORDER = {"sent": 0, "offline": 0, "received": 1, "delivered": 2, "playing": 3}


# --- who is asking ----------------------------------------------------------------------


class Principal(Protocol):
    """A user (controller.users.User) or a system sender (CAP intake)."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def scope(self) -> list[str]: ...


@dataclass(frozen=True)
class SystemPrincipal:
    name: str
    role: str
    scope: list[str]


class UrgentError(ValueError):
    """What the user asked for cannot be done; the message says why and what to do."""

    status = 400


class TargetForbiddenError(UrgentError):
    """A target reaches clusters outside the user's scope."""

    status = 403

    def __init__(self, user: str, outside: list[str], scope_names: list[str]) -> None:
        self.user = user
        self.outside = outside
        self.scope_names = scope_names
        super().__init__(Text(
            "{targets} is outside what {user} may reach ({scope}); nothing was sent",
            targets=", ".join(outside), user=user, scope=", ".join(scope_names),
        ))


class NotFoundError(UrgentError):
    status = 404


class NotSentError(UrgentError):
    """The controller cannot reach its broker: nothing was sent, and it says so at once
    (an announcement queued for a broker that is down would play whenever the broker is
    back, or expire unheard)."""

    status = 503


# --- what is asked and what is shown -----------------------------------------------------


@dataclass(frozen=True)
class AnnouncementRequest:
    targets: list[str]
    level: Level = "emergency"
    text: str | None = None
    audio: Path | None = None
    repeat: int = 1
    gap_s: float = 3.0
    title: str | None = None
    ref: str | None = None
    # No cluster starts it after this (a CAP alert's <expires>), nor after URGENT_LATENESS.
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ClusterProgress:
    cluster: str
    name: str
    commune: str
    status: ClusterStatus
    reason: str | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class Announcement:
    id: str
    created_at: datetime
    created_by: str
    source: str
    title: str
    text: str | None
    level: str
    audio_sha256: str
    duration_s: float
    repeat: int
    gap_s: float
    targets: list[str]
    clusters: list[str]
    latest_start: datetime
    stopped_at: datetime | None
    stopped_by: str | None
    ref: str | None
    progress: list[ClusterProgress] = field(default_factory=list)
    #: What the clusters were sent: (audio profile, SHA-256 of the prepared audio), one
    #: per profile among them.
    audio: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.progress:
            out[p.status] = out.get(p.status, 0) + 1
        return out

    @property
    def done(self) -> bool:
        """Every cluster has a final state, or is offline."""
        return all(p.status in FINAL or p.status == "offline" for p in self.progress)

    @property
    def all_played(self) -> bool:
        """Every cluster that was reachable played it to the end."""
        reachable = [p for p in self.progress if p.status != "offline"]
        return bool(reachable) and all(p.status == "finished" for p in reachable)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "source": self.source,
            "title": self.title,
            "text": self.text,
            "level": self.level,
            "audio_sha256": self.audio_sha256,
            "audio": [{"profile": profile, "sha256": sha256} for profile, sha256 in self.audio],
            "duration_s": round(self.duration_s, 2),
            "repeat": self.repeat,
            "gap_s": self.gap_s,
            "targets": self.targets,
            "latest_start": self.latest_start.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "stopped_by": self.stopped_by,
            "ref": self.ref,
            "done": self.done,
            "all_played": self.all_played,
            "counts": self.counts(),
            "clusters": [
                {
                    "cluster": p.cluster, "name": p.name, "commune": p.commune,
                    "status": p.status, "reason": p.reason,
                    "at": p.at.isoformat() if p.at else None,
                }
                for p in self.progress
            ],
        }


@dataclass(frozen=True)
class TreeEntry:
    """One line of the target picker: a node or a cluster, with its depth."""

    id: str
    name: str
    kind: str  # province, district, commune, village, cluster
    depth: int
    clusters: int


# --- the service ------------------------------------------------------------------------


class Sender(Protocol):
    def send_play(self, spec: PlaySpec) -> Any: ...
    def send_stop(self, play_id: str | None, cluster_ids: Sequence[str]) -> None: ...


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return aware(value)


class UrgentService:
    def __init__(
        self,
        *,
        fleet: Callable[[], Fleet],
        store: Store,
        library: AudioLibrary,
        sender: Sender,
        clock: Clock,
        tts: TextToSpeech,
        audit: AuditLog,
        work_dir: Path,
        expiry: timedelta = DEFAULT_URGENT_EXPIRY,
        unreachable: Callable[[], str | None] = lambda: None,
    ) -> None:
        """expiry: how long after it is sent an announcement may still start (config
        `urgent_expiry`). unreachable(): why the broker cannot be reached now (None: it
        can), from controller.broker_state.BrokerState."""
        self.expiry = expiry
        self._unreachable = unreachable
        self._fleet = fleet
        self._store = store
        self._library = library
        self._sender = sender
        self._clock = clock
        self.tts = tts
        self.audit = audit
        self._work = work_dir
        self._lock = threading.Lock()
        work_dir.mkdir(parents=True, exist_ok=True)
        self._confirmations = ConfirmationRecords(store.engine)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def work_dir(self) -> Path:
        """Where announcements are spoken and joined while they are prepared."""
        return self._work

    def fleet(self) -> Fleet:
        """The fleet as it is now (it changes on reload)."""
        return self._fleet()

    def now(self) -> datetime:
        return self._clock.now()

    # --- scope --------------------------------------------------------------------------

    def reach(self, who: Principal) -> frozenset[str]:
        """The clusters this user may target."""
        fleet = self._fleet()
        found: set[str] = set()
        for node in who.scope:
            if node in fleet.nodes or node in fleet.clusters:
                found.update(fleet.clusters_in(node))
        return frozenset(found)

    def scope_names(self, who: Principal) -> list[str]:
        fleet = self._fleet()
        names = []
        for node in who.scope:
            if node in fleet.nodes:
                names.append(fleet.nodes[node].name)
            elif node in fleet.clusters:
                names.append(fleet.clusters[node].name)
            else:
                names.append(node)
        return names

    def tree(self, who: Principal) -> list[TreeEntry]:
        """The part of the fleet tree this user may target, in reading order."""
        fleet = self._fleet()
        out: list[TreeEntry] = []

        def walk(node_id: str, depth: int) -> None:
            node = fleet.nodes[node_id]
            out.append(
                TreeEntry(node.id, node.name, node.kind, depth, len(fleet.clusters_in(node_id)))
            )
            for cid in sorted(c.id for c in fleet.clusters.values() if c.node == node_id):
                out.append(TreeEntry(cid, fleet.clusters[cid].name, "cluster", depth + 1, 1))
            for child in fleet.children(node_id):
                walk(child, depth + 1)

        for node_id in who.scope:
            if node_id in fleet.nodes:
                walk(node_id, 0)
            elif node_id in fleet.clusters:
                out.append(TreeEntry(node_id, fleet.clusters[node_id].name, "cluster", 0, 1))
        return out

    def authorize(self, who: Principal, targets: Iterable[str]) -> list[str]:
        """The clusters the targets name; TargetForbiddenError if any is outside the scope.

        An unknown target raises controller.fleet.UnknownTargetError (a KeyError).
        """
        targets = [t.strip() for t in targets if t.strip()]
        if not targets:
            raise UrgentError(
                Text("choose at least one target: the commune, villages or clusters")
            )
        fleet = self._fleet()
        allowed = self.reach(who)
        clusters: set[str] = set()
        outside: list[str] = []
        for target in targets:
            found = set(fleet.resolve([target]))
            if not found <= allowed:
                outside.append(target)
            clusters |= found
        if outside:
            raise TargetForbiddenError(who.name, outside, self.scope_names(who))
        if not clusters:
            raise UrgentError(Text("the targets {targets} contain no speaker cluster",
                                   targets=", ".join(targets)))
        return sorted(clusters)

    def may_see(self, who: Principal, clusters: Iterable[str]) -> bool:
        """Whether every one of these clusters is within the user's reach."""
        return set(clusters) <= self.reach(who)

    # --- sending ------------------------------------------------------------------------

    def _check(self, req: AnnouncementRequest) -> None:
        if req.level not in URGENT_LEVELS:
            raise UrgentError(Text(
                "level {level!r}: an urgent announcement is 'priority' or 'emergency'",
                level=req.level,
            ))
        if not 1 <= req.repeat <= MAX_REPEAT:
            raise UrgentError(Text("repeat {repeat}: write 1 to {most}", repeat=req.repeat,
                                   most=MAX_REPEAT))
        if not 0 <= req.gap_s <= MAX_GAP_S:
            raise UrgentError(Text("gap {gap:g} s: write 0 to {most:g} seconds", gap=req.gap_s,
                                   most=MAX_GAP_S))
        has_text = bool(req.text and req.text.strip())
        if has_text == (req.audio is not None):
            raise UrgentError(
                Text("give either a text to speak or an audio file, not both or neither")
            )
        if req.title is not None and len(req.title) > MAX_TITLE:
            raise UrgentError(Text("the title has more than {most} characters", most=MAX_TITLE))

    def voice_for(self, clusters: Sequence[str]) -> str | None:
        """The voice that speaks a text to these clusters (controller.fleet.Fleet.voice_for:
        theirs when they share one, else their lowest common ancestor's)."""
        return self._fleet().voice_for(clusters)

    def prepare(
        self, req: AnnouncementRequest, scratch: Path, profiles: Iterable[str], *,
        voice: str | None = None, library: AudioLibrary | None = None,
    ) -> dict[str, PreparedAudio]:
        """The announcement's audio, repeated with its gaps, prepared as Opus for each of
        these audio profiles.

        voice: the voice a text is spoken with; library: where the Opus is kept (the
        library the clusters are sent from, unless a preview gives another).
        """
        if req.audio is not None:
            source = req.audio
        else:
            assert req.text is not None
            source = self.tts.speak(req.text, scratch / "speech.wav", voice=voice)
        if req.repeat > 1:
            source = self._repeated(source, req.repeat, req.gap_s, scratch / "repeated.wav")
        library = library or self._library
        return {profile: library.prepare([source], profile=profile) for profile in profiles}

    def preview(self, who: Principal, req: AnnouncementRequest) -> bytes:
        """The Opus of a text as the clusters would get it, once, sent nowhere ("Nghe thử").

        The same checks as sending: the targets (if any are chosen yet) must be within
        the user's reach, and choose the voice and the audio profile (the one most of
        them have); without targets, the user's own area's. Nothing is recorded, audited
        or kept.
        """
        if not (req.text and req.text.strip()):
            raise UrgentError(Text("write the text to listen to first"))
        targets = [t for t in req.targets if t.strip()]
        clusters = self.authorize(who, targets) if targets else sorted(self.reach(who))
        by_profile = self._fleet().by_profile(clusters)
        profile = max(by_profile, key=lambda p: len(by_profile[p]), default=DEFAULT_PROFILE)
        once = AnnouncementRequest(targets=targets, level=req.level, text=req.text)
        with tempfile.TemporaryDirectory(dir=self._work, prefix="preview-") as tmp:
            scratch = Path(tmp)
            store = AudioLibrary(scratch / "content", self._library.settings)
            prepared = self.prepare(
                once, scratch, [profile], voice=self.voice_for(clusters), library=store
            )[profile]
            return store.read(prepared.sha256)

    @property
    def library(self) -> AudioLibrary:
        """The prepared audio the clusters are sent from."""
        return self._library

    def _repeated(self, source: Path, times: int, gap_s: float, out: Path) -> Path:
        rate = self._library.settings.sample_rate
        try:
            decoded = ffmpeg.decode_pcm(source, sample_rate=rate)
        except ffmpeg.FfmpegError as exc:
            log.warning("an announcement's audio cannot be decoded: %s", exc)
            raise UrgentError(Text(
                "the audio cannot be decoded: check that it is a complete sound recording"
            )) from None
        once = ffmpeg.segment_from_pcm(decoded.pcm, rate)
        gap = ffmpeg.pydub_audio_segment().silent(duration=round(gap_s * 1000), frame_rate=rate)
        whole = once
        for _ in range(times - 1):
            whole = whole + gap + once
        with out.open("wb") as f:
            whole.export(f, format="wav")
        return out

    def checked(self, who: Principal, req: AnnouncementRequest) -> list[str]:
        """The clusters an announcement would go to, after the checks sending makes
        before the audio is prepared, and an audio file decoded and checked as preparing
        it would (the send page's confirmation): UrgentError, or AudioError for the
        file, if any fails."""
        self._check(req)
        clusters = self.authorize(who, req.targets)
        if req.audio is not None:
            self._library.probe(req.audio)
        return clusters

    def send(
        self, who: Principal, req: AnnouncementRequest, *, source: Source = "web"
    ) -> Announcement:
        """Check, prepare and send an announcement now; record it and audit it.

        NotSentError (nothing recorded, nothing sent) while the broker cannot be reached,
        asked before the audio is prepared and again before it is sent."""
        self._check(req)
        clusters = self.authorize(who, req.targets)
        self._reachable()
        voice = self.voice_for(clusters) if req.text else None
        by_profile = self._fleet().by_profile(clusters)
        with tempfile.TemporaryDirectory(dir=self._work, prefix="announcement-") as tmp:
            each = self.prepare(req, Path(tmp), by_profile, voice=voice)
        self._reachable()
        prepared = next(iter(each.values()))  # the one recorded; audio() gives them all
        now = self._clock.now()
        title = (req.title or "").strip() or _title_from(req)
        play_id = new_play_id("urgent")
        spec = PlaySpec(
            play_id=play_id, bulletin=title, level=req.level, start_at=now,
            latest_start=min(now + self.expiry, req.expires_at or now + self.expiry),
            items=[], clusters=clusters,
            urgent=True,
        )
        with self._lock, self._store.engine.begin() as conn:
            conn.execute(
                insert(announcements).values(
                    id=play_id, created_at=now.astimezone(UTC), created_by=who.name,
                    source=source, title=title, text=(req.text or None), level=req.level,
                    audio_sha256=prepared.sha256, duration_s=prepared.duration_s,
                    repeat=req.repeat, gap_s=req.gap_s, targets=json.dumps(req.targets),
                    clusters=json.dumps(clusters), latest_start=spec.latest_start.astimezone(UTC),
                    ref=req.ref,
                )
            )
        for part in per_profile(spec, by_profile, {p: [a] for p, a in each.items()}):
            self._sender.send_play(part)
        self.audit.record(
            at=now, user=who.name, action="send", subject=play_id, level=req.level,
            title=title, text=req.text, audio_sha256=prepared.sha256, targets=req.targets,
            clusters=clusters, detail=f"source={source} repeat={req.repeat} gap_s={req.gap_s:g}"
            + (f" ref={req.ref}" if req.ref else "") + (f" voice={voice}" if voice else ""),
        )
        return self.get(who, play_id)

    def _reachable(self) -> None:
        why = self._unreachable()
        if why is not None:
            raise NotSentError(
                f"not sent: {why}. Nothing was recorded; send it again once the broker is "
                "back (the page's banner goes away)"
            )

    def stop(self, who: Principal, announcement_id: str) -> Announcement:
        found = self.get(who, announcement_id)
        now = self._clock.now()
        for play_id, clusters in self._plays(found.id) or [(found.id, found.clusters)]:
            self._sender.send_stop(play_id, clusters)
        with self._lock, self._store.engine.begin() as conn:
            conn.execute(
                update(announcements)
                .where(announcements.c.id == found.id, announcements.c.stopped_at.is_(None))
                .values(stopped_at=now.astimezone(UTC), stopped_by=who.name)
            )
        self.audit.record(
            at=now, user=who.name, action="stop", subject=found.id, level=found.level,
            title=found.title, audio_sha256=found.audio_sha256, targets=found.targets,
            clusters=found.clusters,
        )
        return self.get(who, found.id)

    # --- reading ------------------------------------------------------------------------

    def get(self, who: Principal, announcement_id: str) -> Announcement:
        """The announcement with its per-cluster progress, if the user may see it."""
        with self._store.engine.connect() as conn:
            row = conn.execute(
                select(announcements).where(announcements.c.id == announcement_id)
            ).mappings().first()
        if row is None:
            raise NotFoundError(Text("no announcement {id!r}", id=announcement_id))
        found = _announcement(row)
        if found.created_by != who.name and not self.may_see(who, found.clusters):
            # Not a 403: whether it exists is none of this user's business.
            raise NotFoundError(Text("no announcement {id!r}", id=announcement_id))
        return _with_progress(
            found, self.progress(found.id, found.clusters), self.audio(found.id)
        )

    def audio_file(self, who: Principal, announcement_id: str, sha256: str) -> Path:
        """The prepared audio an announcement this user may see was sent as: the very file
        the clusters were sent, for the listen buttons. NotFoundError otherwise."""
        found = self.get(who, announcement_id)
        if sha256 not in {digest for _, digest in found.audio}:
            raise NotFoundError(f"announcement {announcement_id!r} has no audio {sha256!r}")
        prepared = self._library.get(sha256)
        if prepared is None:
            raise NotFoundError(
                f"the audio of announcement {announcement_id!r} is no longer in the audio "
                "library"
            )
        return prepared.path

    def _plays(self, announcement_id: str) -> list[tuple[str, list[str]]]:
        """The plays an announcement went out as, with their clusters: its own id, or one
        per audio profile among its clusters."""
        return sent_as(announcement_id, self._store.plays.clusters_of)

    def clusters_of(self, play_id: str) -> list[str]:
        return sorted({c for _, clusters in self._plays(play_id) for c in clusters})

    def audio(self, announcement_id: str) -> list[tuple[str, str]]:
        """(audio profile, SHA-256) of what each profile's clusters were sent."""
        wanted = {pid: pid.partition(PROFILE_MARK)[2] for pid, _ in self._plays(announcement_id)}
        if not wanted:
            return []
        fleet = self._fleet()
        out: list[tuple[str, str]] = []
        for play_id in sorted(wanted):
            profile = wanted[play_id] or self._profile_of(fleet, announcement_id)
            out.extend((profile, sha256) for sha256 in self._store.plays.items_of(play_id))
        return out

    def _profile_of(self, fleet: Fleet, play_id: str) -> str:
        """The audio profile a play not split by profile went out for (its clusters')."""
        profiles = fleet.by_profile(
            c for c in self._store.plays.clusters_of(play_id) if c in fleet.clusters
        )
        return next(iter(profiles), "?")

    def audit_entries(self, who: Principal, limit: int = 500) -> list[AuditEntry]:
        """The audit log as this user may read it: its own actions and its subtree's."""
        reach = self.reach(who)
        return self.audit.entries(
            limit=limit,
            visible=lambda e: e.user == who.name or (bool(e.clusters) and set(e.clusters) <= reach),
        )

    def find_by_ref(self, ref: str) -> list[str]:
        with self._store.engine.connect() as conn:
            return [
                r[0] for r in conn.execute(
                    select(announcements.c.id).where(announcements.c.ref == ref)
                )
            ]

    def recent(self, who: Principal, limit: int = 50) -> list[Announcement]:
        with self._store.engine.connect() as conn:
            rows = conn.execute(
                select(announcements).order_by(announcements.c.created_at.desc()).limit(500)
            ).mappings().all()
        out = []
        for row in rows:
            found = _announcement(row)
            if found.created_by == who.name or self.may_see(who, found.clusters):
                out.append(_with_progress(found, self.progress(found.id, found.clusters)))
            if len(out) >= limit:
                break
        return out

    def progress(self, play_id: str, clusters: Sequence[str]) -> list[ClusterProgress]:
        """Where the play stands on each cluster, from the stored events."""
        fleet = self._fleet()
        latest: dict[str, tuple[str, str | None, datetime | None]] = {}
        rows = sorted(
            (
                row for each in play_ids(play_id)
                for row in self._store.events.of_play(each)
            ),
            key=lambda r: (_aware(r["at"]), r["seq"]),
        )
        for r in rows:
            cluster, kind = r["cluster"], r["kind"]
            prev = latest.get(cluster)
            if prev is not None:
                if prev[0] in FINAL:
                    continue
                if prev[0] in _ORDER and kind in _ORDER and _ORDER[kind] < _ORDER[prev[0]]:
                    continue
            latest[cluster] = (kind, r["reason"], _aware(r["at"]))
        states = {row.id: row for row in self._store.clusters.fleet_rows()}
        confirmations: dict[str, tuple[str, int, str | None, datetime | None]] = {}
        for each in play_ids(play_id):  # one play per audio profile (per_profile)
            confirmations.update(self._confirmations.of_play(each))
        out = []
        for cid in clusters:
            known = fleet.clusters.get(cid)
            name = known.name if known else cid
            commune = fleet.nodes[known.commune].name if known else "?"
            if cid in latest:
                kind, reason, at = latest[cid]
                out.append(ClusterProgress(cid, name, commune, kind, reason, at))  # type: ignore[arg-type]
                continue
            state, sends, missed_reason, missed_at = confirmations.get(
                cid, (PENDING, 1, None, None)
            )
            if state == MISSED:  # never confirmed by its latest start: not received
                out.append(ClusterProgress(cid, name, commune, "missed", missed_reason, missed_at))
                continue
            again = f"sent {sends} times, not confirmed yet" if sends > 1 else None
            row = states.get(cid)
            if row is None or row.state != "online":
                since = row.last_seen if row else None
                out.append(ClusterProgress(
                    cid, name, commune, "offline",
                    "not connected" + (f" since {since.isoformat(timespec='seconds')}"
                                       if since else " (never seen)")
                    + (f"; {again}" if again else ""),
                    since,
                ))
            else:
                out.append(ClusterProgress(cid, name, commune, "sent", again))
        return out


def _title_from(req: AnnouncementRequest) -> str:
    if req.text:
        words = " ".join(req.text.split())
        return words if len(words) <= 60 else words[:57].rstrip() + "..."
    return req.audio.name if req.audio else "announcement"


def _announcement(row: Any) -> Announcement:
    created = _aware(row["created_at"])
    latest = _aware(row["latest_start"])
    assert created is not None
    assert latest is not None
    return Announcement(
        id=row["id"], created_at=created, created_by=row["created_by"], source=row["source"],
        title=row["title"], text=row["text"], level=row["level"],
        audio_sha256=row["audio_sha256"], duration_s=float(row["duration_s"]),
        repeat=int(row["repeat"]), gap_s=float(row["gap_s"]),
        targets=list(json.loads(row["targets"])), clusters=list(json.loads(row["clusters"])),
        latest_start=latest, stopped_at=_aware(row["stopped_at"]),
        stopped_by=row["stopped_by"], ref=row["ref"],
    )


def _with_progress(
    found: Announcement,
    progress: list[ClusterProgress],
    audio: list[tuple[str, str]] | None = None,
) -> Announcement:
    return Announcement(
        **{**found.__dict__, "progress": progress, "audio": audio if audio else found.audio}
    )


def service_for(controller: Any, tts: TextToSpeech, work_dir: Path) -> UrgentService:
    """The service wired to a running controller.main.Controller."""
    return UrgentService(
        fleet=lambda: controller.fleet,
        store=controller.store,
        library=controller.library,
        sender=controller.distributor,
        clock=controller.clock,
        tts=tts,
        audit=AuditLog(controller.store),
        work_dir=work_dir,
        expiry=getattr(controller.settings, "urgent_expiry", DEFAULT_URGENT_EXPIRY),
        unreachable=getattr(getattr(controller, "broker_state", None), "unreachable",
                            lambda: None),
    )
