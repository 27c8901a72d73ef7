"""Written Vietnamese to the words a voice says: numbers, dates, times, units, money,
phone numbers, roads and abbreviations (controller.speech_text, controller.vi_numbers,
controller.abbreviations), on the issue's examples, one test per category, and on a
corpus of real-style announcements (tests/data/speech-corpus.yaml).

The same examples go through `loa-controller say --print-text`, in this process for
each category and once as the installed program.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from controller.abbreviations import dictionary, load_abbreviations, shipped
from controller.cli import main
from controller.speech_text import SpeechText, is_syllable, roman
from controller.vi_numbers import NumberWords
from protocol.config_errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "speech-corpus.yaml"
SPEECH = SpeechText()

# (written, said) per category; each said is what the whole written text becomes.
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "cardinal": [
        ("0 hộ", "không hộ"),
        ("10 hộ", "mười hộ"),
        ("11 hộ", "mười một hộ"),
        ("15 hộ", "mười lăm hộ"),
        ("20 hộ", "hai mươi hộ"),
        ("21 hộ", "hai mươi mốt hộ"),
        ("24 hộ", "hai mươi tư hộ"),
        ("25 hộ", "hai mươi lăm hộ"),
        ("14 hộ", "mười bốn hộ"),
        ("105 hộ", "một trăm linh năm hộ"),
        ("110 hộ", "một trăm mười hộ"),
        ("1001 hộ", "một nghìn không trăm linh một hộ"),
        ("năm 2026", "năm hai nghìn không trăm hai mươi sáu"),
        ("ấp 05", "ấp năm"),
    ],
    "ordinal": [
        ("thứ 3", "thứ ba"),
        ("thứ 4", "thứ tư"),
        ("Thứ 7", "Thứ bảy"),
        ("lần thứ 1", "lần thứ nhất"),
        ("lần thứ 14", "lần thứ mười bốn"),
        ("Quốc hội khóa XVI", "Quốc hội khóa mười sáu"),
        ("quý IV", "quý bốn"),
    ],
    "decimal and thousands": [
        ("1,5 lần", "một phẩy năm lần"),
        ("1.000 người", "một nghìn người"),
        ("2.500.000 người", "hai triệu năm trăm nghìn người"),
        ("1,05 lần", "một phẩy không năm lần"),
        ("0,25 lần", "không phẩy hai mươi lăm lần"),
        ("1.500,5 tấn", "một nghìn năm trăm phẩy năm tấn"),
    ],
    "dates": [
        ("6/12/2026", "ngày sáu tháng mười hai năm hai nghìn không trăm hai mươi sáu"),
        ("06-12-2026", "ngày sáu tháng mười hai năm hai nghìn không trăm hai mươi sáu"),
        ("ngày 6/12", "ngày sáu tháng mười hai"),
        ("15-17/12", "ngày mười lăm đến ngày mười bảy tháng mười hai"),
        ("từ 15-17/12", "từ ngày mười lăm đến ngày mười bảy tháng mười hai"),
        ("ngày 1/4", "ngày một tháng tư"),
        ("tháng 12/2026", "tháng mười hai năm hai nghìn không trăm hai mươi sáu"),
        ("6/12-8/12", "ngày sáu tháng mười hai đến ngày tám tháng mười hai"),
    ],
    "times": [
        ("14h30", "mười bốn giờ ba mươi phút"),
        ("14:30", "mười bốn giờ ba mươi phút"),
        ("7h", "bảy giờ"),
        ("19 giờ", "mười chín giờ"),
        ("17h00", "mười bảy giờ"),
        ("7h05", "bảy giờ năm phút"),
        ("14h-16h", "mười bốn giờ đến mười sáu giờ"),
        ("trong 24h tới", "trong hai mươi tư giờ tới"),
    ],
    "ranges": [
        ("3-5 ngày", "ba đến năm ngày"),
        ("cấp 10-11", "cấp mười đến mười một"),
        ("nhiệm kỳ 2026-2031",
         "nhiệm kỳ hai nghìn không trăm hai mươi sáu đến hai nghìn không trăm ba mươi mốt"),
        ("7-9h", "bảy đến chín giờ"),
    ],
    "units": [
        ("25 mm", "hai mươi lăm mi-li-mét"),
        ("10 cm", "mười xen-ti-mét"),
        ("1,5 m", "một phẩy năm mét"),
        ("250 km", "hai trăm năm mươi ki-lô-mét"),
        ("60 km/h", "sáu mươi ki-lô-mét một giờ"),
        ("15 m/s", "mười lăm mét một giây"),
        ("35°C", "ba mươi lăm độ xê"),
        ("35 độ C", "ba mươi lăm độ xê"),
        ("80%", "tám mươi phần trăm"),
        ("1.000 ha", "một nghìn héc-ta"),
        ("25 kg", "hai mươi lăm ki-lô-gam"),
        ("2 tấn", "hai tấn"),
        ("1.200 m³/s", "một nghìn hai trăm mét khối một giây"),
        ("-2°C", "âm hai độ xê"),
        ("22 kV", "hai mươi hai ki-lô-vôn"),
    ],
    "money": [
        ("500.000đ", "năm trăm nghìn đồng"),
        ("2 triệu đồng", "hai triệu đồng"),
        ("150.000 VNĐ", "một trăm năm mươi nghìn đồng"),
        ("50.000 đ/kg", "năm mươi nghìn đồng một ki-lô-gam"),
        ("2,5 tỷ đồng", "hai phẩy năm tỷ đồng"),
    ],
    "phone numbers": [
        ("0912 345 678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("0912345678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("0912.345.678", "không chín một hai, ba bốn năm, sáu bảy tám"),
        ("02933 876 123", "không hai chín ba ba, tám bảy sáu, một hai ba"),
        ("+84 912 345 678", "cộng tám tư, chín một hai, ba bốn năm, sáu bảy tám"),
        ("1900 9095", "một chín không không, chín không chín năm"),
        ("gọi 114", "gọi một một bốn"),
    ],
    "roads": [
        ("QL1A", "quốc lộ một a"),
        ("ĐT 931", "đường tỉnh chín trăm ba mươi mốt"),
        ("QL 91B", "quốc lộ chín mươi mốt bê"),
        ("Quốc lộ 61C", "Quốc lộ sáu mươi mốt xê"),
        ("Km 12+500", "ki-lô-mét mười hai cộng năm trăm"),
        ("ĐT: 0912 345 678", "điện thoại: không chín một hai, ba bốn năm, sáu bảy tám"),
    ],
    "abbreviations": [
        ("UBND xã", "ủy ban nhân dân xã"),
        ("HĐND huyện", "hội đồng nhân dân huyện"),
        ("MTTQ", "mặt trận tổ quốc"),
        ("BCH PCTT và TKCN", "ban chỉ huy phòng chống thiên tai và tìm kiếm cứu nạn"),
        ("TP. Vị Thanh", "thành phố Vị Thanh"),
        ("KP 3", "khu phố ba"),
        ("Đài VOV", "Đài vê o vê"),
        ("cúm H5N1", "cúm hát năm en-nờ một"),
        ("THÔNG BÁO KHẨN", "THÔNG BÁO KHẨN"),
    ],
}


def _cases() -> list[Any]:
    return [
        pytest.param(written, said, id=f"{category}: {written}")
        for category, examples in CATEGORIES.items()
        for written, said in examples
    ]


@pytest.mark.parametrize(("written", "said"), _cases())
def test_each_example_is_read_out(written: str, said: str) -> None:
    assert SPEECH.words(written) == said


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_say_print_text_reads_each_category(
    category: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`loa-controller say TEXT --print-text`, as a person runs it, category by category."""
    monkeypatch.chdir(tmp_path)  # no config/: the built-in speech settings
    for written, said in CATEGORIES[category]:
        with pytest.raises(SystemExit) as exit_code:
            main(["say", "--print-text", "--", written])
        assert exit_code.value.code == 0
        assert capsys.readouterr().out == said + "\n"


def test_the_installed_say_command_prints_the_issues_examples(tmp_path: Path) -> None:
    text = (
        "UBND xã: lúc 14h30 ngày 6/12/2026 mực nước 1,5 m, mưa 25 mm; gọi 0912 345 678."
    )
    exe = Path(sys.executable).parent / "loa-controller"
    done = subprocess.run(
        [str(exe), "say", text, "--print-text"], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False, env={**os.environ, "LANG": "C.UTF-8"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "ủy ban nhân dân xã: lúc mười bốn giờ ba mươi phút ngày sáu tháng mười hai năm hai "
        "nghìn không trăm hai mươi sáu mực nước một phẩy năm mét, mưa hai mươi lăm mi-li-mét; "
        "gọi không chín một hai, ba bốn năm, sáu bảy tám.\n"
    )


# --- the corpus ------------------------------------------------------------------------------


def _corpus() -> list[dict[str, str]]:
    data = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    items: list[dict[str, str]] = data["announcements"]
    return items


def test_the_corpus_covers_every_kind_of_announcement() -> None:
    items = _corpus()
    assert len(items) >= 60
    topics = {item["topic"] for item in items}
    assert {"flood", "storm", "dengue", "power", "vaccine", "election", "lostchild"} <= topics


@pytest.mark.parametrize(
    "item", [pytest.param(i, id=f"{n:02d}-{i['topic']}") for n, i in enumerate(_corpus())]
)
def test_the_corpus_is_read_as_expected(item: dict[str, str]) -> None:
    assert SPEECH.words(item["text"]) == item["says"]


def test_nothing_of_the_corpus_is_left_for_the_engine_to_guess() -> None:
    """No digit, and no capitals that are not a Vietnamese syllable or a name, survive."""
    for item in _corpus():
        said = SPEECH.words(item["text"])
        assert not any(c.isdigit() for c in said), said
        for word in said.replace(",", " ").replace(".", " ").split():
            if word.isupper() and len(word) > 1:
                assert is_syllable(word), (word, said)


# --- the number words ------------------------------------------------------------------------


def test_the_southern_number_words_are_a_setting() -> None:
    south = SpeechText(numbers=NumberWords(zero_tens="lẻ", thousand="ngàn"))
    assert south.words("105 hộ, 1.000 người, 2.500.000đ") == (
        "một trăm lẻ năm hộ, một ngàn người, hai triệu năm trăm ngàn đồng"
    )
    assert SPEECH.words("105 hộ, 1.000 người") == "một trăm linh năm hộ, một nghìn người"


@pytest.mark.parametrize(
    ("n", "said"),
    [
        (1_000_050, "một triệu không trăm năm mươi"),
        (1_005_000, "một triệu không trăm linh năm nghìn"),
        (1_000_000_000, "một tỷ"),
        (12_000_000_000_000, "mười hai nghìn tỷ"),
        (-5, "âm năm"),
        (10**16, "một không không không không không không không không không không không không "
         "không không không không"),
    ],
)
def test_large_numbers(n: int, said: str) -> None:
    assert NumberWords().cardinal(n) == said


def test_roman_numerals_and_syllables() -> None:
    assert [roman(r) for r in ("I", "IV", "IX", "XIV", "XVI", "XL", "C", "CI", "", "IO")] == [
        1, 4, 9, 14, 16, 40, 100, None, None, None,
    ]
    assert all(is_syllable(w) for w in ("KHẨN", "TIN", "NGHIÊNG", "Đường"))
    assert not any(is_syllable(w) for w in ("VOV", "UBND", "EVN", "HĐND"))


# --- the abbreviation dictionary -------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "abbreviations.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_a_province_extends_the_dictionary_and_reads_an_entry_its_own_way(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, """
        abbreviations:
          BCH: ban chấp hành      # the shipped one says ban chỉ huy
          HTX NN.: hợp tác xã nông nghiệp
    """.replace("HTX NN.", "HTXNN"))
    words = dictionary([path])
    assert words.entries["BCH"] == "ban chấp hành"
    assert words.entries["UBND"] == "ủy ban nhân dân"  # the rest of the shipped ones stay
    assert words.sources["BCH"] == f"{path}:2"
    province = SpeechText(abbreviations=words)
    assert province.words("BCH Đoàn xã, HTXNN Tân Lợi") == (
        "ban chấp hành Đoàn xã, hợp tác xã nông nghiệp Tân Lợi"
    )
    assert SPEECH.words("BCH Đoàn xã") == "ban chỉ huy Đoàn xã"


def test_every_mistake_in_an_abbreviation_file_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        abbreviations:
          UBND: ủy ban nhân dân
          HTX NN: hợp tác xã nông nghiệp
          PCTT:
          "123": một hai ba
          QL: quốc lộ 1
        extra: true
    """)
    with pytest.raises(ConfigError) as exc:
        load_abbreviations(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"{path}:3:")
    assert "has a space" in lines[0]
    assert lines[1].startswith(f"{path}:4:")
    assert "PCTT: write how it is read" in lines[1]
    assert lines[2].startswith(f"{path}:5:")
    assert "no letter" in lines[2]
    assert lines[3].startswith(f"{path}:6:")
    assert "write numbers in words" in lines[3]
    assert lines[4].startswith(f"{path}:7:1:")
    assert "unknown key 'extra'" in lines[4]


def test_an_abbreviation_file_without_entries_says_what_to_write(tmp_path: Path) -> None:
    path = write(tmp_path, "abbreviations: UBND\n")
    with pytest.raises(ConfigError, match="needs entries under it"):
        load_abbreviations(path)
    with pytest.raises(ConfigError, match="file not found"):
        dictionary([tmp_path / "missing.yaml"])


def test_the_shipped_dictionary_has_what_every_official_writes() -> None:
    entries = shipped().entries
    for key in ("UBND", "HĐND", "MTTQ", "PCTT", "TKCN", "BCH", "TP.", "KP"):
        assert key in entries
    assert all(not any(c.isdigit() for c in v) for v in entries.values())
