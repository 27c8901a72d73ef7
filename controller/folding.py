"""Vietnamese words compared the way people type them: with or without their marks.

A manager writes "Xã Tân Bình", "xa tan binh" or "Tân Bình" for the same commune, and
"thứ hai", "Thu Hai" or "T2" for Monday. `exact()` keeps the marks (only case and spaces
are let go); `fold()` drops them too, đ included, so that a name typed on a keyboard
without Vietnamese input still finds its place.
"""

from __future__ import annotations

import unicodedata

#: What stands before a place's own name; "Xã Tân Bình" is also found as "Tân Bình".
PLACE_PREFIXES = (
    "thành phố", "thị xã", "thị trấn", "khu vực", "khu phố", "tỉnh", "huyện", "quận", "xã",
    "phường", "ấp", "thôn", "tổ", "bản", "làng", "sóc", "khóm",
)


def exact(text: str) -> str:
    """NFC, lower case, one space between words: the marks still count."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def fold(text: str) -> str:
    """exact(), and without tone and vowel marks (đ -> d): "Xã Tân Bình" -> "xa tan binh"."""
    decomposed = unicodedata.normalize("NFD", exact(text).replace("đ", "d"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def without_prefix(name: str) -> str | None:
    """exact(name) without its administrative prefix, or None if it has none or only a
    number follows it ("Ấp 1" stays "Ấp 1": "1" alone names nothing)."""
    words = exact(name)
    for prefix in PLACE_PREFIXES:
        if words.startswith(prefix + " "):
            rest = words[len(prefix) + 1:]
            if rest and not rest.replace(" ", "").isdigit():
                return rest
    return None
