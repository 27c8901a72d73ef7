"""What the controller reads, loaded together: the config, the fleet and the playlists.

The same loaders serve `loa-controller check`, `schedule`, `approve`, `pending` and the
running controller's live reload, so a file that one accepts the others accept too.
Without a config file the commands fall back to the repository's layout
(config/fleet.yaml, playlists/, Asia/Ho_Chi_Minh).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.config import ControllerConfig, load_controller_config
from controller.fleet import Fleet, load_fleet
from controller.holidays import BUILTIN_HOLIDAYS, HolidayCalendar, load_holidays
from controller.playlist import Playlists, load_playlists
from protocol.config_errors import ConfigError, Problem
from protocol.l10n import _

DEFAULT_CONFIG = Path("config/controller.yaml")
DEFAULT_FLEET = Path("config/fleet.yaml")
DEFAULT_PLAYLISTS = Path("playlists")
DEFAULT_HOLIDAYS = Path("config/holidays.yaml")
DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"


def load_together(
    fleet_path: Path,
    playlist_paths: Sequence[Path],
    *,
    tz: ZoneInfo | None = None,
    today: date | None = None,
    voices: Sequence[str] | None = None,
    holidays: Path | None = None,
) -> tuple[Fleet, Playlists]:
    """The fleet and the holiday calendar, then the playlists checked against them;
    ConfigError lists every problem.

    Playlist targets name the fleet's nodes and their schedules the calendar's holidays,
    so a broken fleet or calendar stops there: its own problems are reported, the
    playlists are checked once both load. voices: the voice names the fleet may use (the
    config's speech.voice_names(); the built-in ones if None). holidays: the holiday
    calendar file (the built-in national holidays if None).
    """
    problems: list[Problem] = []
    fleet: Fleet | None = None
    calendar: HolidayCalendar | None = None
    try:
        fleet = load_fleet(fleet_path, voices)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        calendar = load_holidays(holidays or BUILTIN_HOLIDAYS)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or fleet is None:
        raise ConfigError(problems)
    return fleet, load_playlists(playlist_paths, fleet, tz=tz, today=today, holidays=calendar)


def holidays_path(config: ControllerConfig | None) -> Path:
    """The holiday calendar: the config's `holidays:`; without a config file,
    config/holidays.yaml when it is there; else the built-in national holidays."""
    if config is not None and config.holidays is not None:
        return config.holidays
    if config is None and DEFAULT_HOLIDAYS.is_file():
        return DEFAULT_HOLIDAYS
    return BUILTIN_HOLIDAYS


def find_config(path: Path | None, *, required: bool = False) -> ControllerConfig | None:
    """The controller config: the given file, else config/controller.yaml if there.

    Raises FileNotFoundError (with what to do) when a config is required and missing.
    """
    if path is None:
        if DEFAULT_CONFIG.exists():
            path = DEFAULT_CONFIG
        elif required:
            raise FileNotFoundError(_(
                "{path} not found: copy config/controller.example.yaml to it, or name the "
                "config with --config FILE", path=DEFAULT_CONFIG,
            ))
        else:
            return None
    elif not path.exists():
        raise FileNotFoundError(_("{path}: no such config file; check the --config path",
                                  path=path))
    return load_controller_config(path)


@dataclass
class Sources:
    config: ControllerConfig | None
    fleet: Fleet
    playlists: Playlists
    tz: ZoneInfo


def load_sources(
    config_path: Path | None,
    playlist_paths: Sequence[Path] = (),
    *,
    today: date | None = None,
    require_config: bool = False,
) -> Sources:
    """Config (optional unless required), fleet and playlists; ConfigError on any error."""
    config = find_config(config_path, required=require_config)
    tz = config.tz if config else ZoneInfo(DEFAULT_TIMEZONE)
    fleet_path = config.fleet if config else DEFAULT_FLEET
    paths = list(playlist_paths) or (list(config.playlists) if config else [DEFAULT_PLAYLISTS])
    voices = config.speech.voice_names() if config else None
    fleet, playlists = load_together(
        fleet_path, paths, tz=tz, today=today, voices=voices, holidays=holidays_path(config)
    )
    return Sources(config, fleet, playlists, tz)
