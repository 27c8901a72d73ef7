"""Durations as managers write them: "90s", "10m", "2h", "1h30m".

A bare number is refused (is 10 seconds or minutes?), so every configuration file says
its unit. `Duration` is the pydantic type for such a field, with its JSON schema.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from protocol.l10n import _

_DURATION = re.compile(r"(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?")


def parse_duration(value: Any) -> Any:
    """ "90s", "10m", "2h", "1h30m" as a timedelta; other types are left to pydantic."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(_("{value} has no unit: write e.g. {value}s or {value}m", value=value))
    if not isinstance(value, str):
        return value
    match = _DURATION.fullmatch(value.strip())
    if not value.strip() or not match:
        raise ValueError(
            _("{value!r} is not a duration: write e.g. 90s, 10m, 2h or 1h30m", value=value)
        )
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


_DAYS = re.compile(r"\s*(\d+)\s*d\s*")


def parse_span(text: str) -> timedelta:
    """ "14d", "36h", "90m", "1h30m": a duration as a command-line option takes it, whole
    days allowed. Raises ValueError for anything else."""
    days = _DAYS.fullmatch(text)
    if days:
        return timedelta(days=int(days.group(1)))
    value = parse_duration(text)
    if not isinstance(value, timedelta):
        raise ValueError(_("{text!r} is not a duration", text=text))
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*(\d+\s*h)?\s*(\d+\s*m)?\s*(\d+\s*s)?\s*$",
            "description": "a duration: 90s, 10m, 2h, 1h30m",
            "examples": ["10m", "1h30m"],
        }
    ),
]
