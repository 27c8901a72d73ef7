"""What a Vietnamese screen must not contain: the English the app can produce, derived
from the message catalog (protocol/locale/vi.po) and the web app's words
(controller/web/i18n.py), never a hand-made list."""

from __future__ import annotations

import re
import string
from collections.abc import Collection
from functools import cache

from controller.web.i18n import TEXT
from protocol.l10n import catalog

#: Words that are the same in both languages, or names rather than words.
SHARED = {"loa", "csv", "cap", "opus", "english", "mqtt", "ok", "id"}


def _literals(template: str) -> list[str]:
    """The text of a message between its {placeholders}."""
    return [literal for literal, *_rest in string.Formatter().parse(template)]


def english_texts() -> list[str]:
    """Every English text: the catalog's msgids and the web app's English words."""
    return [*catalog("vi"), *(entry["en"] for entry in TEXT.values())]


def vietnamese_texts() -> list[str]:
    return [*catalog("vi").values(), *(entry["vi"] for entry in TEXT.values())]


@cache
def english_fragments(words: int = 3) -> set[str]:
    """The pieces of English text between placeholders and punctuation, of at least this
    many words, that no Vietnamese text quotes as well (a command): a Vietnamese report
    that contains one has left something untranslated."""
    pieces: set[str] = set()
    for text in english_texts():
        for literal in _literals(text):
            for piece in re.split(r"[;:()\[\].,!?]", literal):
                if len(piece.split()) >= words:
                    pieces.add(piece.strip())
    vietnamese = "\n".join(vietnamese_texts())
    return {p for p in pieces if p not in vietnamese}  # a command quoted in both


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[^\W\d_]+", text)}


#: What a Vietnamese text quotes as written: a command line, a `quoted` name, an option,
#: a config key or a file name; its words are not Vietnamese words.
QUOTED = re.compile(
    r"`[^`]*`|loa-(?:controller|agent)(?: [a-z][\w-]*)*|--[\w-]+|\S*[_./=]\S*"
)


@cache
def english_words() -> set[str]:
    """The words of the English texts (four letters or more) that no Vietnamese text
    uses, other than in what it quotes: one of them on a Vietnamese page is English
    showing through."""
    english = set().union(*(_words(t) for t in english_texts()))
    vietnamese = set().union(*(_words(QUOTED.sub(" ", t)) for t in vietnamese_texts()))
    return {w for w in english - vietnamese - SHARED if len(w) >= 4 and w.isascii()}


def english_fragments_in(text: str) -> list[str]:
    """The English fragments (english_fragments) a text contains."""
    return sorted(p for p in english_fragments() if p in text)


def english_in(text: str, allowed: Collection[str] = ()) -> list[str]:
    """The English words and fragments found in a text meant to be Vietnamese, outside
    what it quotes (QUOTED); allowed: words that are data here (a user's name, an id the
    page shows on purpose)."""
    shown = QUOTED.sub(" ", text)  # a command or a file name is quoted as written
    found = {w for w in _words(shown) & english_words() if w not in allowed}
    return sorted(found | set(english_fragments_in(text)))
