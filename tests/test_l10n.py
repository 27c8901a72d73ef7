"""The message catalog: every message marked for translation in the sources is in
protocol/locale/vi.po, translated, with the same placeholders; nothing is kept there
that no source says. And the machinery: the locale picks the language as gettext does,
a Text is translated when shown.

The messages are read from the sources (scripts/l10n.py: every `_`, `N_` and `Text`
call with a literal English text), not from what a test happened to print.
"""

from __future__ import annotations

import shutil
import string
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import require
from l10n import PO, extract

from protocol import l10n
from protocol.l10n import Text, When, choose, lang_from_env, read_po

FOUND = extract()
CATALOG = read_po(PO)


def _placeholders(text: str) -> list[tuple[str, str]]:
    """Each {placeholder} with its conversion and format, in order of name."""
    return sorted(
        (name, f"{conversion or ''}:{spec or ''}")
        for _, name, spec, conversion in string.Formatter().parse(text)
        if name is not None
    )


def test_the_sources_mark_messages_this_test_can_read() -> None:
    assert FOUND.unreadable == [], (
        "a marked message whose text is not a literal (write the English as a literal "
        f"string, its values as keywords): {FOUND.unreadable}"
    )
    assert len(FOUND.messages) > 90
    assert "pending: never approved" in FOUND.messages


def test_every_marked_message_is_translated() -> None:
    missing = sorted(
        f"{msgid!r} ({where[0]})" for msgid, where in FOUND.messages.items()
        if msgid not in CATALOG
    )
    assert missing == [], (
        f"messages not in {PO.name} or with an empty msgstr; run scripts/l10n.py --update "
        f"and translate them: {missing}"
    )


def test_no_translation_is_kept_that_nothing_says() -> None:
    assert sorted(set(CATALOG) - set(FOUND.messages)) == []


@pytest.mark.parametrize("msgid", sorted(CATALOG))
def test_each_translation_has_the_placeholders_of_its_english(msgid: str) -> None:
    assert _placeholders(CATALOG[msgid]) == _placeholders(msgid)


def test_gettext_reads_the_catalog_as_it_is(tmp_path: Path) -> None:
    """The catalog is a standard one: msgfmt compiles it without a complaint."""
    msgfmt = shutil.which("msgfmt")
    require("msgfmt", msgfmt is not None, "apt-get install gettext")
    assert msgfmt is not None
    done = subprocess.run(
        [msgfmt, "--check", "-o", str(tmp_path / "vi.mo"), str(PO)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_the_catalog_has_no_fuzzy_entries() -> None:
    assert "#, fuzzy" not in PO.read_text(encoding="utf-8")


def test_the_locale_chooses_the_language_as_gettext_reads_it() -> None:
    assert lang_from_env({"LANG": "vi_VN.UTF-8"}) == "vi"
    assert lang_from_env({"LANG": "en_US.UTF-8"}) == "en"
    assert lang_from_env({}) == "en"
    assert lang_from_env({"LANG": "vi_VN.UTF-8", "LC_ALL": "C.UTF-8"}) == "en"
    assert lang_from_env({"LANG": "C", "LC_MESSAGES": "vi_VN"}) == "vi"
    assert lang_from_env({"LANGUAGE": "fr:vi", "LANG": "en_US"}) == "vi"
    assert lang_from_env({"LANG": "fr_FR.UTF-8"}) == "en"  # no French: English
    assert choose("vi", {"LANG": "en_US"}) == "vi"
    assert choose(None, {"LC_ALL": "vi_VN.UTF-8"}) == "vi"


def test_a_text_is_translated_when_shown() -> None:
    message = Text("approved by {who} at {at}", who="Lê Quản Lý",
                   at=When(datetime(2026, 12, 6, 7, 30, tzinfo=UTC), ZoneInfo("Asia/Ho_Chi_Minh")))
    assert message.in_("vi") == "đã duyệt bởi Lê Quản Lý lúc 14:30 ngày 06/12/2026"
    assert message.in_("en") == "approved by Lê Quản Lý at 2026-12-06 14:30"
    error = ValueError(Text("pending: never approved"))
    assert l10n.say(error, "vi") == CATALOG["pending: never approved"]
    assert l10n.say(ValueError("plain"), "vi") == "plain"


def test_read_po_reads_what_msgfmt_reads(tmp_path: Path) -> None:
    po = tmp_path / "x.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        '#: a.py:1\nmsgid "two "\n"lines \\"quoted\\""\nmsgstr "hai "\n"dòng"\n\n'
        '#, fuzzy\nmsgid "unsure"\nmsgstr "chưa chắc"\n\n'
        'msgid "untranslated"\nmsgstr ""\n',
        encoding="utf-8",
    )
    assert read_po(po) == {'two lines "quoted"': "hai dòng"}
    po.write_text('msgid "a"\nmsgstr b\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.po:2"):
        read_po(po)
