"""The message catalog's upkeep: find every message marked for translation in the sources
and bring protocol/locale/vi.po up to date with them.

    python scripts/l10n.py          # what is missing, untranslated or no longer used
    python scripts/l10n.py --update # rewrite vi.po: new messages added with an empty
                                    # msgstr to fill in, unused ones dropped, translations kept

A message is marked where it is written: ``_("...")``, ``N_("...")`` or ``Text("...")``
with a literal English text (protocol/l10n.py). tests/test_l10n.py runs the same
extraction and fails while anything is missing or untranslated.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("protocol", "controller", "device_agent")
MARKERS = ("_", "N_", "Text")
PO = ROOT / "protocol" / "locale" / "vi.po"
HEADER = '''# Loa: the Vietnamese of what the command lines and the web app's services say.
# The msgid is the English written in the code; scripts/l10n.py --update keeps this file
# in step with the sources. Use the words of the project glossary.
msgid ""
msgstr ""
"Project-Id-Version: loa\\n"
"PO-Revision-Date: 2026-12-06 00:00+0700\\n"
"Last-Translator: Loa <loa@localhost>\\n"
"Language-Team: Vietnamese\\n"
"Language: vi\\n"
"MIME-Version: 1.0\\n"
"Content-Type: text/plain; charset=UTF-8\\n"
"Content-Transfer-Encoding: 8bit\\n"
'''


@dataclass
class Found:
    """Every marked message: msgid -> where it is written (file:line)."""

    messages: dict[str, list[str]] = field(default_factory=dict)
    #: Marked calls whose text is not a literal (an f-string, a variable): file:line.
    unreadable: list[str] = field(default_factory=list)


def extract(root: Path = ROOT) -> Found:
    found = Found()
    for package in SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for call in ast.walk(tree):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id in MARKERS
                ):
                    continue
                first = call.args[0] if call.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.messages.setdefault(first.value, []).append(f"{where}:{call.lineno}")
                elif call.func.id == "N_" or isinstance(first, ast.JoinedStr):
                    found.unreadable.append(f"{where}:{call.lineno}")
                # _(value) and Text(value) of a variable: a msgid marked where it was written
    return found


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_po(path: Path, found: Found, translations: dict[str, str]) -> None:
    parts = [HEADER]
    for msgid, where in found.messages.items():
        refs = " ".join(where[:3])
        msgstr = _quote(translations.get(msgid, ""))
        parts.append(f"#: {refs}\nmsgid {_quote(msgid)}\nmsgstr {msgstr}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from protocol.l10n import read_po

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite protocol/locale/vi.po")
    args = parser.parse_args()
    found = extract()
    translations = read_po(PO) if PO.exists() else {}
    missing = [m for m in found.messages if m not in translations]
    unused = [m for m in translations if m not in found.messages]
    for where in found.unreadable:
        print(f"{where}: the text to translate is not a literal string")
    if args.update:
        write_po(PO, found, translations)
        print(f"wrote {PO.relative_to(ROOT)}: {len(found.messages)} messages, "
              f"{len(missing)} to translate, {len(unused)} unused dropped")
        return 0
    for msgid in missing:
        print(f"untranslated: {msgid!r} ({found.messages[msgid][0]})")
    for msgid in unused:
        print(f"unused: {msgid!r}")
    return 1 if missing or unused or found.unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
