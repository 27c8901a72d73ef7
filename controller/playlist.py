"""Playlists: programmes of bulletins, when they air and where (playlists/*.yaml).

A playlist file holds programmes. At each scheduled time a programme's bulletins air
one after the other, on every cluster its targets name. A bulletin is one or more audio
files played in order, with an optional chime before (intro) and after (outro), or a
rebroadcast (tiếp sóng) of an upper-level station's stream, carried live for its
duration (controller/live.py), with backup streams and a fallback file::

    bulletins:
      - title: Thời sự VOV1
        rebroadcast:
          url: http://radio.example.vn/vov1.mp3
          backups: [http://backup.example.vn/vov1.mp3]
          duration: 30m
          fallback: audio/thoi-su-sang.wav   # when no stream works; silence if left out

A programme with a rebroadcast has that one bulletin. Files::

    # yaml-language-server: $schema=../docs/schema/playlist.schema.json
    programmes:
      - id: tin-sang
        name: Tiếp sóng thời sự buổi sáng
        level: normal                 # normal | priority | emergency
        bulletins:
          - files: [audio/thoi-su.wav]
            intro: audio/nhac-hieu.wav
            volume: 80                # 0-100; the cluster's own setting if left out
        schedule:
          times: ["06:00"]
          weekdays: daily             # daily | workdays | weekend | [mon, wed, fri]
                                      # | [thứ hai, thứ tư] | [T2, T4, CN] | T2-T6
        targets: [all]                # node or cluster ids, codes, names, tag:<tag>, all
        exclude: [kinh-cung-03]
        lateness: 10m                 # a play may still start this late

Times are local civil time in the controller's time zone (``timezone`` in the
controller config), on the local dates the schedule names. Daylight saving time, for
zones that have it (Asia/Ho_Chi_Minh has none):

- a time that does not exist on a spring-forward day (02:30 in Europe/Berlin on the
  last Sunday of March) airs at the same moment it would have without the change, one
  hour later on the new wall clock (03:30): a bulletin is late rather than lost. The
  check warns about it when it knows the zone;
- a time that happens twice on a fall-back day airs once, at its first instance;
- repeats (``repeat: {count: 3, gap: 15m}``) are spaced in elapsed time from the
  start, so a repeat across a change stays ``gap`` after the previous one.
"""

from __future__ import annotations

import calendar
import heapq
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from controller.config import json_schema as config_json_schema
from controller.fleet import ALL, TAG_PREFIX, Fleet
from controller.fleet import json_schema as fleet_json_schema
from controller.folding import fold
from controller.holidays import EVERY_HOLIDAY, HolidayCalendar
from controller.holidays import json_schema as holidays_json_schema
from protocol.config_errors import ConfigError, Problem
from protocol.durations import Duration
from protocol.l10n import N_, _
from protocol.messages import Level
from protocol.topics import check_id
from protocol.validation import suggest, validate
from protocol.yamlload import LocationMap, NodePath, load_yaml

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_SETS: dict[str, tuple[Weekday, ...]] = {
    "daily": WEEKDAYS,
    "workdays": WEEKDAYS[:5],
    "weekend": WEEKDAYS[5:],
}
MAX_REPEAT_SPAN = timedelta(hours=24)
# Later days' plays start no earlier than this before their local midnight (a DST
# change moves a wall clock by at most two hours).
_DAY_MARGIN = timedelta(hours=3)


# --- value types, as managers write them --------------------------------------------------


def _parse_time(value: Any) -> Any:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            _('{value} is a number, not a time: write HH:MM in quotes, e.g. "06:00"', value=value)
        )
    if not isinstance(value, str):
        return value  # pydantic says what type it expected
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", value)
    if not match:
        raise ValueError(
            _('{value!r} is not a time of day: write HH:MM, e.g. "06:00" or "17:30"', value=value)
        )
    hours, minutes = int(match[1]), int(match[2])
    if hours > 23 or minutes > 59:
        raise ValueError(_(
            "{value!r} is not a time of day: hours go from 00 to 23 and minutes from 00 to 59"
            ' (write "00:00" for midnight)', value=value,
        ))
    return time(hours, minutes)


_NOT_A_DATE = N_("{value!r} is not a date: write YYYY-MM-DD, e.g. 2026-05-01")


def _parse_date(value: Any) -> Any:
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise ValueError(_(_NOT_A_DATE, value=value))
    match = re.fullmatch(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*", value)
    if not match:
        raise ValueError(_(_NOT_A_DATE, value=value))
    year, month, day = int(match[1]), int(match[2]), int(match[3])
    if not 1 <= month <= 12:
        raise ValueError(
            _("{value!r} is not a date: there is no month {month}", value=value, month=month)
        )
    last = calendar.monthrange(year, month)[1]
    if not 1 <= day <= last:
        raise ValueError(_(
            "{value!r} is not a date: {month_name} {year} has {last} days", value=value,
            month_name=_(_MONTHS[month - 1]), year=year, last=last,
        ))
    return date(year, month, day)


_MONTHS = (
    N_("January"), N_("February"), N_("March"), N_("April"), N_("May"), N_("June"),
    N_("July"), N_("August"), N_("September"), N_("October"), N_("November"), N_("December"),
)


#: Vietnamese day names as people write them, folded (controller.folding.fold):
#: thứ hai / thứ 2 / T2 ... chủ nhật / CN.
_VI_DAYS: dict[str, Weekday] = {}
for _weekday, _word, _digit in zip(
    WEEKDAYS, ("hai", "ba", "tu", "nam", "sau", "bay"), "234567", strict=False
):
    _VI_DAYS.update({f"thu {_word}": _weekday, f"thu {_digit}": _weekday, f"t{_digit}": _weekday})
_VI_DAYS.update({"chu nhat": "sun", "cn": "sun"})
_VI_SETS: dict[str, tuple[Weekday, ...]] = {
    "hang ngay": DAY_SETS["daily"],
    "moi ngay": DAY_SETS["daily"],
    "ngay lam viec": DAY_SETS["workdays"],
    "cuoi tuan": DAY_SETS["weekend"],
}
_DAY_HELP = N_(
    "write daily, workdays (mon-fri), weekend (sat, sun), a list such as [mon, wed, fri] "
    "or [thứ hai, thứ tư, thứ sáu] (also T2 ... T7, CN), or a range such as T2-T6"
)


def _day(value: str) -> Weekday | None:
    """One day, in English (mon) or Vietnamese (thứ hai, thu 2, T2, chủ nhật, CN)."""
    word = value.strip().lower()
    if word in WEEKDAYS:
        return WEEKDAYS[WEEKDAYS.index(word)]
    return _VI_DAYS.get(fold(value))


#: How the Vietnamese names are shown in a "did you mean", by their folded form.
_VI_SHOWN = {
    fold(name): name
    for name in (
        "thứ hai", "thứ ba", "thứ tư", "thứ năm", "thứ sáu", "thứ bảy", "chủ nhật",
        "T2", "T3", "T4", "T5", "T6", "T7", "CN", "hằng ngày", "ngày làm việc", "cuối tuần",
    )
}


def _not_a_day(value: str) -> ValueError:
    close = suggest(fold(value), [*DAY_SETS, *WEEKDAYS, *_VI_SHOWN])
    close = _VI_SHOWN.get(close, close) if close else None
    hint = _("did you mean {close!r}? ", close=close) if close else ""
    return ValueError(
        _("{value!r} is not a day: {hint}{help}", value=value, hint=hint, help=_(_DAY_HELP))
    )


def _day_item(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # pydantic says what type it expected
    day = _day(value)
    if day is None:
        raise _not_a_day(value)
    return day


def _day_range(value: str) -> tuple[Weekday, ...] | None:
    """T2-T6, thứ hai - thứ sáu, thứ hai đến thứ sáu, mon-fri: the days from one to the other."""
    parts = re.split(r"\s*-\s*|\s+(?:đến|den|to)\s+", value.strip(), maxsplit=1)
    if len(parts) != 2:
        return None
    first, last = _day(parts[0]), _day(parts[1])
    if first is None or last is None:
        return None
    i, j = WEEKDAYS.index(first), WEEKDAYS.index(last)
    return WEEKDAYS[i:j + 1] if i <= j else (*WEEKDAYS[i:], *WEEKDAYS[:j + 1])


def _parse_weekdays(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in DAY_SETS:
            return DAY_SETS[word]
        if fold(value) in _VI_SETS:
            return _VI_SETS[fold(value)]
        day = _day(value)
        if day is not None:
            return (day,)
        days = _day_range(value)
        if days is not None:
            return days
        raise _not_a_day(value)
    return value


def _sorted_days(days: tuple[Weekday, ...] | None) -> tuple[Weekday, ...] | None:
    if days is None:
        return None
    if not days:
        raise ValueError(_("needs at least one day; leave the key out to mean every day"))
    return tuple(d for d in WEEKDAYS if d in days)


_TIME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$",
    "description": "local time of day, HH:MM",
    "examples": ["06:00", "17:30"],
}
_DATE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date",
    "description": "a local date, YYYY-MM-DD",
}
_WEEKDAYS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ],
    "default": "daily",
    "description": "daily, workdays (mon-fri), weekend (sat, sun), a list of days (mon ... "
    "sun, or thứ hai ... chủ nhật, T2 ... T7, CN), or a range such as T2-T6",
    "examples": ["daily", "workdays", ["mon", "wed", "fri"], ["thứ hai", "thứ năm"], "T2-T6"],
}

TimeOfDay = Annotated[time, BeforeValidator(_parse_time), WithJsonSchema(_TIME_SCHEMA)]
LocalDate = Annotated[date, BeforeValidator(_parse_date), WithJsonSchema(_DATE_SCHEMA)]
DayName = Annotated[Weekday, BeforeValidator(_day_item)]
Weekdays = Annotated[
    tuple[DayName, ...] | None,
    BeforeValidator(_parse_weekdays),
    AfterValidator(_sorted_days),
    WithJsonSchema(_WEEKDAYS_SCHEMA),
]


def _audio_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve against the playlist's directory and check the file is there, when loading."""
    context = info.context or {}
    base = context.get("base_dir")
    if base is None:
        return value
    path = value if value.is_absolute() else Path(os.path.normpath(Path(base) / value))
    if context.get("check_files", True) and not path.is_file():
        what = _("is a directory, not an audio file") if path.is_dir() else _("not found")
        raise ValueError(_(
            "audio file '{value}' {what} (looked for {path}); paths are relative to "
            "this playlist file's folder", value=value, what=what, path=path,
        ))
    return path


AudioPath = Annotated[
    Path,
    AfterValidator(_audio_path),
    WithJsonSchema({"type": "string", "description": "audio file, relative to this playlist"}),
]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _programme_id(value: str) -> str:
    return check_id(value, N_("programme id"))


def _target(value: str) -> str:
    """A node or cluster id, a statistics code, a name (checked against the fleet by
    the loader, controller.fleet.Fleet.lookup), tag:<tag> or all."""
    if value == ALL:
        return value
    if value.startswith(TAG_PREFIX):
        if not value.removeprefix(TAG_PREFIX):
            raise ValueError(
                _("write the tag after '{prefix}', e.g. {prefix}cho", prefix=TAG_PREFIX)
            )
        return value
    if not value.strip():
        raise ValueError(_("an empty target: write a node or cluster id, a name, or all"))
    if len(value) > 200:
        raise ValueError(_("a target is at most 200 characters"))
    return value


Target = Annotated[str, AfterValidator(_target)]
_ONE_OR_MORE_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
}
Targets = Annotated[
    list[Target], BeforeValidator(_one_or_many), WithJsonSchema(_ONE_OR_MORE_SCHEMA)
]
Name = Annotated[str, Field(min_length=1, max_length=200)]


def _holiday_choice(value: Any) -> Any:
    """`holidays` (every holiday of the calendar), one holiday id, or a list of them."""
    if isinstance(value, str) and value.strip() != EVERY_HOLIDAY:
        return (value,)
    return value


def _holiday_ids(value: Any) -> Any:
    if isinstance(value, tuple):
        if not value:
            raise ValueError(
                _("name at least one holiday, or write holidays for all of them")
            )
        for item in value:
            check_id(item, N_("holiday id"))
    return value


HolidayChoice = Annotated[
    Literal["holidays"] | tuple[str, ...],
    BeforeValidator(_holiday_choice),
    AfterValidator(_holiday_ids),
    WithJsonSchema({
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ],
        "description": "holidays (every holiday of the holiday calendar), or holiday ids "
        "from it, e.g. [tet-nguyen-dan, gio-to-hung-vuong]",
        "examples": ["holidays", ["tet-nguyen-dan"]],
    }),
]


def _chosen(choice: str | tuple[str, ...]) -> tuple[str, ...] | None:
    """The holiday ids a choice names; None for every holiday."""
    return None if choice == EVERY_HOLIDAY else tuple(choice)


# --- models -------------------------------------------------------------------------------


class _Strict(BaseModel):
    # Field docstrings become descriptions in the JSON Schema (editor hover text).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _stream_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
        raise ValueError(_(
            "{value!r} is not a stream URL: write http://host[:port]/path (an Icecast "
            "mount, an MP3/AAC/Ogg stream, or an HLS .m3u8)", value=value,
        ))
    if len(value) > 500:
        raise ValueError(_("a stream URL is at most 500 characters"))
    return value


StreamUrl = Annotated[str, AfterValidator(_stream_url)]


def _live_duration(value: timedelta) -> timedelta:
    if not timedelta(minutes=1) <= value <= timedelta(hours=12):
        raise ValueError(_("a rebroadcast lasts 1m to 12h"))
    return value


class Rebroadcast(_Strict):
    """A station's stream carried live to the clusters (tiếp sóng) for `duration`."""

    url: StreamUrl
    """The stream: http(s)://... (Icecast mount, MP3/AAC/Ogg stream, HLS .m3u8)."""
    backups: Annotated[list[StreamUrl], BeforeValidator(_one_or_many), Field(max_length=8)] = []
    """Streams tried in order when the one before stalls or fails."""
    duration: Annotated[Duration, AfterValidator(_live_duration)]
    """How long the rebroadcast airs (1m to 12h)."""
    fallback: AudioPath | None = None
    """A file aired once when no stream works; silence (and new tries) if left out."""

    def inputs(self) -> list[str]:
        return [self.url, *self.backups]


class Bulletin(_Strict):
    """One bulletin (bản tin): its audio files in order, between optional chimes; or a
    rebroadcast of a station's stream."""

    title: Name | None = None
    """What the bulletin is called in reports; the programme's name if left out."""
    files: Annotated[
        list[AudioPath],
        BeforeValidator(_one_or_many),
        Field(max_length=32),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            }
        ),
    ] = []
    """Audio files played in order, relative to this playlist file (not with rebroadcast)."""
    rebroadcast: Rebroadcast | None = None
    """A station's stream carried live instead of files."""
    intro: AudioPath | None = None
    """A chime played before the files."""
    outro: AudioPath | None = None
    """A chime played after the files."""
    volume: Annotated[int, Field(ge=0, le=100)] | None = None
    """Volume 0-100; the cluster's own setting if left out."""

    @model_validator(mode="after")
    def _files_or_rebroadcast(self) -> Bulletin:
        if self.rebroadcast is None and not self.files:
            raise ValueError(_("a bulletin needs files (audio to play) or a rebroadcast"))
        if self.rebroadcast is not None and (self.files or self.intro or self.outro):
            raise ValueError(_(
                "a rebroadcast bulletin has no files, intro or outro: put the chimes in a "
                "programme of their own, just before"
            ))
        return self

    def audio(self) -> list[Path]:
        """Every file this bulletin plays, in order: intro, files, outro."""
        return [
            *([self.intro] if self.intro else []),
            *self.files,
            *([self.outro] if self.outro else []),
        ]


class Repeat(_Strict):
    """Air each scheduled start `count` times, `gap` apart (start to start)."""

    count: Annotated[int, Field(ge=1, le=24)]
    """How many times in all (2: once more after the first)."""
    gap: Annotated[Duration, Field(json_schema_extra={"default": "0s"})] = timedelta(0)
    """From the start of one airing to the start of the next, e.g. 15m."""

    @model_validator(mode="after")
    def _fits_a_day(self) -> Repeat:
        if self.count > 1 and self.gap <= timedelta(0):
            raise ValueError(_("gap: write the time between two airings, e.g. gap: 15m"))
        if (self.count - 1) * self.gap >= MAX_REPEAT_SPAN:
            raise ValueError(_(
                "{count} airings {gap} apart span a day or more; use the "
                "schedule's times for that", count=self.count, gap=self.gap,
            ))
        return self


class Schedule(_Strict):
    """When a programme airs, in local civil time."""

    times: Annotated[list[TimeOfDay], Field(min_length=1, max_length=96)]
    """Local times of day, "HH:MM" in quotes."""
    weekdays: Annotated[Weekdays, Field(json_schema_extra={"default": "daily"})] = None
    """daily (the default), workdays, weekend, a list of mon ... sun or thứ hai ... chủ nhật
    (T2 ... T7, CN), or a range such as T2-T6."""
    dates: list[LocalDate] = []
    """Air on these dates only (instead of weekdays)."""
    every_weeks: Annotated[int, Field(ge=1, le=52)] | None = None
    """Air every N weeks (weeks run Monday to Sunday); needs `from`."""
    from_: LocalDate | None = Field(None, alias="from", validate_default=True)
    """For every_weeks: a date in a week it airs; weeks are counted from there."""
    valid_from: LocalDate | None = None
    """First date it airs (inclusive)."""
    valid_until: LocalDate | None = None
    """Last date it airs (inclusive)."""
    except_: list[LocalDate] = Field([], alias="except")
    """Dates it does not air."""
    skip: HolidayChoice | None = None
    """Holidays it does not air on: holidays (all of the holiday calendar's) or their ids,
    e.g. [tet-nguyen-dan]."""
    on_holidays: HolidayChoice | None = None
    """Air on these holidays' days only (instead of weekdays or dates): holidays (any of
    them) or their ids, e.g. [tet-nguyen-dan]."""
    repeat: Repeat | None = None
    """Air each start several times: {count: 3, gap: 15m}."""

    @field_validator("times")
    @classmethod
    def _distinct_times(cls, times: list[time]) -> list[time]:
        seen: set[time] = set()
        for t in times:
            if t in seen:
                raise ValueError(_("{t:%H:%M} is listed twice", t=t))
            seen.add(t)
        return sorted(times)

    @field_validator("dates")
    @classmethod
    def _dates_alone(cls, dates: list[date], info: ValidationInfo) -> list[date]:
        if dates and info.data.get("weekdays") is not None:
            raise ValueError(_("write either dates or weekdays, not both"))
        if dates and info.data.get("every_weeks") is not None:
            raise ValueError(_("write either dates or every_weeks, not both"))
        return sorted(set(dates))

    _calendar: HolidayCalendar = PrivateAttr(default_factory=HolidayCalendar)

    @field_validator("on_holidays")
    @classmethod
    def _holidays_alone(
        cls, chosen: str | tuple[str, ...] | None, info: ValidationInfo
    ) -> str | tuple[str, ...] | None:
        if chosen is None:
            return chosen
        for other in ("weekdays", "dates", "every_weeks"):
            if info.data.get(other):
                raise ValueError(_("write either on_holidays or {other}, not both", other=other))
        return chosen

    @field_validator("from_")
    @classmethod
    def _anchor(cls, anchor: date | None, info: ValidationInfo) -> date | None:
        if "every_weeks" not in info.data:
            return anchor  # every_weeks itself is wrong, and reported
        every = info.data["every_weeks"]
        if anchor is None and every is not None and every > 1:
            raise ValueError(_(
                "every_weeks: {every} needs `from: YYYY-MM-DD`, a date in the first week it "
                "airs", every=every,
            ))
        if anchor is not None and (every is None or every == 1):
            raise ValueError(_("`from` only counts weeks for every_weeks: 2 or more"))
        return anchor

    @field_validator("valid_until")
    @classmethod
    def _after_start(cls, until: date | None, info: ValidationInfo) -> date | None:
        start = info.data.get("valid_from")
        if until is not None and start is not None and until < start:
            raise ValueError(_("{until} is before valid_from ({start})", until=until, start=start))
        return until

    @property
    def days(self) -> tuple[Weekday, ...]:
        return self.weekdays if self.weekdays is not None else WEEKDAYS

    @property
    def span(self) -> timedelta:
        """From the first to the last airing of one scheduled start (repeats)."""
        return (self.repeat.count - 1) * self.repeat.gap if self.repeat else timedelta(0)

    def airs_on(self, day: date) -> bool:
        """Whether the schedule airs on this local date."""
        if (self.valid_from and day < self.valid_from) or (
            self.valid_until and day > self.valid_until
        ):
            return False
        if day in self.except_:
            return False
        if self.skip is not None and self._calendar.covers(day, _chosen(self.skip)):
            return False
        if self.on_holidays is not None:
            return self._calendar.covers(day, _chosen(self.on_holidays))
        if self.dates:
            return day in self.dates
        if WEEKDAYS[day.weekday()] not in self.days:
            return False
        if self.every_weeks and self.every_weeks > 1 and self.from_ is not None:
            weeks = (_monday(day) - _monday(self.from_)).days // 7
            return weeks % self.every_weeks == 0
        return True

    def first_day(self) -> date | None:
        """The first local date it can air, if bounded."""
        return self.dates[0] if self.dates else self.valid_from

    def last_day(self) -> date | None:
        """The last local date it can air, if bounded."""
        if self.dates:
            last = self.dates[-1]
            return min(last, self.valid_until) if self.valid_until else last
        return self.valid_until

    def air_days(self, first: date, last: date) -> Iterator[date]:
        """The local dates in [first, last] it airs on."""
        if self.dates:
            yield from (d for d in self.dates if first <= d <= last and self.airs_on(d))
            return
        day = first
        while day <= last:
            if self.airs_on(day):
                yield day
            day += timedelta(days=1)

    def occurrences(self, start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[datetime]:
        """Every airing in [start, end), as aware UTC datetimes, in order, repeats included."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("occurrences needs timezone-aware start and end")
        first = (start - self.span).astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date() + timedelta(days=1)
        bounded_first, bounded_last = self.first_day(), self.last_day()
        if bounded_first is not None:
            first = max(first, bounded_first)
        if bounded_last is not None:
            last = min(last, bounded_last)
        count = self.repeat.count if self.repeat else 1
        gap = self.repeat.gap if self.repeat else timedelta(0)
        pending: list[datetime] = []
        previous: datetime | None = None
        for day in self.air_days(first, last):
            for t in self.times:
                base = local_to_utc(day, t, tz)
                for k in range(count):
                    heapq.heappush(pending, base + k * gap)
            bound = local_to_utc(day + timedelta(days=1), time(0), tz) - _DAY_MARGIN
            while pending and pending[0] < bound:
                when = heapq.heappop(pending)
                if when >= end:
                    return
                if when >= start and when != previous:
                    previous = when
                    yield when
        while pending:
            when = heapq.heappop(pending)
            if when >= end:
                return
            if when >= start and when != previous:
                previous = when
                yield when


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def local_to_utc(day: date, at: time, tz: ZoneInfo) -> datetime:
    """A local wall-clock time as UTC; see the module docstring for DST gaps and folds."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def local_time_note(day: date, at: time, tz: ZoneInfo) -> str | None:
    """Why a local time is special on that day in that zone (DST), or None."""
    local = datetime.combine(day, at, tzinfo=tz)
    back = local.astimezone(UTC).astimezone(tz)
    if back.replace(tzinfo=None) != local.replace(tzinfo=None):
        return _(
            "{at:%H:%M} does not exist on {day} in {tz} (clocks go forward); "
            "it airs at {back:%H:%M} that day", at=at, day=day, tz=tz.key, back=back,
        )
    other = local.replace(fold=1)
    if other.utcoffset() != local.utcoffset():
        return _(
            "{at:%H:%M} happens twice on {day} in {tz} (clocks go back); "
            "it airs once, at the first", at=at, day=day, tz=tz.key,
        )
    return None


@dataclass(frozen=True)
class Source:
    """Where a programme is written: file and 1-based line of its entry."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Programme(_Strict):
    """A programme (chương trình): bulletins, a schedule and the clusters it airs on."""

    id: Annotated[str, AfterValidator(_programme_id)]
    """Unique across all playlists: letters, digits, '.', '_' or '-', no spaces."""
    name: Name
    """The programme's name, as listeners and reports know it."""
    level: Level = "normal"
    """normal, priority (ahead of normal programmes) or emergency (interrupts all)."""
    bulletins: Annotated[list[Bulletin], Field(min_length=1, max_length=64)]
    """The bulletins aired one after the other at each scheduled time."""
    schedule: Schedule
    """When it airs."""
    targets: Annotated[Targets, Field(min_length=1)]
    """Where it airs: node or cluster ids, statistics codes or names from the fleet (Xã Tân
    Bình, with or without marks), tag:<tag>, or all."""
    exclude: Targets = []
    """Clusters to leave out of the targets: ids, tag:<tag>."""
    lateness: Annotated[
        Duration,
        Field(ge=timedelta(0), le=timedelta(hours=24), json_schema_extra={"default": "10m"}),
    ] = timedelta(minutes=10)
    """How late a play may still start (90s, 10m, 1h); later, it is recorded as missed."""
    requires_approval: bool = False
    """Whether each airing must be approved before it is sent."""
    replay_if_interrupted: bool = False
    """Whether a play interrupted by a higher level is aired again afterwards."""

    _source: Source = PrivateAttr(default=Source("<not from a file>", 0))

    @model_validator(mode="after")
    def _rebroadcast_alone(self) -> Programme:
        if len(self.bulletins) > 1 and any(b.rebroadcast for b in self.bulletins):
            raise ValueError(_(
                "a programme with a rebroadcast has that one bulletin: put other bulletins "
                "in a programme of their own"
            ))
        return self

    @property
    def source(self) -> Source:
        return self._source

    def rebroadcast(self) -> Rebroadcast | None:
        """The stream this programme carries live, if it is a rebroadcast."""
        return self.bulletins[0].rebroadcast

    def occurrences(self, start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[datetime]:
        """Every airing in [start, end), aware UTC datetimes, in order, repeats included."""
        return self.schedule.occurrences(start, end, tz)

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime | None:
        """The first airing strictly after `after`, or None if it never airs again."""
        if after.tzinfo is None:
            raise ValueError("next_after needs a timezone-aware time")
        start = after
        first = self.schedule.first_day()
        if first is not None:
            start = max(start, local_to_utc(first, time(0), tz) - _DAY_MARGIN)
        last = self.schedule.last_day()
        if last is not None:
            end = local_to_utc(last + timedelta(days=2), time(0), tz) + self.schedule.span
        else:  # every_weeks is at most 52, so any open schedule airs within 53 weeks
            end = start + timedelta(weeks=53, days=2)
        for when in self.occurrences(start, end, tz):
            if when > after:
                return when
        return None


class PlaylistFile(_Strict):
    """One playlist file (danh sách phát)."""

    programmes: list[Programme] = []
    """The programmes of this playlist."""


# --- schemas ------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """JSON Schema of a playlist file, for editors (yaml-language-server)."""
    schema = PlaylistFile.model_json_schema()
    schema["title"] = "Loa playlist"
    return schema


def write_schemas(directory: Path) -> list[Path]:
    """Write playlist, fleet and controller-config JSON Schemas into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in (
        ("playlist", json_schema()),
        ("fleet", fleet_json_schema()),
        ("controller", config_json_schema()),
        ("holidays", holidays_json_schema()),
    ):
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


# --- loading ------------------------------------------------------------------------------


@dataclass
class Playlists:
    """Every programme of every playlist file, by id (unique across files)."""

    programmes: dict[str, Programme]
    files: list[Path]
    warnings: list[Problem] = field(default_factory=list)
    holidays: HolidayCalendar | None = None


def playlist_files(paths: Iterable[Path]) -> tuple[list[Path], list[Problem]]:
    """The playlist files named by paths: files as given, directories' *.yaml and *.yml."""
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not found:
                problems.append(
                    Problem(str(path), 1, 1, _("no playlist files (*.yaml) in this folder"),
                            "warning")
                )
            files.extend(p for p in found if p.is_file())
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), 1, 1, _("playlist file or folder not found")))
    return files, problems


def _raw_programmes(data: Any) -> list[tuple[int, dict[str, Any]]]:
    """The programme entries as written, whatever else is wrong with them."""
    programmes = data.get("programmes") if isinstance(data, dict) else None
    if not isinstance(programmes, list):
        return []
    return [(i, p) for i, p in enumerate(programmes) if isinstance(p, dict)]


def _well_formed_target(value: Any) -> bool:
    try:
        _target(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return isinstance(value, str)


class _Checker:
    """Checks what the models cannot know alone: targets, duplicate ids, DST, expiry.

    Ids and targets are checked on what was written, so they are reported even in a
    programme with other errors; the warnings need a valid programme.
    """

    def __init__(
        self,
        fleet: Fleet,
        tz: ZoneInfo | None,
        today: date | None,
        holidays: HolidayCalendar | None = None,
    ) -> None:
        self.fleet = fleet
        self.holidays = holidays
        self.tz = tz
        self.today = today
        self.sources: dict[str, Source] = {}
        self.programmes: dict[str, Programme] = {}
        self.problems: list[Problem] = []

    def written(self, raw: dict[str, Any], path: NodePath, where: LocationMap) -> None:
        ident = raw.get("id")
        if isinstance(ident, str):
            earlier = self.sources.get(ident)
            if earlier is not None:
                self.problems.append(
                    where.problem(
                        (*path, "id"),
                        _("programme id {ident!r} is already used at {earlier}; "
                          "give this programme its own id", ident=ident, earlier=earlier),
                    )
                )
            else:
                self.sources[ident] = Source(where.file, where.value(path).line)
        for key in ("targets", "exclude"):
            items = _one_or_many(raw.get(key))
            if not isinstance(items, list):
                continue
            for i, target in enumerate(items):
                message = self.fleet.target_problem(target) if _well_formed_target(target) else None
                if message:
                    self.problems.append(where.problem((*path, key, i), f"{key}: {message}"))
        schedule = raw.get("schedule")
        if isinstance(schedule, dict):
            for key in ("skip", "on_holidays"):
                self._holidays_named(schedule.get(key), (*path, "schedule", key), where)

    def _holidays_named(self, value: Any, path: NodePath, where: LocationMap) -> None:
        """Holidays a schedule names must be in the holiday calendar."""
        if value is None:
            return
        key = path[-1]
        if self.holidays is None:
            self.problems.append(where.problem(
                path,
                _("{key}: there is no holiday calendar to take the holidays from: load the "
                  "playlists with one (`holidays: holidays.yaml` in the controller config; an "
                  "example is config/holidays.yaml)", key=key),
            ))
            return
        items = _holiday_choice(value)
        if not isinstance(items, (list, tuple)):
            return  # `holidays`, or a wrong type the model reports
        for i, ident in enumerate(items):
            if isinstance(ident, str) and ident not in self.holidays.holidays:
                close = suggest(ident, self.holidays.holidays)
                hint = _("did you mean {close!r}? ", close=close) if close else ""
                known = ", ".join(self.holidays.holidays) or _("none")
                at = (*path, i) if isinstance(value, list) else path
                self.problems.append(where.problem(
                    at,
                    _("{key}: {ident!r} is not in the holiday calendar {file}: "
                      "{hint}its holidays are {known}", key=key, ident=ident,
                      file=self.holidays.file, hint=hint, known=known),
                ))

    def add(self, programme: Programme, path: NodePath, where: LocationMap) -> None:
        programme._source = Source(where.file, where.value(path).line)
        if self.holidays is not None:
            programme.schedule._calendar = self.holidays
        if programme.id in self.programmes:
            return  # a duplicate id, reported by written()
        self.programmes[programme.id] = programme
        names = [*programme.targets, *programme.exclude]
        if all(self.fleet.target_problem(t) is None for t in names) and not self.fleet.resolve(
            programme.targets, programme.exclude
        ):
            self.problems.append(
                where.problem(
                    (*path, "targets"),
                    _("these targets, less exclude, contain no cluster: it would air nowhere"),
                    severity="warning",
                )
            )
        self._dates(programme, path, where)

    def _dates(self, programme: Programme, path: NodePath, where: LocationMap) -> None:
        if self.today is None:
            return
        schedule = programme.schedule
        last = schedule.last_day()
        if last is not None and last < self.today:
            self.problems.append(
                where.problem(
                    (*path, "schedule"),
                    _("this schedule ended on {last}; it will not air again", last=last),
                    severity="warning",
                )
            )
            return
        if self.tz is None:
            return
        first = max(self.today, schedule.first_day() or self.today)
        horizon = min(first + timedelta(days=366), last or date.max)
        noted: set[int] = set()
        for day in schedule.air_days(first, horizon):
            for i, t in enumerate(schedule.times):
                note = None if i in noted else local_time_note(day, t, self.tz)
                if note:
                    noted.add(i)
                    self.problems.append(
                        where.problem((*path, "schedule", "times", i), note, severity="warning")
                    )


def load_playlists(
    paths: Iterable[Path],
    fleet: Fleet,
    *,
    tz: ZoneInfo | None = None,
    today: date | None = None,
    holidays: HolidayCalendar | None = None,
) -> Playlists:
    """Load every playlist file; raise ConfigError listing every error of every file.

    paths may be files or folders (their *.yaml and *.yml files). Audio paths are
    resolved against each playlist file's folder and must exist. With tz and today,
    warnings also name times that DST moves and schedules that have ended; warnings
    never stop loading (they are in Playlists.warnings). holidays: the holiday calendar
    that `skip:` and `on_holidays:` name (none: a schedule naming holidays is an error).
    """
    files, problems = playlist_files(paths)
    checker = _Checker(fleet, tz, today, holidays)
    for file in files:
        try:
            data, where = load_yaml(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        for i, raw in _raw_programmes(data):
            checker.written(raw, ("programmes", i), where)
        context = {"base_dir": file.resolve().parent, "check_files": True}
        parsed = validate(PlaylistFile, data, where, context=context)
        if isinstance(parsed, list):
            problems.extend(parsed)
            continue
        for i, programme in enumerate(parsed.programmes):
            checker.add(programme, ("programmes", i), where)
    problems.extend(checker.problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(problems)
    return Playlists(
        programmes=checker.programmes,
        files=files,
        warnings=sorted(problems, key=lambda p: (p.file, p.line, p.col)),
        holidays=holidays,
    )
