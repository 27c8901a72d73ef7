"""XML documents built to attack a parser, and a watch on what the process opens.

Each document is a CAP alert (conftest's `cap_xml`, for commune xa-a) carrying a DTD, in
UTF-8 or in UTF-16 with a byte order mark (little or big endian), where a byte search
for "<!DOCTYPE" finds nothing. `SPEC_EXAMPLES` are the CAP 1.2 specification's own
example alerts (tests/data/cap-1.2), which must still be taken.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from conftest import cap_xml

SPEC_EXAMPLES = Path(__file__).parent / "data" / "cap-1.2"

Attack = Literal["internal-entity", "billion-laughs", "external-entity", "dtd-only",
                 "external-dtd"]
ATTACKS: tuple[Attack, ...] = (
    "internal-entity", "billion-laughs", "external-entity", "dtd-only", "external-dtd",
)
Encoding = Literal["utf-8", "utf-16-le", "utf-16-be"]
ENCODINGS: tuple[Encoding, ...] = ("utf-8", "utf-16-le", "utf-16-be")

_LAUGHS = "\n".join(
    [' <!ENTITY lol0 "lol">']
    + [f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
)


def _dtd(attack: Attack, secret: Path, dtd_url: str) -> tuple[str, str]:
    """The DOCTYPE declaration and what the headline says, for one attack."""
    if attack == "internal-entity":
        return '<!DOCTYPE alert [<!ENTITY where "ở Xã An">]>', "Cảnh báo lũ &where;"
    if attack == "billion-laughs":
        return f"<!DOCTYPE alert [\n{_LAUGHS}\n]>", "&lol9;"
    if attack == "external-entity":
        return (f'<!DOCTYPE alert [<!ENTITY secret SYSTEM "{secret.as_uri()}">]>',
                "Cảnh báo: &secret;")
    if attack == "dtd-only":
        return "<!DOCTYPE alert>", "Cảnh báo lũ"
    return f'<!DOCTYPE alert SYSTEM "{dtd_url}">', "Cảnh báo lũ"


def hostile(
    attack: Attack, encoding: Encoding, secret: Path, dtd_url: str = "http://127.0.0.1:9/cap.dtd"
) -> bytes:
    """A CAP alert for commune xa-a carrying the attack, written in the encoding."""
    doctype, headline = _dtd(attack, secret, dtd_url)
    body = cap_xml().decode().split("?>", 1)[1]
    body = body.replace("Cảnh báo lũ trên sông Cái Côn", headline)
    name = "UTF-8" if encoding == "utf-8" else "UTF-16"
    text = f'<?xml version="1.0" encoding="{name}"?>\n{doctype}{body}'
    if encoding == "utf-8":
        return text.encode("utf-8")
    return ("\ufeff" + text).encode(encoding)  # with its byte order mark


class OpenWatch:
    """The files the process opens (Python's audit event "open") among those watched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, list[str]] = {}

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if event != "open" or not args or not isinstance(args[0], str | bytes | Path):
            return
        target = args[0]
        path = target.decode(errors="replace") if isinstance(target, bytes) else str(target)
        with self._lock:
            opened = self._watched.get(path)
            if opened is not None:
                opened.append(path)

    @contextmanager
    def watching(self, path: Path) -> Iterator[list[str]]:
        """A list that gets path each time it is opened while the block runs."""
        opened: list[str] = []
        with self._lock:
            self._watched[str(path)] = opened
        try:
            yield opened
        finally:
            with self._lock:
                del self._watched[str(path)]


# An audit hook cannot be removed: one for the whole test process, idle unless watching.
OPENS = OpenWatch()
sys.addaudithook(OPENS.hook)
