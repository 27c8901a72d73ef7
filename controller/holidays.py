"""The holiday calendar (lịch nghỉ lễ): days off that programmes skip or air on.

One file for the province, named by ``holidays:`` in the controller config
(config/holidays.yaml without a config file). When the config names none, the national
public holidays shipped with Loa are used (controller/data/holidays.yaml, the same as
the example)::

    # yaml-language-server: $schema=../docs/schema/holidays.schema.json
    holidays:
      - id: tet-duong-lich
        name: Tết Dương lịch
        date: "1/1"              # day/month, every year (solar calendar)
      - id: tet-nguyen-dan
        name: Tết Nguyên Đán
        lunar: "1/1"             # day/month of the lunar calendar (âm lịch), every year
        before: 1                # also the day before (30 Tết)
        after: 3                 # and the three days after (mùng 2 to mùng 4)
      - id: gio-to-hung-vuong
        name: Giỗ Tổ Hùng Vương
        lunar: "10/3"
      - id: nghi-bu-2027
        name: Nghỉ bù Quốc khánh
        date: 2027-09-03         # one date, one year

A playlist's schedule names them: ``skip: holidays`` (every holiday of the calendar) or
``skip: [tet-nguyen-dan]`` leaves those days out; ``on_holidays: [tet-nguyen-dan]`` airs
on those days only (controller.playlist.Schedule).

Lunar dates are those of the Vietnamese calendar, computed for Vietnam's time zone
(UTC+7) by Hồ Ngọc Đức's algorithm (the `lunar-vn` package). It is not the Chinese
calendar (UTC+8): the two put a new moon on different days now and then, so Tết 1985
was on 21 January in Vietnam and 20 February in China, and Tết 2007 on 17 and 18
February. A lunar day 30 in a year whose month has 29 days falls on the 29th, the last
day of that month (as 30 Tết does in such a year). Lunar dates are known for the years
1900 to 2100.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

import lunar_vn
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from protocol.config_errors import ConfigError, Problem
from protocol.l10n import N_, _
from protocol.topics import check_id
from protocol.validation import validate
from protocol.yamlload import load_yaml

#: Vietnam's civil time, hours east of UTC: the meridian the lunar calendar is drawn for.
VIETNAM_UTC_OFFSET_H = 7.0
#: The national public holidays (Labour Code 2019, Article 112), when no file is named.
BUILTIN_HOLIDAYS = Path(__file__).resolve().parent / "data" / "holidays.yaml"
#: What `skip:` and `on_holidays:` say to mean every holiday of the calendar.
EVERY_HOLIDAY = "holidays"
MAX_SPAN_DAYS = 15


def _day_month(value: Any, *, lunar: bool) -> tuple[int, int]:
    kind = _("lunar date") if lunar else _("date")
    example = _('"10/3" (the 10th day of the 3rd lunar month)') if lunar else '"30/4", "2/9"'
    if not isinstance(value, str):
        raise ValueError(_(
            "{value!r} is not a {kind}: write day/month in quotes, e.g. {example}",
            value=value, kind=kind, example=example,
        ))
    match = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{1,2})\s*", value)
    if not match:
        raise ValueError(_(
            "{value!r} is not a {kind}: write day/month, e.g. {example}",
            value=value, kind=kind, example=example,
        ))
    day, month = int(match[1]), int(match[2])
    if not 1 <= month <= 12:
        raise ValueError(_(
            "{value!r}: there is no month {month} (write day/month, e.g. {example})",
            value=value, month=month, example=example,
        ))
    longest = 30 if lunar else (29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31)
    if not 1 <= day <= longest:
        raise ValueError(_(
            "{value!r}: month {month} has at most {longest} days (write day/month)",
            value=value, month=month, longest=longest,
        ))
    return day, month


_PYTHON_DATE_ERRORS = (N_("day is out of range for month"), N_("month must be in 1..12"))


def _solar(value: Any) -> Any:
    """"30/4" (every year) or "2027-09-03" (that date only)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d{4}-\d{1,2}-\d{1,2}\s*", value):
        year, month, day = (int(part) for part in value.strip().split("-"))
        try:
            return date(year, month, day)
        except ValueError as exc:
            # Python's own words, translated where the catalog knows them.
            reason = _(str(exc)) if str(exc) in _PYTHON_DATE_ERRORS else str(exc)
            raise ValueError(
                _("{value!r} is not a date: {reason}", value=value, reason=reason)
            ) from None
    return _day_month(value, lunar=False)


def _lunar(value: Any) -> Any:
    return _day_month(value, lunar=True)


def _holiday_id(value: str) -> str:
    if value == EVERY_HOLIDAY:
        raise ValueError(_(
            "{every!r} means every holiday in a playlist: choose another id", every=EVERY_HOLIDAY
        ))
    return check_id(value, N_("holiday id"))


def _check_solar(value: str) -> str:
    _solar(value)
    return value


def _check_lunar(value: str) -> str:
    _lunar(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Holiday(_Strict):
    """One holiday: a solar or a lunar date, with the days around it that are off too."""

    id: Annotated[str, AfterValidator(_holiday_id)]
    """What playlists call it (skip: [tet-nguyen-dan]): letters, digits, '.', '_', '-'."""
    name: Annotated[str, Field(min_length=1, max_length=200)]
    """Its name, as people know it."""
    date: Annotated[
        str, AfterValidator(_check_solar), Field(examples=["30/4", "2027-09-03"])
    ] | None = None
    """A solar date: "day/month" every year ("30/4"), or YYYY-MM-DD for one year only."""
    lunar: Annotated[
        str, AfterValidator(_check_lunar), Field(examples=["1/1", "10/3"])
    ] | None = None
    """A lunar date (âm lịch), "day/month", every year: "1/1" for Tết, "10/3" for Giỗ Tổ."""
    before: Annotated[int, Field(ge=0, le=MAX_SPAN_DAYS)] = 0
    """How many days before the date are off too (1 for 30 Tết)."""
    after: Annotated[int, Field(ge=0, le=MAX_SPAN_DAYS)] = 0
    """How many days after the date are off too."""

    @model_validator(mode="after")
    def _one_date(self) -> Holiday:
        if (self.date is None) == (self.lunar is None):
            raise ValueError(_(
                'write either date: (solar, "30/4") or lunar: (âm lịch, "10/3"), one of the two'
            ))
        return self

    def anchors(self, year: int) -> Iterator[dt.date]:
        """The holiday's own date(s) that can bring days off into the given solar year."""
        if self.date is not None:
            solar = _solar(self.date)
            if isinstance(solar, dt.date):
                yield solar
                return
            day, month = solar
            for y in (year - 1, year, year + 1):
                try:
                    yield dt.date(y, month, day)
                except ValueError:  # 29/2 in a common year
                    continue
            return
        assert self.lunar is not None
        day, month = _lunar(self.lunar)
        for y in (year - 1, year, year + 1):
            found = lunar_to_solar(day, month, y)
            if found is not None:
                yield found

    def days_in(self, year: int) -> Iterator[dt.date]:
        """Every day off this holiday gives in the solar year."""
        for anchor in self.anchors(year):
            for offset in range(-self.before, self.after + 1):
                day = anchor + timedelta(days=offset)
                if day.year == year:
                    yield day


class HolidayFile(_Strict):
    """The holiday calendar file (lịch nghỉ lễ)."""

    holidays: list[Holiday] = []
    """The province's holidays."""


def lunar_to_solar(day: int, month: int, year: int) -> date | None:
    """The solar date of a lunar day/month of a lunar year, in Vietnam's calendar (UTC+7).

    Day 30 of a 29-day month is its 29th. None outside the years the calendar is known.
    """
    for d in (day, day - 1) if day == 30 else (day,):
        try:
            found = lunar_vn.convert_lunar_to_solar(
                d, month, year, 0, time_zone=VIETNAM_UTC_OFFSET_H
            )
            back = lunar_vn.solar_to_lunar(found, time_zone=VIETNAM_UTC_OFFSET_H)
        except ValueError:
            return None
        if (back.day, back.month, back.year, back.leap) == (d, month, year, False):
            return found
    return None


@dataclass
class HolidayCalendar:
    """The holidays of one file, and which of them each day belongs to."""

    holidays: dict[str, Holiday] = field(default_factory=dict)
    file: str = "<no holiday calendar>"
    _years: dict[int, dict[date, frozenset[str]]] = field(default_factory=dict, repr=False)

    def year(self, year: int) -> dict[date, frozenset[str]]:
        """Every day off of a solar year, with the ids of the holidays it belongs to."""
        known = self._years.get(year)
        if known is None:
            days: dict[date, set[str]] = {}
            for holiday in self.holidays.values():
                for day in holiday.days_in(year):
                    days.setdefault(day, set()).add(holiday.id)
            known = {day: frozenset(ids) for day, ids in sorted(days.items())}
            self._years[year] = known
        return known

    def on(self, day: date) -> frozenset[str]:
        """The ids of the holidays the day belongs to (empty on a working day)."""
        return self.year(day.year).get(day, frozenset())

    def covers(self, day: date, ids: Iterable[str] | None) -> bool:
        """Whether the day belongs to one of these holidays (None: to any holiday)."""
        found = self.on(day)
        if ids is None:
            return bool(found)
        return any(i in found for i in ids)

    def between(self, first: date, last: date) -> list[tuple[date, frozenset[str]]]:
        """The days off in [first, last], in order."""
        out: list[tuple[date, frozenset[str]]] = []
        for year in range(first.year, last.year + 1):
            out.extend((d, ids) for d, ids in self.year(year).items() if first <= d <= last)
        return out


def json_schema() -> dict[str, Any]:
    """JSON Schema of the holiday file, for editors (yaml-language-server)."""
    schema = HolidayFile.model_json_schema()
    schema["title"] = "Loa holiday calendar"
    return schema


def load_holidays(path: Path) -> HolidayCalendar:
    """Load and check the holiday file; raise ConfigError listing every problem."""
    if not path.is_file():
        raise ConfigError([Problem(
            str(path), 1, 1,
            _("holiday calendar not found: create it (see config/holidays.yaml) or correct "
              "`holidays:` in the controller config"),
        )])
    data, where = load_yaml(path)
    parsed = validate(HolidayFile, data, where)
    if isinstance(parsed, list):
        raise ConfigError(parsed)
    problems: list[Problem] = []
    holidays: dict[str, Holiday] = {}
    for i, holiday in enumerate(parsed.holidays):
        if holiday.id in holidays:
            first = where.value(("holidays", [*holidays].index(holiday.id))).line
            problems.append(where.problem(
                ("holidays", i, "id"),
                _("holiday id {id!r} is already used at {file}:{first}; "
                  "give this holiday its own id", id=holiday.id, file=where.file, first=first),
            ))
            continue
        holidays[holiday.id] = holiday
    if problems:
        raise ConfigError(problems)
    return HolidayCalendar(holidays, str(path))
