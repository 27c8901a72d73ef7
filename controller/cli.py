"""`loa-controller`: the controller's command line. The only place that exits the process."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from controller.text_table import format_table
from protocol import l10n, logs
from protocol.config_errors import ConfigError
from protocol.l10n import N_, _
from protocol.validation import suggest

if TYPE_CHECKING:
    from controller.audio import AudioSettings
    from controller.confirmations import NotReceived
    from controller.playlist import Playlists, Programme
    from controller.store import ConfigStatus, Lease, Store

DEFAULT_CONFIG = Path("config/controller.yaml")
DEFAULT_LEAD_TIME = timedelta(minutes=30)
# `fleet` counts the plays not received by their cluster over this window.
NOT_RECEIVED_WINDOW = timedelta(hours=24)


def _setup_logging(args: argparse.Namespace) -> None:
    # The demo runs 73 agents in one process: it tells its own story on stderr and
    # shows only warnings from the parts, unless asked for more; prepare prints its own
    # measurements. Alembic and APScheduler stay at warning unless debugging
    # (protocol/logs.py); `db` prints what was done.
    logs.setup(args, "warning" if args.command in ("demo", "prepare") else "info")


def _local(at: datetime, tz: tzinfo) -> str:
    """A time in the table of `schedule`: "2026-12-06 14:30 Sun", "14:30 CN 06/12/2026"."""
    local = at.astimezone(tz)
    if l10n.current() == "vi":
        return f"{local:%H:%M} {WEEKDAYS_VI[local.weekday()]} {local:%d/%m/%Y}"
    return local.strftime("%Y-%m-%d %H:%M %a")


#: Monday to Sunday as a Vietnamese calendar writes them.
WEEKDAYS_VI = ("T2", "T3", "T4", "T5", "T6", "T7", "CN")

#: The words of `fleet` and `schedule` for the states and levels they show.
WORDS = {
    "online": N_("online"), "offline": N_("offline"), "unknown": N_("never seen"),
    "finished": N_("finished"), "interrupted": N_("interrupted"), "missed": N_("missed"),
    "failed": N_("failed"), "normal": N_("normal"), "priority": N_("priority"),
    "emergency": N_("emergency"),
}


def _word(code: str | None) -> str:
    """A state's, a result's or a level's name in the process's language."""
    return _(WORDS[code]) if code in WORDS else (code or "")


def _reason(text: str | None) -> str:
    """A cluster's reason (English on the wire) in the process's language."""
    from controller.reasons import shown

    return shown(text, l10n.current(), UTC).text


def _existing_store(url: str) -> Store | None:
    """The store at url, or None if it is a SQLite file that does not exist yet."""
    from controller.store import Store

    return None if _missing_sqlite_file(url) is not None else Store(url)


def _config_path(args: argparse.Namespace) -> Path | None:
    return Path(args.config) if getattr(args, "config", None) else None


def _programme(playlists: Playlists, ident: str) -> Programme:
    found = playlists.programmes.get(ident)
    if found is None:
        close = suggest(ident, playlists.programmes)
        hint = _("did you mean {close!r}? ", close=close) if close else ""
        raise ValueError(_(
            "no programme {ident!r} in the playlists; {hint}write a programme id as it "
            "appears after `id:` (loa-controller pending lists those awaiting approval)",
            ident=ident, hint=hint,
        ))
    return found


# --- subcommands -------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    from protocol.signing import generate_keypair

    out = Path(args.out)
    private, public = out / "controller.key", out / "controller.pub"
    try:
        generate_keypair(private, public, overwrite=args.force)
    except FileExistsError as exc:
        print(f"loa-controller keygen: {l10n.say(exc)}", file=sys.stderr)
        return 1
    print(_("wrote {path} (private: keep it on the controller only, mode 0600)", path=private))
    print(_("wrote {path} (public: copy it to every agent as controller_public_key)",
            path=public))
    from controller.keys import rotation_path

    stale = rotation_path(private)
    if args.force and stale.exists():  # a rotation to a key that is gone now
        stale.unlink()
        print(_("removed {stale}: a new key is not a rotation. Clusters installed with the "
                "old controller.pub refuse every command until they get this one (their "
                "bundle again: loa-controller provision); to change keys without that, use "
                "loa-controller keys rotate", stale=stale))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config
    from controller.main import run
    from controller.store import SchemaError

    config = load_controller_config(Path(args.config))
    try:
        run(config)
    except SchemaError as exc:
        print(f"loa-controller run: {l10n.say(exc)}", file=sys.stderr)
        print(_("For this config: loa-controller db upgrade --config {config}\n"
                "Nothing was started.", config=args.config), file=sys.stderr)
        return 1
    return 0


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL that does not exist yet (connecting would create it)."""
    if url.startswith("sqlite:///"):
        file = url.removeprefix("sqlite:///")
        if file and file != ":memory:" and not Path(file).exists():
            return Path(file)
    return None


def cmd_db(args: argparse.Namespace) -> int:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from controller.config import load_controller_config
    from controller.store.migrate import head, state_of, upgrade

    config = load_controller_config(Path(args.config))
    url = config.store_url
    if args.db_command in ("backup", "restore", "prune"):
        return _db_keep(args, config)
    if args.db_command == "current":
        missing = _missing_sqlite_file(url)
        if missing is not None:
            print(_("no database at {missing} yet; this release's schema is revision "
                    "{head}. `loa-controller run` or `loa-controller db upgrade` creates it.",
                    missing=missing, head=head()))
            return 0
        engine = create_engine(url)
        try:
            state = state_of(engine)
        finally:
            engine.dispose()
        print(state.describe())
        return 1 if state.behind or state.ahead else 0
    try:
        before, after = upgrade(url)
    except DBAPIError as exc:  # the upgrade's transaction was rolled back
        print(_("loa-controller db upgrade: the upgrade failed, and was undone: the database "
                "is as it was. The database said: {said}", said=exc.orig), file=sys.stderr)
        return 1
    if before.current:
        print(_("{where}: already at revision {revision} (head); nothing to do.",
                where=after.where, revision=after.revision))
    elif before.empty:
        print(_("{where}: created the store's tables at revision {revision} (head).",
                where=after.where, revision=after.revision))
    else:
        was = (_("revision {revision}", revision=before.revision) if before.revision
               else _("no schema version (a release before migrations)"))
        print(_("{where}: upgraded from {was} to revision {revision} (head); "
                "every row kept.", where=after.where, was=was, revision=after.revision))
    return 0


def _db_keep(args: argparse.Namespace, config: Any) -> int:
    """db backup, restore, prune (controller/store/backup.py, retention.py)."""
    from controller.broker_state import CONNECTED, DISCONNECTED, STOPPED
    from controller.store import Store
    from controller.store.backup import BackupError, backup, restore
    from controller.store.retention import prune

    url = config.store_url
    try:
        if args.db_command == "backup":
            print(backup(url, Path(args.file)).what)
            return 0
        if args.db_command == "restore":
            if not args.force and _missing_sqlite_file(url) is None:
                marks = _marks(url, (CONNECTED, DISCONNECTED, STOPPED))
                running, stopped = max((m for m in marks[:2] if m), default=None), marks[2]
                if running is not None and (stopped is None or stopped < running):
                    print(_("loa-controller db restore: the controller has not recorded a "
                            "clean stop since it last ran: stop it first (systemctl stop "
                            "loa-controller), or give --force if it crashed"), file=sys.stderr)
                    return 1
            print(restore(url, Path(args.file)).what)
            return 0
    except BackupError as exc:
        print(f"loa-controller db {args.db_command}: {l10n.say(exc)}", file=sys.stderr)
        return 1
    store = Store(url)
    try:
        done = prune(
            store.db, datetime.now(UTC), timedelta(days=config.events_retention_days),
            config.tz, archive=Path(args.archive) if args.archive else None,
            dry_run=args.dry_run,
        )
    finally:
        store.close()
    print(done.describe(config.tz, args.dry_run))
    return 0


def _marks(url: str, names: Sequence[str]) -> list[datetime | None]:
    """The store's marks by name, read as they are (whatever its schema revision)."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import SQLAlchemyError

    from controller.store import aware
    from controller.store.schema import marks

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = dict(conn.execute(select(marks.c.name, marks.c.at)).all())
    except SQLAlchemyError:  # no such table: not a store a controller ran on
        found = {}
    finally:
        engine.dispose()
    return [aware(found[n]) if found.get(n) is not None else None for n in names]


def _status_banner(status: ConfigStatus | None, when: Callable[[datetime], str]) -> list[str]:
    """What the running controller made of the playlists and the fleet, for `fleet`."""
    if status is None:
        return []
    if status.status != "error":
        return [_("playlists and fleet: loaded at {at}, ok", at=when(status.at)), ""]
    lines = status.problems.splitlines()
    errors = sum(1 for line in lines if ": warning: " not in line)
    return [
        _("PLAYLISTS/FLEET EDIT REFUSED at {at} ({n} error(s)); the previous schedule keeps "
          "running. Fix these and save again:", at=when(status.at), n=errors),
        *(f"  {line}" for line in lines),
        "",
    ]


def _leader_lines(lease: Lease | None, when: Callable[[datetime], str]) -> list[str]:
    """Which controller leads, since when, for `fleet` (controller/leadership.py)."""
    if lease is None:
        return []
    if lease.expired:
        return [_("no controller leads: the lease of {holder} (term {term}) ran out at {at}; "
                 "a running controller takes it within a second, else start one",
                 holder=lease.holder, term=lease.term, at=when(lease.expires_at)), ""]
    return [_("leader: {holder} (web {url}), leading since {since}, term {term}",
              holder=lease.holder, url=lease.url or "-", since=when(lease.acquired_at),
              term=lease.term), ""]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def heartbeat_summary(beat: dict[str, Any] | None, received: datetime | None,
                      now: datetime) -> str:
    """One cluster's latest heartbeat, in a line: how old, uptime, temperature, disk,
    relay, clock offset to the controller, volume."""
    if beat is None or received is None:
        return "-"

    def span(seconds: float) -> str:
        if seconds < 120:
            return _("{n:.0f} s", n=seconds)
        if seconds < 7200:
            return _("{n:.0f} min", n=seconds / 60)
        if seconds < 172800:
            return _("{n:.0f} h", n=seconds / 3600)
        return _("{n:.0f} d", n=seconds / 86400)

    parts = [_("{span} ago", span=span(max((now - received).total_seconds(), 0)))]
    parts.append(_("up {span}", span=span(float(beat.get("uptime_s", 0)))))
    if beat.get("cpu_temp_c") is not None:
        parts.append(f"{float(beat['cpu_temp_c']):.0f}°C")
    if beat.get("disk_free_bytes") is not None:
        parts.append(_("disk {gb:.1f} GB free", gb=int(beat["disk_free_bytes"]) / 1e9))
    if beat.get("relay") is not None:
        parts.append(_("relay {state}", state=beat["relay"]))
    if beat.get("clock_offset_s") is not None:  # the agent's estimate, from commands
        parts.append(_("clock {s:+.3f} s", s=float(beat["clock_offset_s"])))
    elif beat.get("at"):  # none yet (no command lately): from this heartbeat's own time
        sent = datetime.fromisoformat(str(beat["at"]))
        parts.append(_("clock ≈{s:+.3f} s", s=(sent - received).total_seconds()))
    if beat.get("volume") is not None:
        parts.append(_("vol {volume}", volume=beat["volume"]))
    return ", ".join(parts)


def cmd_fleet(args: argparse.Namespace) -> int:
    from controller.config import load_controller_config
    from controller.confirmations import ConfirmationRecords
    from controller.holdings import Holdings, content_view, describe_content
    from controller.store import Store

    config = load_controller_config(Path(args.config))
    tz = ZoneInfo(config.timezone)
    store = Store(config.store_url)
    now = datetime.now(UTC)
    rows = store.clusters.fleet_rows()
    status = store.config_status.get()
    health = store.clusters.health()
    held = Holdings(store).content_status(now)
    records = ConfirmationRecords(store.engine)
    waiting = records.waiting_by_cluster()  # plays sent, not confirmed yet
    not_received = records.latest_not_received()  # per cluster, the latest
    not_received_today = records.count_not_received(now - NOT_RECEIVED_WINDOW)
    keys = _key_status(store)
    listening, lease = _listening(store, tz, now), store.leases.current()
    store.close()
    content = {
        r.id: content_view(
            held.get(r.id), health[r.id].heartbeat if r.id in health else None
        )
        for r in rows
    }

    def when(value: datetime | None) -> str:
        return l10n.when(value, l10n.current(), tz, seconds=True) if value else _("never")

    # the controller's own fault first, not the clusters'
    banner = _leader_lines(lease, when) + ([f"NOTE: {listening}."] if listening else [])
    banner += _status_banner(status, when)
    if args.json:  # the notes on stderr, the list of clusters alone on stdout
        for line in banner if lease or listening or (status and status.status == "error") \
                else []:
            print(line, file=sys.stderr)
        print(json.dumps([
            {
                "cluster": r.id, "name": r.name, "commune": r.commune_name, "state": r.state,
                "last_seen": r.last_seen.isoformat() if r.last_seen else None,
                "playing": r.playing, "last_result": r.last_result,
                "last_result_bulletin": r.last_result_bulletin,
                "last_result_reason": r.last_result_reason,
                "last_rejection": r.last_rejection,
                "state_since": _iso(health[r.id].state_at) if r.id in health else None,
                "state_reason": health[r.id].state_reason if r.id in health else None,
                "heartbeat_received_at": (
                    _iso(health[r.id].heartbeat_at) if r.id in health else None
                ),
                "heartbeat": health[r.id].heartbeat if r.id in health else None,
                "content": content[r.id],
                "unconfirmed": waiting.get(r.id, 0),
                "last_not_received": _not_received_json(not_received.get(r.id)),
                "key": keys.get(r.id, {"status": "not registered", "id": None}),
            }
            for r in rows
        ], ensure_ascii=False, indent=2))
        return 0
    for line in banner:
        print(line)
    if not rows:
        print(_("no clusters in {store}; has `loa-controller run` started yet?",
                store=config.store_url))
        return 0

    table = []
    for r in rows:
        result = "-"
        if r.last_result:
            result = f"{_word(r.last_result)}: {r.last_result_bulletin or '?'}"
            if r.last_result_reason and r.last_result != "finished":
                result += f" ({_reason(r.last_result_reason)})"
        missed = not_received.get(r.id)
        if missed is not None and (r.last_result_at is None or missed.at > r.last_result_at):
            result = (f"{_word('missed')}: {missed.bulletin or missed.play_id} "
                      f"({_reason(missed.reason)})")
        rejected = f"{when(r.last_rejection_at)} {r.last_rejection}" if r.last_rejection else "-"
        found = health.get(r.id)
        state = _word(r.state)
        if found is not None and found.state_at is not None:
            state = _("{state} since {at}", state=state, at=when(found.state_at))
        if found is not None and found.state_reason and r.state == "offline":
            state += f" ({_reason(found.state_reason)})"
        beat = heartbeat_summary(
            found.heartbeat if found else None, found.heartbeat_at if found else None, now
        )
        unconfirmed = waiting.get(r.id, 0)
        table.append([
            r.id, r.commune_name, state, when(r.last_seen), r.playing or "-",
            describe_content(content[r.id]),
            _("{n} waiting", n=unconfirmed) if unconfirmed else "-", result, rejected, beat,
            _key_cell(keys.get(r.id)),
        ])
    print(format_table(
        [_("cluster"), _("commune"), _("online"), _("last seen"), _("playing"), _("content"),
         _("unconfirmed"), _("last result"), _("last rejected command"), _("last heartbeat"),
         _("key")],
        table,
    ))
    print(_fleet_footer(
        [r.state for r in rows], config.timezone, listening is not None,
        sum(waiting.values()), not_received_today, _key_footer([r.id for r in rows], keys),
    ))
    return 0


def _fleet_footer(states: list[str], tz: str, deaf: bool, waiting: int, missed: int,
                  keys: str) -> str:  # fmt: skip
    online = states.count("online")
    counts = {"n": len(states), "online": online, "offline": len(states) - online, "tz": tz}
    heard = (_("{n} clusters, {online} online, {offline} offline or never seen when the "
               "controller last heard them (times in {tz})", **counts) if deaf else
             _("{n} clusters, {online} online, {offline} offline or never seen (times in "
               "{tz})", **counts))  # fmt: skip
    sent = _("{waiting} play(s) sent and waiting for their cluster's confirmation; {missed} "
             "not received by their cluster in the last 24 h (no confirmation by the latest "
             "start: recorded as missed)", waiting=waiting, missed=missed)
    return f"\n{heard}\n{sent}\n{keys}"


def _key_footer(cluster_ids: list[str], keys: dict[str, dict[str, str | None]]) -> str:
    statuses = [keys.get(cid, {}).get("status") for cid in cluster_ids]
    registered, asking = statuses.count("registered"), statuses.count("waiting approval")
    line = _("{n} of {total} clusters have a registered key", n=registered,
             total=len(cluster_ids))
    if asking:
        line += "; " + _("{n} waiting for a manager's approval (loa-controller enrol list)",
                         n=asking)
    if registered < len(cluster_ids):
        line += "; " + _("the controller stores nothing a cluster without a registered key "
                         "reports (docs/operations.md, section 5: enrolment)")
    return line


def _key_status(store: Any) -> dict[str, dict[str, str | None]]:
    """Per cluster: its registered key, or the key it asks to have registered."""
    from controller.identities import Identities

    identities = Identities(store)
    found: dict[str, dict[str, str | None]] = {
        r.cluster: {"status": "waiting approval", "id": r.key_id}
        for r in identities.requests(pending_only=True)
    }
    for cluster, (ident, _text) in identities.active_keys().items():
        found[cluster] = {"status": "registered", "id": ident}
    return found


def _key_cell(found: dict[str, str | None] | None) -> str:
    if found is None:
        return _("not registered")
    if found["status"] == "registered":
        return str(found["id"])
    return _("{key} waiting approval", key=found["id"])


def _listening(store: Any, tz: ZoneInfo, now: datetime) -> str | None:
    """Why the controller hears nothing now (disconnected, stopped), from its marks."""
    from controller.broker_state import CONNECTED, DISCONNECTED, STOPPED, describe_marks

    marks = store.marks
    return describe_marks(
        marks.get(CONNECTED), marks.get(DISCONNECTED), marks.get(STOPPED), tz, now
    )


def _not_received_json(found: NotReceived | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "play_id": found.play_id, "bulletin": found.bulletin,
        "latest_start": found.latest_start.isoformat(), "recorded_at": found.at.isoformat(),
        "reason": found.reason,
    }


def cmd_check(args: argparse.Namespace) -> int:
    from controller.check import check

    problems = check(
        Path(args.config) if args.config else None, [Path(p) for p in args.paths],
        alone=args.alone,
    )
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem)
    if errors:
        print(_("{n} error(s); nothing was changed. Fix them and run check again.",
                n=len(errors)), file=sys.stderr)
        return 1
    print(_("ok: config, fleet and playlists are valid"), file=sys.stderr)
    return 0


def _with_drafts(sources: Any, drafts: list[str], now: datetime) -> tuple[set[str], list[str]]:
    """Put the draft playlists into sources.playlists (in memory only); the ids of the
    drafts' programmes, and a note for each that replaces a live one."""
    if not drafts:
        return set(), []
    from controller.drafts import draft_only, merge
    from controller.playlist import load_playlists

    draft = load_playlists(
        draft_only(sources.playlists.files, [Path(p) for p in drafts]), sources.fleet,
        tz=sources.tz, today=now.date(), holidays=sources.playlists.holidays,
    )
    sources.playlists, notes = merge(sources.playlists, draft)
    return set(draft.programmes), [str(n) for n in notes]


def cmd_schedule(args: argparse.Namespace) -> int:
    from controller.approval import Approvals, ContentUnreadableError
    from controller.preview import (
        MAX_WINDOW,
        holiday_notes,
        measure,
        only_clusters,
        parse_when,
        preview,
        where,
    )
    from controller.schedule import plan
    from controller.sources import load_sources

    sources = load_sources(_config_path(args))
    tz, config = sources.tz, sources.config
    now = datetime.now(tz)
    drafted, draft_notes = _with_drafts(sources, args.draft or [], now)
    start = parse_when(args.start, now=now, tz=tz)
    end = parse_when(args.end, now=now, tz=tz, base=start) if args.end else start + timedelta(
        hours=24
    )
    if end <= start:
        raise ValueError(_(
            "--to {to!r} ({end}) is not after --from ({start}); write a later --to, or a "
            "duration such as --to +6h", to=args.end, end=_local(end, tz),
            start=_local(start, tz),
        ))
    if end - start > MAX_WINDOW:
        raise ValueError(_(
            "--from {start} --to {end} spans more than {days} days; ask for a shorter window",
            start=_local(start, tz), end=_local(end, tz), days=MAX_WINDOW.days,
        ))
    only = only_clusters(sources.fleet, args.cluster, args.target)
    store = _existing_store(config.store_url) if config else None
    approvals = Approvals(store) if store else None

    def approval(programme: Programme) -> str:
        if approvals is None:
            return _("pending: needs approval (no store to ask)")
        try:
            return str(approvals.state(programme).describe(tz))
        except ContentUnreadableError as exc:
            return _("pending: {why}", why=exc)

    shown = {o.programme for o in plan(sources.playlists, start, end, tz)}
    durations = measure(
        (sources.playlists.programmes[p] for p in sorted(shown)),
        config.audio.bitrate_kbps if config else 24,
    )
    rows = preview(
        sources.playlists, sources.fleet, start, end, tz,
        only=only, durations=durations, approval=approval,
    )
    if store is not None:
        store.close()
    lead = config.lead_time if config else DEFAULT_LEAD_TIME
    if args.json:
        print(json.dumps([
            {
                "start": r.occurrence.start.astimezone(tz).isoformat(),
                "start_utc": r.occurrence.start.isoformat(),
                "latest_start": r.occurrence.latest_start.astimezone(tz).isoformat(),
                "sent_at": (r.occurrence.start - lead).astimezone(tz).isoformat(),
                "play_id": r.occurrence.play_id,
                "programme": r.programme.id,
                "name": r.programme.name,
                "level": r.programme.level,
                "bulletins": [b.title or r.programme.name for b in r.programme.bulletins],
                "rebroadcast": _rebroadcast_json(r.programme),
                "duration_s": round(r.seconds, 1) if r.seconds is not None else None,
                "targets": list(r.programme.targets),
                "exclude": list(r.programme.exclude),
                "clusters": r.clusters,
                "clusters_in_all": r.all_clusters,
                "requires_approval": r.programme.requires_approval,
                "approval": r.approval,
                "source": str(r.programme.source),
                "draft": r.programme.id in drafted,
            }
            for r in rows
        ], ensure_ascii=False, indent=2))
        return 0

    from controller.overlap import span

    scope = ""
    if args.cluster:
        scope = _(" on cluster {cluster}", cluster=args.cluster)
    elif args.target:
        scope = _(" on {target} ({n} clusters)", target=args.target, n=len(only or ()))
    print(_("Schedule{scope} from {start} to {end} ({tz}); each play is sent to its clusters "
            "{lead} before it starts.", scope=scope, start=_local(start, tz),
            end=_local(end, tz), tz=tz.key, lead=span(lead.total_seconds())))
    if args.draft:
        print(_("With the draft {files} (not published; its programmes are marked *): "
                "{programmes}.", files=", ".join(args.draft),
                programmes=", ".join(sorted(drafted)) or _("no programmes")))
    for note in [*draft_notes, *(_("Holiday: {note}", note=n) for n in holiday_notes(
        sources.playlists, start, end, tz
    ))]:
        print(note)
    if not rows:
        print(_("nothing plays in this window."))
        return 0
    table = []
    for r in rows:
        count = _("{n} of {total}", n=len(r.clusters), total=r.all_clusters) if (
            only is not None
        ) else str(r.all_clusters)
        table.append([
            _local(r.occurrence.start, tz),
            r.programme.id + (" *" if r.programme.id in drafted else ""),
            _word(r.programme.level),
            " + ".join(
                (b.title or r.programme.name) + (_(" (live)") if b.rebroadcast else "")
                for b in r.programme.bulletins
            ),
            span(r.seconds) if r.seconds is not None else "?",
            f"{count}: {where(sources.fleet, r.programme)}",
            "-" if r.approval is None else (
                _("PENDING APPROVAL") if r.pending else r.approval
            ),
        ])
    print(format_table(
        [_("when (local)"), _("programme"), _("level"), _("bulletins"), _("lasts"),
         _("clusters: targets"), _("approval")],
        table,
    ))
    pending = sorted({r.programme.id for r in rows if r.pending})
    print("\n" + _("{n} plays.", n=len(rows)), end="")
    if pending:
        print(" " + _("Waiting for approval: {ids} (loa-controller approve PROGRAMME; "
                      "loa-controller pending).", ids=", ".join(pending)), end="")
    print()
    return 0


def _rebroadcast_json(programme: Programme) -> dict[str, Any] | None:
    relay = programme.rebroadcast()
    if relay is None:
        return None
    return {
        "inputs": relay.inputs(),
        "fallback": str(relay.fallback) if relay.fallback else None,
    }


def cmd_schema(args: argparse.Namespace) -> int:
    from controller.playlist import write_schemas

    for path in write_schemas(Path(args.out)):
        print(f"wrote {path}")
    print(
        "Editors with YAML support (VS Code with the Red Hat YAML extension, and others using "
        "yaml-language-server) complete keys and flag mistakes in a playlist whose first "
        "line names the schema, relative to the playlist, e.g.:\n"
        "  # yaml-language-server: $schema=../docs/schema/playlist.schema.json"
    )
    return 0


def _prepare_settings(args: argparse.Namespace) -> tuple[AudioSettings, str]:
    """The audio settings prepare uses, and where they come from: the controller config
    (--config, else config/controller.yaml where it exists), else the defaults."""
    from controller.audio import AudioSettings
    from controller.config import AudioConfig, load_controller_config

    path = _config_path(args) or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is None:
        return AudioSettings.from_config(AudioConfig()), _("the default audio settings")
    return (AudioSettings.from_config(load_controller_config(path).audio),
            _("the audio: of {path}", path=path))


def cmd_prepare(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from controller.audio import AudioError, AudioLibrary
    from controller.ffmpeg import FfmpegError, decode_pcm

    settings, origin = _prepare_settings(args)
    sources = [Path(p) for p in args.files]
    intro = Path(args.intro) if args.intro else None
    outro = Path(args.outro) if args.outro else None
    for path in (intro, *sources, outro):
        if path is not None and not path.exists():
            raise ValueError(_("{path}: no such file; check the name and the folder", path=path))
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(_(
            "--out {out} is a folder: give the file to write, e.g. {example}", out=out,
            example=out / "bulletin.opus",
        ))
    if not out.parent.is_dir():
        raise ValueError(_(
            "--out {out}: the folder {folder} does not exist; create it first", out=out,
            folder=out.parent,
        ))
    with tempfile.TemporaryDirectory(prefix="loa-prepare-") as scratch:
        prepared = AudioLibrary(Path(scratch), settings).prepare(
            sources, intro=intro, outro=outro, profile=args.profile
        )
        assert prepared.measured is not None  # just prepared: measured
        shutil.copyfile(prepared.path, out)
    rows = []
    for role, path in (
        (_("intro"), intro), *((_("source"), p) for p in sources), (_("outro"), outro)
    ):
        if path is None:
            continue
        try:  # as prepare measured it: mono, at the encoding rate
            found = decode_pcm(path, sample_rate=settings.sample_rate, measure=True).loudness
        except FfmpegError as exc:  # decoded by prepare already; say so rather than fail
            raise AudioError(path, _("its loudness could not be measured ({exc})", exc=exc),
                             _("Check the ffmpeg build")) from None
        assert found is not None  # asked for with measure=True
        rows.append([role, str(path), f"{found.integrated_lufs:.1f} LUFS",
                     f"{found.range_lu:.1f} LU", f"{found.true_peak_dbtp:.1f} dBTP", ""])
    heard = prepared.measured
    rows.append([_("bulletin"), str(out), f"{heard.integrated_lufs:.1f} LUFS",
                 f"{heard.range_lu:.1f} LU", f"{heard.true_peak_dbtp:.1f} dBTP",
                 f"{prepared.duration_s:.1f} s"])
    print(format_table(
        ["", _("file"), _("loudness"), _("range"), _("true peak"), _("duration")], rows
    ))
    target = (_("as it came") if settings.target_lufs is None
              else f"{settings.target_lufs:g} LUFS")
    print(_(
        "\nwrote {out}: {size} bytes of Ogg/Opus ({kbps} kb/s, "
        "{rate} Hz, profile {profile}), SHA-256 {sha}.\n"
        "The bulletin is measured decoded again, as the agents decode it (EBU R128: "
        "integrated loudness, loudness range, true peak). Target {target}, true peak at "
        "most {peak:g} dBTP, from {origin}.", out=out, size=prepared.size,
        kbps=settings.bitrate_kbps, rate=settings.sample_rate, profile=prepared.profile,
        sha=prepared.sha256, target=target, peak=settings.true_peak_dbtp, origin=origin,
    ))
    return 0


def _next_airing(programme: Programme, tz: ZoneInfo) -> str:
    upcoming = programme.next_after(datetime.now(tz), tz)
    return _local(upcoming, tz) if upcoming else _("never again")


def cmd_approve(args: argparse.Namespace) -> int:
    from controller.approval import Approvals
    from controller.sources import load_sources
    from controller.store import Store

    sources = load_sources(_config_path(args), require_config=True)
    assert sources.config is not None
    tz = sources.tz
    programme = _programme(sources.playlists, args.programme)
    if not programme.requires_approval:
        print(_("'{id}' ({name}) does not need approval "
                "(requires_approval is not set): it airs as scheduled. Nothing recorded.",
                id=programme.id, name=programme.name))
        return 0
    by = args.by or getpass.getuser()
    store = Store(sources.config.store_url)
    try:
        state = Approvals(store).approve(
            programme, by, datetime.now(tz), fleet=sources.fleet, source="cli"
        )
    finally:
        store.close()
    print(_("'{id}' ({name}) is now {state}.", id=programme.id, name=programme.name,
            state=state.describe(tz)))
    for bulletin, digest in zip(programme.bulletins, state.content, strict=True):
        files = ", ".join(p.name for p in bulletin.audio())
        print(_("  {bulletin}: {files} (content {digest})", bulletin=bulletin.title
                or programme.name, files=files, digest=digest[:12]))
    print(_("next airing: {next}. If a bulletin's audio changes, "
            "it needs approval again. Written to the audit log.",
            next=_next_airing(programme, tz)))
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    from controller.approval import Approvals, ContentUnreadableError
    from controller.sources import load_sources

    sources = load_sources(_config_path(args), require_config=True)
    assert sources.config is not None
    tz = sources.tz
    store = _existing_store(sources.config.store_url)
    approvals = Approvals(store) if store else None
    rows: list[dict[str, Any]] = []
    for programme in sorted(sources.playlists.programmes.values(), key=lambda p: p.id):
        if not programme.requires_approval:
            continue
        try:
            state = approvals.state(programme) if approvals else None
        except ContentUnreadableError as exc:
            detail = _("pending: {reason}", reason=l10n.say(exc))
        else:
            if state is not None and state.approved:
                continue
            detail = str(state.describe(tz)) if state else _("pending: never approved")
        upcoming = programme.next_after(datetime.now(tz), tz)
        rows.append({
            "programme": programme.id,
            "name": programme.name,
            "next_airing": upcoming.astimezone(tz).isoformat() if upcoming else None,
            "next": _local(upcoming, tz) if upcoming else _("never again"),
            "bulletins": [b.title or programme.name for b in programme.bulletins],
            "detail": detail,
            "source": str(programme.source),
        })
    if store is not None:
        store.close()
    if args.json:
        print(json.dumps(
            [{k: v for k, v in r.items() if k != "next"} for r in rows],
            ensure_ascii=False, indent=2,
        ))
        return 0
    if not rows:
        print(_("nothing waits for approval."))
        return 0
    print(format_table(
        [_("programme"), _("name"), _("next airing (local)"), _("bulletins"), _("state"),
         _("written at")],
        [[r["programme"], r["name"], r["next"], " + ".join(r["bulletins"]), r["detail"],
          r["source"]] for r in rows],
    ))
    print(_("\n{n} programme(s) wait for approval; they do not air until approved: "
            "loa-controller approve PROGRAMME [--by NAME]", n=len(rows)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import signal

    from controller.demo import run_demo

    address = None
    if args.config:  # the broker, its CA and the login as `run` takes them
        from controller.config import load_controller_config
        from controller.main import Settings

        if args.broker or args.ca_file:
            raise ValueError(_("give either --config or --broker/--ca-file, not both"))
        address = Settings.from_config(load_controller_config(Path(args.config))).broker

    def interrupted(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # stops the demo through its cleanup, as Ctrl-C does

    signal.signal(signal.SIGTERM, interrupted)
    try:
        result = run_demo(
            broker_url=args.broker, ca_file=args.ca_file, as_json=args.json, keep=args.keep,
            address=address, store_url=args.store,
        )
    except KeyboardInterrupt:
        print(_("demo interrupted (what it left on the broker is said above)"),
              file=sys.stderr)
        raise
    return 0 if result.ok else 1


def _add_db_parser(sub: Any) -> None:
    p = sub.add_parser(
        "db", help="the store's schema: which revision it is at, and upgrading it",
        description="The controller's database carries its schema revision. After "
        "installing a new release: stop the controller, back the database up, run "
        "`loa-controller db upgrade`, start it again.",
    )
    p.set_defaults(func=cmd_db)
    db = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for action, text in (
        ("current", "the database's revision, and whether it is behind (exit status 1 if "
         "it is behind or ahead of this release)"),
        ("upgrade", "bring the database to this release's revision, in place, keeping "
         "every row (back it up first)"),
        ("backup", "write a consistent copy of the database to FILE while the controller "
         "runs (SQLite: its online backup; PostgreSQL: pg_dump)"),
        ("restore", "replace the database with the backup FILE (stop the controller first; "
         "SQLite: its backup API; PostgreSQL: pg_restore)"),
        ("prune", "delete the status events older than events_retention_days (whole "
         "months), after writing them to --archive FILE"),
    ):
        q = db.add_parser(action, help=text, description=text)
        q.add_argument("--config", default=str(DEFAULT_CONFIG), help="controller config YAML")
        if action in ("backup", "restore"):
            q.add_argument("file", metavar="FILE", help="the backup file")
        if action == "restore":
            q.add_argument("--force", action="store_true", help="restore although the "
                           "controller did not record a clean stop")
        if action == "prune":
            q.add_argument("--archive", metavar="FILE", help="write the events deleted to "
                           "this file first (JSON lines, gzip), e.g. events-2021.jsonl.gz")
            q.add_argument("--dry-run", action="store_true", help="only count them")


def _add_prepare(sub: Any) -> None:
    from controller.audio_chain import DEFAULT_PROFILE, PROFILE_NAMES

    p = sub.add_parser(
        "prepare", help="prepare audio as the clusters get it, and measure it",
        description="Prepare one bulletin from audio files (joined in order, with a short "
        "gap) exactly as the controller prepares it for the clusters, write it to OUT, and "
        "print each file's and the result's loudness, loudness range and true peak, "
        "measured on the result decoded again as the agents decode it.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="the audio files, in order")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="the Ogg/Opus file to write (e.g. bulletin.opus)")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=DEFAULT_PROFILE,
                   help="the speakers it is for: horn (outdoor horns, the default) or "
                   "full-range (indoor or full-range speakers); see docs/audio.md")
    p.add_argument("--intro", metavar="FILE", help="played before the files")
    p.add_argument("--outro", metavar="FILE", help="played after the files")
    p.add_argument("--config", help="controller config YAML whose audio: settings to use "
                   "(default: config/controller.yaml if present, else the defaults)")
    p.set_defaults(func=cmd_prepare)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole path in miniature: 73 simulated clusters")
    p.add_argument("--broker", help="use this broker (mqtt://host:port, or mqtts://host:port "
                   "for TLS) instead of an embedded one")
    p.add_argument("--ca-file", metavar="PEM", help="for an mqtts:// broker: the CA certificate "
                   "that signed its certificate; only it is trusted (default: the system's CAs)")
    p.add_argument("--config", help="use the broker, CA and login of this controller config, "
                   "as `run` does (the demo still uses topics and client ids of its own)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    p.add_argument("--keep", action="store_true", help="keep the demo's working directory")
    p.add_argument("--store", metavar="URL", help="keep the controller's store at URL (a new "
                   "sqlite:///PATH, or an empty database) for `loa-controller report --store "
                   "URL`")
    p.set_defaults(func=cmd_demo)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("loa")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run from a source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loa-controller",
        description="Loa controller: schedules bulletins and sends them to speaker clusters.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"loa-controller {_version()}",
                        help="print the version and exit")
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the controller daemon")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="controller config YAML")
    p.set_defaults(func=cmd_run)

    _add_db_parser(sub)

    p = sub.add_parser("keygen", help="make the controller's Ed25519 signing key pair")
    p.add_argument("--out", default="keys", help="directory for controller.key/.pub (keys/)")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("fleet", help="show every cluster: online, last seen, playing, result")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="controller config YAML")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("check", help="validate config, fleet and playlists; report every error")
    p.add_argument("paths", nargs="*", help="draft playlist files or directories, checked "
                   "with the live playlists (the config's) and their overlaps")
    p.add_argument("--alone", action="store_true",
                   help="check PATHS on their own, as the whole playlist set")
    p.add_argument("--config", help="controller config YAML (default: config/controller.yaml)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "schedule", help="what plays when and where (default: the next 24 hours)",
        description="List the plays of the playlists in a window of local time, from the same "
        "plan the running controller follows.",
    )
    p.add_argument("--from", dest="start", default="now", metavar="T",
                   help='start: "2026-11-27 06:00", 2026-11-27, now (default), +2h, '
                   "or --from=-2h for two hours ago")
    p.add_argument("--to", dest="end", metavar="T",
                   help='end: a time as for --from, or +6h / +7d after --from (default +24h)')
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cluster", metavar="ID", help="only what plays on this cluster")
    which.add_argument("--target", metavar="NODE",
                       help="only what plays on clusters under this node (commune, village, "
                       "tag:<tag>, all)")
    p.add_argument("--config", help="controller config YAML (default: config/controller.yaml "
                   "if present, else config/fleet.yaml and playlists/)")
    p.add_argument("--with", dest="draft", action="append", metavar="FILE",
                   help="preview with this draft playlist added to the live ones, without "
                   "publishing it (a programme with a live one's id replaces it); repeatable")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("schema", help="write the JSON Schemas of playlists, fleet and config")
    p.add_argument("--out", default="docs/schema", help="folder to write them to (docs/schema)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("approve", help="approve a programme's current bulletins so it may air")
    p.add_argument("programme", metavar="PROGRAMME", help="the programme id")
    p.add_argument("--by", help="who approves (default: your login name)")
    p.add_argument("--config", help="controller config YAML (default: config/controller.yaml)")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("pending", help="programmes waiting for approval, with their next airing")
    p.add_argument("--config", help="controller config YAML (default: config/controller.yaml)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_pending)

    _add_prepare(sub)

    _add_demo(sub)

    # `user` and `urgent` (the web app's), `provision`, `broker-config`, `keys` (access),
    # `say` (hear a text before sending it), `enrol` (cluster identities), `cap check`,
    # `live`, `report` (proof of play).
    from controller import cli_access, cli_cap, cli_enrol, cli_live, cli_report, cli_speech, cli_web

    for commands in (cli_web, cli_access, cli_speech, cli_enrol, cli_cap, cli_live, cli_report):
        commands.register(sub, str(DEFAULT_CONFIG))
    l10n.add_lang_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    l10n.use(l10n.choose(args.lang))
    _setup_logging(args)
    try:
        code = int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        if args.command == "run":
            print(_("{n} error(s); nothing was started.", n=len(exc.problems)), file=sys.stderr)
        else:
            print(_("{n} error(s); nothing was done.", n=len(exc.problems)), file=sys.stderr)
        code = 1
    except (ValueError, OSError) as exc:
        print(f"loa-controller {args.command}: {l10n.say(exc)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
