"""Written Vietnamese turned into the words a voice should say, before text-to-speech.

A warning is made of numbers and abbreviations; a speech engine left alone reads
"14h30" as "mười bốn hát ba mươi", switches to English for "UBND" and runs
"6/12/2026" into one long number. `SpeechText.words()` rewrites them first, in this
order (each rule leaves words the later ones pass over):

1. phone numbers, digit by digit in their written groups (0912 345 678: không chín
   một hai, ba bốn năm, sáu bảy tám); hotlines 1800/1900; 111-115 after gọi/số;
2. road kilometre posts (Km 12+500) and road names: QL1A quốc lộ một a, ĐT 931
   đường tỉnh chín trăm ba mươi mốt, also TL, HL, ĐH and the same written in full;
3. dates: 6/12/2026, 06-12-2026, 6.12.2026, ngày 6/12, 12/2026, ranges 15-17/12 and
   6/12-8/12 (ngày sáu tháng mười hai; "ngày" is added unless written just before);
4. times: 14h30, 14g30, 14:30, 7h, 19 giờ 30, and ranges 14h-16h (đến);
5. ordinals and months: thứ 3 thứ ba, thứ 4 thứ tư, lần thứ 1 lần thứ nhất, tháng 4
   tháng tư; Roman numerals after khóa, quý, lần thứ, đại hội... (khóa XVI);
6. codes of capitals and digits, letter by letter and number by number (H5N1);
7. numbers with the Vietnamese decimal comma and thousands dot (1,5; 2.500.000),
   ranges (3-5 ngày: ba đến năm ngày), a minus sign, and the unit after them (mm, cm,
   m, km, km/h, m/s, m³/s, °C, %, ha, kg, tấn, kV, đ, VNĐ...), see UNITS;
8. abbreviations from the dictionary (controller.abbreviations): UBND ủy ban nhân dân;
9. other capitals that are no Vietnamese syllable (VOV, EVN), spelt letter by letter;
10. symbols and spacing: & và, brackets and dashes become pauses, one space between
    words.

How numbers are read (mốt, lăm, tư, linh or lẻ, nghìn or ngàn) is controller.vi_numbers.
Everything here is pure text: no engine, no file, no network.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.abbreviations import Abbreviations, shipped
from controller.vi_numbers import DIGITS, NumberWords

#: Vietnamese names of the letters, for spelling out (VOV: vê o vê).
LETTERS = {
    "A": "a", "B": "bê", "C": "xê", "D": "dê", "Đ": "đê", "E": "e", "F": "ép", "G": "giê",
    "H": "hát", "I": "i", "J": "gi", "K": "ca", "L": "e-lờ", "M": "em-mờ", "N": "en-nờ",
    "O": "o", "P": "pê", "Q": "quy", "R": "e-rờ", "S": "ét-xì", "T": "tê", "U": "u",
    "V": "vê", "W": "đúp-lờ-vê", "X": "ích-xì", "Y": "i-dài", "Z": "dét",
}

#: Units read after a number (3 mm, 60 km/h), as written -> as said.
UNITS = {
    "mm": "mi-li-mét", "cm": "xen-ti-mét", "km": "ki-lô-mét", "m": "mét",
    "m²": "mét vuông", "m2": "mét vuông", "km²": "ki-lô-mét vuông", "km2": "ki-lô-mét vuông",
    "m³": "mét khối", "m3": "mét khối",
    "ha": "héc-ta", "kg": "ki-lô-gam", "g": "gam", "mg": "mi-li-gam", "tấn": "tấn",
    "l": "lít", "ml": "mi-li-lít",
    "°C": "độ xê", "° C": "độ xê", "oC": "độ xê", "độ C": "độ xê",
    "%": "phần trăm",
    "h": "giờ", "s": "giây",
    "kV": "ki-lô-vôn", "kVA": "ki-lô-vôn-am-pe", "V": "vôn", "kW": "ki-lô-oát",
    "kWh": "ki-lô-oát giờ",
    "MW": "mê-ga-oát", "W": "oát",
    "đ": "đồng", "đồng": "đồng", "VNĐ": "đồng", "VND": "đồng", "vnđ": "đồng",
    "USD": "đô-la Mỹ",
}
#: Words a unit may be "per" (60 km/h, 50.000 đ/kg, 2 lượt/ngày): "/" is read "một".
PER = {
    **UNITS, "ngày": "ngày", "giờ": "giờ", "tháng": "tháng", "năm": "năm", "tuần": "tuần",
    "người": "người", "hộ": "hộ", "lượt": "lượt", "con": "con", "lít": "lít", "mũi": "mũi",
}

ROADS = {
    "QL": "quốc lộ", "ĐT": "đường tỉnh", "TL": "tỉnh lộ", "HL": "hương lộ", "ĐH": "đường huyện",
}
_ROAD_WORDS = ("quốc lộ", "tỉnh lộ", "hương lộ", "đường tỉnh", "đường huyện")

_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_ROMAN_AFTER = (
    "khóa", "khoá", "quý", "lần thứ", "thế kỷ", "thế kỉ", "đại hội", "kỳ họp thứ", "thứ",
    "phần", "chương", "điều",
)

_NOT_WORD = r"(?!\w)"
_BEFORE_DATE = ("ngày", "mùng", "mồng", "hôm")
_SYLLABLE = re.compile(
    r"(?:ngh|ng|nh|ch|gh|gi|kh|ph|qu|th|tr|[bcdghklmnprstvx])?"
    r"[aeiouy]{1,3}(?:ch|ng|nh|[cmnpt])?"
)


def _alternation(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _letters(text: str) -> str:
    return " ".join(LETTERS.get(c, c) for c in text)


def _plain(word: str) -> str:
    """A word without its tone and vowel marks, lower case (đ kept as d)."""
    decomposed = unicodedata.normalize("NFD", word.lower().replace("đ", "d"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def is_syllable(word: str) -> bool:
    """Whether a word could be one Vietnamese syllable (TIN, KHẨN), not an acronym (VOV)."""
    return _SYLLABLE.fullmatch(_plain(word)) is not None


def roman(text: str) -> int | None:
    """A Roman numeral's value (I to C), or None."""
    if not text or any(c not in _ROMAN for c in text):
        return None
    total = 0
    for i, c in enumerate(text):
        value = _ROMAN[c]
        if i + 1 < len(text) and _ROMAN[text[i + 1]] > value:
            total -= value
        else:
            total += value
    return total if 0 < total <= 100 else None


# --- the patterns --------------------------------------------------------------------------

_SEP = r"[ .\-]"
_PHONE = re.compile(
    r"(?<![\d.,])(?:"
    rf"(?P<intl>\+84{_SEP}?)(?P<rest>\d(?:{_SEP}?\d){{7,9}})"
    rf"|(?P<local>0\d(?:{_SEP}?\d){{8,9}})"
    rf"|(?P<hotline>1[89]00{_SEP}?\d(?:{_SEP}?\d){{3,5}})"
    r")(?![\d])"
)
_EMERGENCY = re.compile(r"(?i:(?<!\w)(gọi|số|đường dây nóng|tổng đài)\s+)(11[1-5])(?![\d\w])")
_CHAINAGE = re.compile(r"(?<!\w)[Kk]m\s?(\d{1,4})\s?\+\s?(\d{1,4})(?!\d)")
_ROAD = re.compile(
    rf"(?<!\w)(?P<kind>{_alternation(list(ROADS))}|(?i:{_alternation(list(_ROAD_WORDS))}))"
    r"[ .]?(?P<number>[1-9]\d{0,3})(?P<letter>[A-Z])?(?!\w)"
)
_D = r"\d{1,2}"
_Y = r"\d{4}"
_DATE_PAIR = re.compile(
    rf"(?<![\d/.,])(?P<d1>{_D})/(?P<m1>{_D})(?:/(?P<y1>{_Y}))?\s*-\s*"
    rf"(?P<d2>{_D})/(?P<m2>{_D})(?:/(?P<y2>{_Y}))?(?![\d/])"
)
_DAY_RANGE = re.compile(
    rf"(?<![\d/.,])(?P<d1>{_D})\s*-\s*(?P<d2>{_D})/(?P<m>{_D})(?:/(?P<y>{_Y}))?(?![\d/])"
)
_FULL_DATE = re.compile(
    rf"(?<![\d/.,\-])(?P<d>{_D})(?P<sep>[/.\-])(?P<m>{_D})(?P=sep)(?P<y>{_Y})(?![\d/])"
)
_DAY_MONTH = re.compile(rf"(?<![\d/.,])(?P<d>{_D})/(?P<m>{_D})(?![\d/])")
_MONTH_YEAR = re.compile(rf"(?<![\d/.,])(?P<m>{_D})/(?P<y>{_Y})(?![\d/])")
_TIME_ONE = (
    r"(?P<h{i}>\d{{1,2}})\s?(?:"
    r"(?:[hg]|giờ)\s?(?P<m{i}>\d{{2}})(?:\s?(?:'|p|phút)(?!\w))?(?!\d)"
    r"|h(?!\w)"
    r"|:(?P<mc{i}>\d{{2}})(?::(?P<s{i}>\d{{2}}))?(?![\d:])"
    r")"
)
_TIME = re.compile(
    r"(?<![\d.,:/\-])" + _TIME_ONE.format(i=1) + r"(?:\s*-\s*" + _TIME_ONE.format(i=2) + ")?"
)
_ORDINAL = re.compile(r"(?<!\w)(?P<word>(?i:thứ))\s+(?P<n>\d{1,3})(?![\d\w]|[/.,]\d)")
_MONTH = re.compile(r"(?<!\w)(?P<word>(?i:tháng))\s+(?P<n>\d{1,2})(?![\d\w]|[/.,]\d)")
_ROMAN_RE = re.compile(
    rf"(?<!\w)(?P<word>(?i:{_alternation(list(_ROMAN_AFTER))}))\s+(?P<n>[IVXLC]{{1,7}})(?!\w)"
)
#: A registration after its letters (tàu cá CM 91234 TS): digit by digit.
_REGISTRATION = re.compile(r"(?<![\w.])(?P<code>[A-ZĐ]{2,3})\s(?P<n>\d{4,6})(?![\d.,])")
#: Two numbers with a slash that are no date (24/24 giờ): "trên".
_RATIO = re.compile(r"(?<![\d/.,])(?P<a>\d{1,4})/(?P<b>\d{1,4})(?![\d/])")
_CODE = re.compile(r"(?<![\w.])[A-ZĐ][A-ZĐ0-9]*\d[A-ZĐ0-9]*(?![\w])")
_NUM = r"\d{1,3}(?:\.\d{3})+(?!\d)(?:,\d+)?|\d+,\d+|\d+\.\d{1,2}(?![\d.])|\d+"
_UNIT = _alternation(list(UNITS))
_PER = _alternation(list(PER))
_NUMBER = re.compile(
    rf"(?P<a>{_NUM})(?:\s*-\s*(?P<b>{_NUM}))?"
    rf"(?:\s?(?P<unit>{_UNIT})(?:/(?P<per>{_PER}))?{_NOT_WORD})?"
)
_MINUS = re.compile(r"(?:(?<=^)|(?<=[\s(\[]))[-−](?=\d)")
_SPELL = re.compile(r"(?<![\w.])[A-ZĐ]{2,8}(?![\w])")
_LETTER_DASH = re.compile(r"(?<=[^\W\d_])-(?=\d)")


def _prefix_ngay(text: str, start: int) -> str:
    """'ngày ' unless the word just before says it already (ngày, mùng, mồng, hôm)."""
    before = text[:start].rstrip().lower()
    return "" if before.endswith(_BEFORE_DATE) else "ngày "


@dataclass(frozen=True)
class SpeechText:
    """The rules, with the province's number words and abbreviation dictionary."""

    numbers: NumberWords = field(default_factory=NumberWords)
    abbreviations: Abbreviations = field(default_factory=shipped)
    _abbreviation: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = self.abbreviations.entries
        parts = [
            re.escape(key) + ("" if key.endswith(".") else _NOT_WORD)
            for key in sorted(entries, key=len, reverse=True)
        ]
        pattern = re.compile(r"(?<![\w.])(?:" + "|".join(parts) + ")") if parts else None
        object.__setattr__(self, "_abbreviation", pattern)

    def words(self, text: str) -> str:
        """What the voice should say for text."""
        text = _tidy(text)
        steps: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
            (_PHONE, self._phone),
            (_EMERGENCY, self._emergency),
            (_CHAINAGE, self._chainage),
            (_ROAD, self._road),
            (_DATE_PAIR, self._date_pair),
            (_DAY_RANGE, self._day_range),
            (_FULL_DATE, self._full_date),
            (_MONTH_YEAR, self._month_year),
            (_DAY_MONTH, self._day_month),
            (_RATIO, self._ratio),
            (_TIME, self._time),
            (_ROMAN_RE, self._roman),
            (_ORDINAL, self._ordinal),
            (_MONTH, self._month),
            (_REGISTRATION, self._registration),
            (_CODE, self._code),
            (_MINUS, lambda m: "âm "),
            (_LETTER_DASH, lambda m: " "),
            (_NUMBER, self._number),
        ]
        for pattern, rule in steps:
            text = pattern.sub(rule, text)
        abbreviation = self._abbreviation
        if abbreviation is not None:
            text = abbreviation.sub(lambda m: self.abbreviations.entries[m.group(0)], text)
        text = _SPELL.sub(lambda m: m.group(0) if is_syllable(m.group(0)) else
                          _letters(m.group(0)), text)
        return _punctuation(text)

    # --- numbers ------------------------------------------------------------------------

    def number(self, written: str) -> str:
        """One number as written (1,5; 2.500.000; 05; 0912) in words."""
        if re.fullmatch(r"\d{1,3}(?:\.\d{3})+(?:,\d+)?", written):
            whole, _, fraction = written.replace(".", "").partition(",")
            return self.numbers.decimal(whole, fraction)
        if "," in written or "." in written:
            whole, _, fraction = written.replace(",", ".").partition(".")
            return self.numbers.decimal(whole, fraction)
        if (written.startswith("0") and len(written) > 2) or len(written) > 9:
            return self.numbers.digits(written)  # a code, not a quantity
        return self.numbers.cardinal(int(written))

    def _number(self, m: re.Match[str]) -> str:
        words = self.number(m["a"])
        if m["b"]:
            words += " đến " + self.number(m["b"])
        if m["unit"]:
            words += " " + UNITS[m["unit"]]
            if m["per"]:
                words += " một " + PER[m["per"]]
        return words

    def _phone(self, m: re.Match[str]) -> str:
        if m["intl"]:
            head, digits = "cộng tám tư, ", m["rest"]
        else:
            head, digits = "", m["local"] or m["hotline"]
        groups = [g for g in re.split(_SEP, digits) if g]
        if len(groups) == 1:
            flat = groups[0]
            sizes = {8: (4, 4), 9: (3, 3, 3), 10: (4, 3, 3), 11: (4, 3, 4)}.get(len(flat))
            if sizes:
                groups, at = [], 0
                for size in sizes:
                    groups.append(flat[at:at + size])
                    at += size
        return head + ", ".join(self.numbers.digits(g) for g in groups)

    def _emergency(self, m: re.Match[str]) -> str:
        return f"{m.group(1)} {self.numbers.digits(m.group(2))}"

    def _chainage(self, m: re.Match[str]) -> str:
        kilometre, metres = int(m.group(1)), int(m.group(2))
        return (
            f"ki-lô-mét {self.numbers.cardinal(kilometre)} cộng "
            f"{self.numbers.cardinal(metres)}"
        )

    def _road(self, m: re.Match[str]) -> str:
        kind = ROADS.get(m["kind"], m["kind"])
        words = f"{kind} {self.numbers.cardinal(int(m['number']))}"
        if m["letter"]:
            words += " " + LETTERS[m["letter"]]
        return words

    # --- dates and times ------------------------------------------------------------------

    def _date(self, day: int, month: int, year: str | None) -> str:
        words = f"{self.numbers.cardinal(day)} tháng {self.numbers.month(month)}"
        if year:
            words += f" năm {self.numbers.cardinal(int(year))}"
        return words

    def _date_pair(self, m: re.Match[str]) -> str:
        d1, m1, d2, m2 = (int(m[k]) for k in ("d1", "m1", "d2", "m2"))
        if not (_valid(d1, m1) and _valid(d2, m2)):
            return m.group(0)
        return (
            _prefix_ngay(m.string, m.start()) + self._date(d1, m1, m["y1"])
            + " đến ngày " + self._date(d2, m2, m["y2"])
        )

    def _day_range(self, m: re.Match[str]) -> str:
        d1, d2, month = int(m["d1"]), int(m["d2"]), int(m["m"])
        if not (_valid(d1, month) and _valid(d2, month) and d1 < d2):
            return m.group(0)
        return (
            _prefix_ngay(m.string, m.start()) + self.numbers.cardinal(d1)
            + " đến ngày " + self._date(d2, month, m["y"])
        )

    def _full_date(self, m: re.Match[str]) -> str:
        day, month = int(m["d"]), int(m["m"])
        if not _valid(day, month):
            return m.group(0)
        return _prefix_ngay(m.string, m.start()) + self._date(day, month, m["y"])

    def _day_month(self, m: re.Match[str]) -> str:
        day, month = int(m["d"]), int(m["m"])
        if not _valid(day, month):
            return m.group(0)
        return _prefix_ngay(m.string, m.start()) + self._date(day, month, None)

    def _month_year(self, m: re.Match[str]) -> str:
        month = int(m["m"])
        if not 1 <= month <= 12:
            return m.group(0)
        before = m.string[:m.start()].rstrip().lower()
        head = "" if before.endswith("tháng") else "tháng "
        return f"{head}{self.numbers.month(month)} năm {self.numbers.cardinal(int(m['y']))}"

    def _clock(self, m: re.Match[str], i: int) -> str | None:
        hours = int(m[f"h{i}"])
        minutes = m[f"m{i}"] or m[f"mc{i}"]
        seconds = m[f"s{i}"]
        if hours > 24 or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 59):
            return None
        words = f"{self.numbers.cardinal(hours)} giờ"
        if minutes and int(minutes):
            words += f" {self.numbers.cardinal(int(minutes))} phút"
        if seconds and int(seconds):
            words += f" {self.numbers.cardinal(int(seconds))} giây"
        return words

    def _time(self, m: re.Match[str]) -> str:
        first = self._clock(m, 1)
        if first is None:
            return m.group(0)
        if m["h2"] is None:
            return first
        second = self._clock(m, 2)
        return m.group(0) if second is None else f"{first} đến {second}"

    # --- ordinals, months, Roman numerals, codes ------------------------------------------

    def _ordinal(self, m: re.Match[str]) -> str:
        return f"{m['word']} {self.numbers.ordinal(int(m['n']))}"

    def _month(self, m: re.Match[str]) -> str:
        n = int(m["n"])
        if not 1 <= n <= 12:
            return m.group(0)
        return f"{m['word']} {self.numbers.month(n)}"

    def _roman(self, m: re.Match[str]) -> str:
        value = roman(m["n"])
        if value is None:
            return m.group(0)
        word = m["word"]
        read = self.numbers.ordinal(value) if word.lower().endswith("thứ") else (
            self.numbers.cardinal(value)
        )
        return f"{word} {read}"

    def _ratio(self, m: re.Match[str]) -> str:
        return f"{self.number(m['a'])} trên {self.number(m['b'])}"

    def _registration(self, m: re.Match[str]) -> str:
        return f"{m['code']} {self.numbers.digits(m['n'])}"

    def _code(self, m: re.Match[str]) -> str:
        parts = re.findall(r"\d+|[^\d]", m.group(0))
        return " ".join(
            self.numbers.cardinal(int(p)) if p.isdigit() else LETTERS.get(p, p) for p in parts
        )


def _valid(day: int, month: int) -> bool:
    return 1 <= day <= 31 and 1 <= month <= 12


# --- before and after ------------------------------------------------------------------------

_SPACES = re.compile(r"[ \t\u00a0\u2009\u202f]+")


def _tidy(text: str) -> str:
    """One form of the text: NFC, lines ended as sentences, dashes and spaces made plain."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    text = " ".join(
        line if line[-1] in ".!?:;," or i == len(lines) - 1 else line + "."
        for i, line in enumerate(lines)
    )
    text = text.replace("…", "...").replace("º", "°").replace("−", "-")
    text = re.sub(r"(?<=\d)\s*[–—]\s*(?=\d)", "-", text)
    return re.sub(r"\s*[–—]\s*", ", ", text)


def _punctuation(text: str) -> str:
    text = text.replace("&", " và ")
    text = re.sub(
        rf"(?<=[^\W\d_])/(?={_alternation(['ngày', 'giờ', 'tháng', 'năm', 'tuần', 'người'])})",
        " một ", text,
    )
    text = re.sub(r"(?<=[^\W\d_])/(?=[^\W\d_])", ", ", text)
    text = re.sub(r"[()\[\]{}]", ", ", text)
    text = re.sub(r"\s+-\s+", ", ", text)
    text = re.sub(r"[*#•_\"“”«»]", " ", text)
    text = text.replace("%", " phần trăm")
    text = _SPACES.sub(" ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    text = re.sub(r",\s*([.;:!?])", r"\1", text)
    text = re.sub(r"([.;:!?]),", r"\1", text)
    text = re.sub(r"(?<=[,;:!?])(?=[^\s\d])", " ", text)
    return text.strip(" ,")


__all__ = ["DIGITS", "LETTERS", "UNITS", "SpeechText", "is_syllable", "roman"]
