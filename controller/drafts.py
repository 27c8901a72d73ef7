"""Drafts: a playlist file checked and previewed with the live playlists, never published.

A manager writes a new or changed playlist beside the live ones (the config's
``playlists:``) and asks, before putting it there, whether it is valid with them
(`loa-controller check DRAFT`) and what the schedule would become
(`loa-controller schedule --with DRAFT`). The draft is loaded like any playlist; its
programmes are added to the live set, and a draft programme with the id of a live one
takes its place (an edited copy of a live file), with a note saying so. Overlaps are
then looked for across the whole set, so a draft airing over what is already
scheduled is reported with the file:line of both. Nothing is written, sent or stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.fleet import Fleet
from controller.holidays import HolidayCalendar
from controller.playlist import Playlists, load_playlists, playlist_files
from protocol.config_errors import ConfigError, Problem
from protocol.l10n import _


def draft_only(live_paths: Sequence[Path], draft_paths: Sequence[Path]) -> list[Path]:
    """The draft files that are not live files already (a live file named as a draft is
    simply live)."""
    live, _ = playlist_files(live_paths)
    known = {p.resolve() for p in live}
    drafts, _ = playlist_files(draft_paths)
    missing = [p for p in draft_paths if not p.exists()]
    return [p for p in drafts if p.resolve() not in known] + missing


def merge(live: Playlists, draft: Playlists) -> tuple[Playlists, list[Problem]]:
    """The live programmes with the draft's added; a draft programme replaces the live one
    of the same id. Returns the set and a note for each replacement."""
    notes: list[Problem] = []
    programmes = dict(live.programmes)
    for ident, programme in draft.programmes.items():
        replaced = programmes.get(ident)
        if replaced is not None:
            notes.append(Problem(
                programme.source.file, programme.source.line, 1,
                _("draft: programme {ident!r} replaces the live one at {source}", ident=ident,
                  source=replaced.source),
                "warning",
            ))
        programmes[ident] = programme
    merged = Playlists(
        programmes=programmes,
        files=[*live.files, *draft.files],
        warnings=[*live.warnings, *draft.warnings, *notes],
        holidays=live.holidays or draft.holidays,
    )
    return merged, notes


def load_with_draft(
    live_paths: Sequence[Path],
    draft_paths: Sequence[Path],
    fleet: Fleet,
    *,
    tz: ZoneInfo | None = None,
    today: date | None = None,
    holidays: HolidayCalendar | None = None,
) -> tuple[Playlists, set[str]]:
    """The live playlists with the draft in; ConfigError lists the problems of both.

    Returns the merged set and the ids of the draft's programmes.
    """
    problems: list[Problem] = []
    live: Playlists | None = None
    draft: Playlists | None = None
    try:
        live = load_playlists(live_paths, fleet, tz=tz, today=today, holidays=holidays)
    except ConfigError as exc:
        problems.extend(exc.problems)
    drafts = draft_only(live_paths, draft_paths)
    try:
        draft = load_playlists(drafts, fleet, tz=tz, today=today, holidays=holidays)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if live is None or draft is None:
        raise ConfigError(problems)
    merged, _ = merge(live, draft)
    return merged, set(draft.programmes)
