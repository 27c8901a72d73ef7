"""`loa-controller check`: validate the config, the fleet and every playlist together.

Files named on the command line are drafts: checked with the live playlists, overlaps
with what is already scheduled included (controller.drafts); `--alone` checks them as
the whole playlist set instead.

Every problem is collected and reported at once as `file:line:col: message`; nothing is
started or changed. The province's abbreviation files (speech.abbreviations) are
checked too. Audio files are decoded to prove they can be prepared, and their
durations tell whether two programmes of the same level overlap on a cluster in the
next 366 days (controller.overlap).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.abbreviations import dictionary
from controller.audio import AudioError, AudioLibrary, AudioSettings
from controller.config import ControllerConfig, load_controller_config
from controller.drafts import load_with_draft
from controller.fleet import Fleet, load_fleet
from controller.holidays import HolidayCalendar, load_holidays
from controller.overlap import HORIZON, overlaps
from controller.playlist import Playlists, load_playlists
from controller.sources import (
    DEFAULT_CONFIG,
    DEFAULT_FLEET,
    DEFAULT_PLAYLISTS,
    DEFAULT_TIMEZONE,
    holidays_path,
)
from protocol.config_errors import ConfigError, Problem


def _config(path: Path | None, problems: list[Problem]) -> ControllerConfig | None:
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return None
        path = DEFAULT_CONFIG
    try:
        return load_controller_config(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def _audio(
    playlists: Playlists, problems: list[Problem], bitrate_kbps: int
) -> dict[Path, float]:
    """Decode every audio file once; return the durations of those that decode."""
    with tempfile.TemporaryDirectory(prefix="loa-check-") as scratch:
        library = AudioLibrary(Path(scratch), AudioSettings(bitrate_kbps=bitrate_kbps))
        checked: dict[Path, str | None] = {}
        durations: dict[Path, float] = {}
        for programme in playlists.programmes.values():
            for bulletin in programme.bulletins:
                for audio in bulletin.audio():
                    if audio not in checked:
                        try:
                            durations[audio] = library.probe(audio)
                            checked[audio] = None
                        except AudioError as exc:
                            checked[audio] = str(exc)
                    error = checked[audio]
                    if error:
                        problems.append(Problem(
                            programme.source.file, programme.source.line, 1,
                            f"programme '{programme.id}': {error}",
                        ))
    return durations


def check(
    config_path: Path | None,
    paths: Sequence[Path],
    *,
    today: datetime | None = None,
    alone: bool = False,
) -> list[Problem]:
    """Every problem of the config, fleet and playlists.

    paths: draft playlist files, checked together with the live playlists (the config's,
    else playlists/; controller.drafts), overlaps with them included. alone: check paths
    on their own instead, as the whole playlist set.
    """
    problems: list[Problem] = []
    config = _config(config_path, problems)
    fleet_path = config.fleet if config else DEFAULT_FLEET
    live_paths = list(config.playlists) if config else [DEFAULT_PLAYLISTS]
    tz = config.tz if config else None
    if config is not None:
        try:
            dictionary(config.speech.abbreviations)
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        fleet: Fleet | None = load_fleet(
            fleet_path, config.speech.voice_names() if config else None
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
        fleet = None
    try:
        calendar: HolidayCalendar = load_holidays(holidays_path(config))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return problems
    if fleet is None:
        return problems
    day = (today or datetime.now(tz)).date() if tz else None
    try:
        if paths and not alone:
            playlists, _ = load_with_draft(
                live_paths, list(paths), fleet, tz=tz, today=day, holidays=calendar
            )
        else:
            playlists = load_playlists(
                list(paths) or live_paths, fleet, tz=tz, today=day, holidays=calendar
            )
    except ConfigError as exc:
        problems.extend(exc.problems)
        return problems
    problems.extend(playlists.warnings)
    durations = _audio(playlists, problems, config.audio.bitrate_kbps if config else 24)
    zone = tz or ZoneInfo(DEFAULT_TIMEZONE)
    first = datetime.combine((today or datetime.now(zone)).astimezone(zone).date(), time(0), zone)
    problems.extend(overlaps(playlists, fleet, durations, zone, first, first + HORIZON))
    return problems
