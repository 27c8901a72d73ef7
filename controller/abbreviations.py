"""The abbreviation dictionary read out before speech: UBND -> ủy ban nhân dân.

Loa ships a dictionary (controller/data/abbreviations.yaml) of what every official
writes; a province extends it, or reads an entry differently, with files of the same
form named in the controller config (``speech.abbreviations``)::

    abbreviations:
      BCH: ban chấp hành      # the province's reading replaces the shipped one
      HTX NN: hợp tác xã nông nghiệp   # an error: no spaces in an abbreviation

Every problem in such a file is reported at its file:line:col, all at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from protocol.config_errors import ConfigError, Problem
from protocol.yamlload import LocationMap, load_yaml, load_yaml_text

MAX_KEY = 20
MAX_WORDS = 200
_KEY = re.compile(r"[^\s]{1,20}")


@dataclass(frozen=True)
class Abbreviations:
    """Abbreviations and how each is read; later files override earlier ones."""

    entries: Mapping[str, str] = field(default_factory=dict)
    #: Where each entry was last written (file:line), for `loa-controller say` and check.
    sources: Mapping[str, str] = field(default_factory=dict)

    def merged(self, other: Abbreviations) -> Abbreviations:
        return Abbreviations(
            {**self.entries, **other.entries}, {**self.sources, **other.sources}
        )


def _check_key(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"{key!r} is not text: write the abbreviation in quotes, e.g. \"{key}\": ..."
    if not _KEY.fullmatch(key):
        if not key.strip():
            return "an abbreviation cannot be empty"
        if len(key) > MAX_KEY:
            return f"{key!r} is longer than {MAX_KEY} characters"
        return f"{key!r} has a space: an abbreviation is one word as written (UBND, TP.)"
    if not any(c.isalpha() for c in key):
        return f"{key!r} has no letter: numbers are read by the number rules"
    return None


def _check_words(key: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"{key}: write how it is read, in words, after the colon (UBND: ủy ban nhân dân)"
    if len(value) > MAX_WORDS:
        return f"{key}: at most {MAX_WORDS} characters"
    if any(c.isdigit() for c in value):
        return f"{key}: write numbers in words ({value!r})"
    return None


def parse(data: Any, where: LocationMap) -> Abbreviations:
    """The abbreviations of one loaded file; ConfigError lists every problem in it."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ConfigError(
            [where.problem((), "write `abbreviations:` and under it one `ABBR: words` a line")]
        )
    for key in data:
        if key != "abbreviations":
            problems.append(where.problem(
                (key,), f"unknown key {key!r}; the file holds only `abbreviations:`", at_key=True
            ))
    table = data.get("abbreviations")
    if not isinstance(table, dict):
        problems.append(where.problem(
            ("abbreviations",),
            "`abbreviations:` needs entries under it, one `ABBR: words` a line",
        ))
        raise ConfigError(problems)
    entries: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key, value in table.items():
        path = ("abbreviations", key)
        wrong = _check_key(key)
        if wrong:
            problems.append(where.problem(path, wrong, at_key=True))
            continue
        wrong = _check_words(key, value)
        if wrong:
            problems.append(where.problem(path, wrong))
            continue
        entries[key] = " ".join(value.split())
        sources[key] = f"{where.file}:{where.key(path).line}"
    if problems:
        raise ConfigError(problems)
    return Abbreviations(entries, sources)


def shipped() -> Abbreviations:
    """The dictionary Loa ships."""
    text = resources.files("controller").joinpath("data/abbreviations.yaml").read_text(
        encoding="utf-8"
    )
    data, where = load_yaml_text(text, "controller/data/abbreviations.yaml")
    return parse(data, where)


def load_abbreviations(path: Path) -> Abbreviations:
    """One province file; ConfigError (file:line:col) for every problem in it."""
    data, where = load_yaml(path)
    return parse(data, where)


def dictionary(paths: Iterable[Path] = ()) -> Abbreviations:
    """The shipped dictionary, then each province file in turn; every file's problems."""
    found = shipped()
    problems: list[Problem] = []
    for path in paths:
        try:
            found = found.merged(load_abbreviations(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return found
