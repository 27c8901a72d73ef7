"""The words both programs say to people, in English or Vietnamese: message catalogs.

English is the code's language: a message is written in English where it is said, and
that text is its id (gettext's msgid). The Vietnamese is in protocol/locale/vi.po, a
standard gettext catalog (Poedit and msgfmt read it), shipped as package data and read
as it is: no compiled .mo, no build step, so a fresh clone, an editable install and a
wheel all speak the same (the agent stays free of Babel).

- ``_(msgid, **values)``: the message in the process's language, its ``{placeholders}``
  filled in. A command line picks the language once (`use`, from ``--lang`` or the
  locale: LANGUAGE, LC_ALL, LC_MESSAGES, LANG, as gettext reads them).
- ``Text(msgid, **values)``: a message translated when it is shown, for what several
  readers in different languages see (an error the web app shows in the page's language
  and the CLI in the locale's): ``str()`` is the process's language, ``in_(lang)`` any.
  Exceptions users read carry one as their message (`say`). A value may be a Text
  itself, or a `When`: a time written as the reader writes it.
- ``N_(msgid)``: marks a msgid for the catalog where it is written, translated later
  (``_(value)`` or ``Text(value)``).

tests/test_l10n.py reads every ``_``, ``N_`` and ``Text`` call with a literal msgid in
the sources and checks that the catalog has it, translated, with the same placeholders.
Log lines stay English (operators grep them and the docs quote them).
"""

from __future__ import annotations

import argparse
import os
import re
import string
from collections.abc import Mapping
from datetime import datetime, tzinfo
from functools import cache
from pathlib import Path
from typing import Any, Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")
CATALOGS = Path(__file__).resolve().parent / "locale"
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

class _Process:
    """The process's language (English until a command line's main says otherwise)."""

    lang: Lang = "en"


def use(lang: Lang) -> None:
    """Set the process's language (a command line's main, once)."""
    _Process.lang = lang


def current() -> Lang:
    return _Process.lang


def lang_of(value: str | None) -> Lang | None:
    """'vi' or 'en' for a language or locale name (vi, vi_VN.UTF-8, en_US, C), None if
    it names neither."""
    if not value:
        return None
    name = value.strip().lower()
    if name.startswith("vi"):
        return "vi"
    if name.startswith("en") or name in ("c", "posix") or name.startswith("c."):
        return "en"
    return None


def lang_from_env(env: Mapping[str, str] | None = None) -> Lang:
    """The language the locale asks for, as gettext reads it: the first of LANGUAGE (a
    colon-separated list), LC_ALL, LC_MESSAGES, LANG that is set; English otherwise."""
    env = os.environ if env is None else env
    for variable in LOCALE_VARIABLES:
        value = env.get(variable, "")
        if not value:
            continue
        if variable == "LANGUAGE":
            for part in value.split(":"):
                found = lang_of(part)
                if found is not None:
                    return found
            continue
        return lang_of(value) or "en"
    return "en"


def choose(asked: str | None, env: Mapping[str, str] | None = None) -> Lang:
    """The language of a command line: --lang if given, else the locale's."""
    return lang_of(asked) or lang_from_env(env)


def add_lang_option(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    """--lang vi|en on a command line: on the program (top) and on each of its commands,
    however deep (theirs set it only when given, so `prog --lang vi cmd` and
    `prog cmd --lang vi` both work)."""
    parser.add_argument(
        "--lang", choices=LANGS, default=None if top else argparse.SUPPRESS,
        help="the language of the output and errors: vi or en (default: the locale's: "
             "LC_ALL, LC_MESSAGES, LANG)",
    )
    for action in parser._actions:  # argparse lists a parser's commands only there
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases once
                add_lang_option(command, top=False)


# --- the catalogs -----------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}
_QUOTED = re.compile(r'^"(.*)"\s*$')


def _unquote(text: str, where: str) -> str:
    found = _QUOTED.match(text.strip())
    if found is None:
        raise ValueError(f"{where}: expected a quoted string, found {text.strip()!r}")
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), found.group(1))


def read_po(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a gettext catalog (the subset Loa writes: no plural forms, no
    contexts); fuzzy and untranslated entries are left out, as gettext leaves them."""
    entries: dict[str, str] = {}
    msgid: list[str] | None = None
    msgstr: list[str] | None = None
    fuzzy = next_fuzzy = False
    current: list[str] | None = None

    def flush() -> None:
        if msgid is not None and msgstr is not None:
            key, value = "".join(msgid), "".join(msgstr)
            if key and value and not fuzzy:
                entries[key] = value

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in line:
                next_fuzzy = True
            continue
        if line.startswith("msgid "):
            flush()
            msgid, msgstr, fuzzy, next_fuzzy = [_unquote(line[6:], where)], None, next_fuzzy, False
            current = msgid
        elif line.startswith("msgstr "):
            if msgid is None:
                raise ValueError(f"{where}: msgstr without a msgid")
            msgstr = [_unquote(line[7:], where)]
            current = msgstr
        elif line.startswith('"') and current is not None:
            current.append(_unquote(line, where))
        else:
            raise ValueError(f"{where}: not a line of a gettext catalog: {line!r}")
    flush()
    return entries


@cache
def catalog(lang: Lang) -> Mapping[str, str]:
    """msgid -> translation in this language (English: none, the msgid is the text)."""
    if lang == "en":
        return {}
    return read_po(CATALOGS / f"{lang}.po")


def translate(msgid: str, lang: Lang | None = None) -> str:
    """msgid in this language (the process's by default), itself when untranslated."""
    return catalog(lang or _Process.lang).get(msgid, msgid)


class _Numbers(string.Formatter):
    """str.format, with Vietnamese decimal commas: 1,5 GB (a float's point, never an
    integer's or a text's)."""

    def __init__(self, lang: Lang) -> None:
        self.lang = lang

    def format_field(self, value: Any, format_spec: str) -> str:
        written: str = super().format_field(value, format_spec)
        if self.lang == "vi" and isinstance(value, float):
            return written.replace(".", ",")
        return written


def _fill(text: str, lang: Lang, values: Mapping[str, object]) -> str:
    if not values:
        return text
    shown = {k: v.in_(lang) if isinstance(v, Text | When) else v for k, v in values.items()}
    return _Numbers(lang).format(text, **shown)


def when(at: datetime, lang: Lang, tz: tzinfo | None = None, *, seconds: bool = False) -> str:
    """A time as its reader writes it, in tz (the fleet's; local time if None): Vietnamese
    "14:30 ngày 06/12/2026", English "2026-12-06 14:30"."""
    local = at.astimezone(tz)
    clock = local.strftime("%H:%M:%S" if seconds else "%H:%M")
    if lang == "vi":
        return f"{clock} ngày {local:%d/%m/%Y}"
    return f"{local:%Y-%m-%d} {clock}"


class When:
    """A time in a message, written in the reader's language when shown (`when`)."""

    def __init__(self, at: datetime, tz: tzinfo | None = None, *, seconds: bool = False) -> None:
        self.at = at
        self.tz = tz
        self.seconds = seconds

    def in_(self, lang: Lang) -> str:
        return when(self.at, lang, self.tz, seconds=self.seconds)

    def __str__(self) -> str:
        return self.in_(_Process.lang)


def _(msgid: str, **values: object) -> str:
    """msgid in the process's language, its placeholders filled with values."""
    return _fill(translate(msgid), _Process.lang, values)


def N_(msgid: str) -> str:
    """msgid, marked for the catalog and translated later."""
    return msgid


class Text:
    """A message translated when shown: msgid and the values of its placeholders (a value
    may be a Text itself)."""

    def __init__(self, msgid: str, **values: object) -> None:
        self.msgid = msgid
        self.values = values

    def in_(self, lang: Lang) -> str:
        return _fill(translate(self.msgid, lang), lang, self.values)

    def __str__(self) -> str:
        return self.in_(_Process.lang)

    def __repr__(self) -> str:
        return f"Text({self.in_('en')!r})"


def say(exc: BaseException, lang: Lang | None = None) -> str:
    """What an exception says, in this language when its message is a Text (the
    process's by default); str(exc) otherwise."""
    if exc.args and isinstance(exc.args[0], Text):
        return exc.args[0].in_(lang or _Process.lang)
    return str(exc)
