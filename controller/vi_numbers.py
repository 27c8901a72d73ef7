"""Numbers read out in Vietnamese: cardinals, decimals, ordinals, digit by digit.

One consistent set of readings, the one of written standard Vietnamese and of the
national broadcasters:

- 1 after a tens word is ``mốt`` (21 hai mươi mốt), but ``một`` after ``mười`` (11 mười
  một) and alone;
- 5 after a tens word is ``lăm`` (15 mười lăm, 25 hai mươi lăm), ``năm`` alone and after
  the zero-tens word (105 một trăm linh năm);
- 4 after ``mươi`` is ``tư`` (24 hai mươi tư), ``bốn`` elsewhere (14 mười bốn, 104 một
  trăm linh bốn); the ordinal 4 is ``thứ tư`` and the ordinal 1 ``thứ nhất``;
- 10 is ``mười``, the tens from 20 ``mươi`` (20 hai mươi);
- a hundreds group with no tens says the zero-tens word: ``linh`` (the default) or
  ``lẻ`` (105 một trăm linh năm / một trăm lẻ năm);
- a thousand is ``nghìn`` (the default) or ``ngàn``; then ``triệu``, ``tỷ``, and
  ``nghìn tỷ`` for 10^12;
- inside a number, an empty hundreds place is read (1.005 một nghìn không trăm linh năm;
  2.000.050 hai triệu không trăm năm mươi), an empty group of three is skipped;
- a decimal comma is ``phẩy``; the digits after it are read as a number when there are
  at most three after its leading zeros (1,5 một phẩy năm; 1,05 một phẩy không năm;
  3,25 ba phẩy hai mươi lăm), digit by digit beyond.

The two words that differ between regions (linh/lẻ, nghìn/ngàn) are a setting of the
province (``speech.numbers`` in the controller config); the others are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")
ZeroTens = Literal["linh", "lẻ"]
Thousand = Literal["nghìn", "ngàn"]
#: Cardinals above this are read digit by digit (no one says "nghìn tỷ tỷ").
MAX_CARDINAL = 10**15 - 1


@dataclass(frozen=True)
class NumberWords:
    """How numbers are read; zero_tens and thousand are the province's choice."""

    zero_tens: ZeroTens = "linh"
    thousand: Thousand = "nghìn"

    # --- cardinals ---------------------------------------------------------------------

    def cardinal(self, n: int) -> str:
        """A whole number in words: 1005 -> một nghìn không trăm linh năm."""
        if n < 0:
            return "âm " + self.cardinal(-n)
        if n > MAX_CARDINAL:
            return self.digits(str(n))
        if n == 0:
            return DIGITS[0]
        return " ".join(self._cardinal(n, leading=True))

    def _cardinal(self, n: int, *, leading: bool) -> list[str]:
        if n >= 10**9:
            billions, rest = divmod(n, 10**9)
            said = [*self._cardinal(billions, leading=leading), "tỷ"]
            if rest:
                said += self._cardinal(rest, leading=False)
            return said
        groups = [(n // 10**6) % 1000, (n // 1000) % 1000, n % 1000]
        names = ["triệu", self.thousand, ""]
        words: list[str] = []
        for group, name in zip(groups, names, strict=True):
            if group == 0:
                continue
            full = not leading or bool(words)
            words += self._hundreds(group, full=full)
            if name:
                words.append(name)
        return words

    def _hundreds(self, n: int, *, full: bool) -> list[str]:
        """One group of three digits; full: read an empty hundreds place (không trăm)."""
        hundreds, tens, units = n // 100, (n // 10) % 10, n % 10
        words: list[str] = []
        if hundreds or full:
            words += [DIGITS[hundreds], "trăm"]
            if tens == 0 and units:
                words.append(self.zero_tens)
        if tens == 1:
            words.append("mười")
        elif tens > 1:
            words += [DIGITS[tens], "mươi"]
        if units:
            words.append(_unit(units, tens))
        return words

    # --- other readings ------------------------------------------------------------------

    def digits(self, text: str) -> str:
        """Each digit of text in turn (other characters skipped): 0912 -> không chín một hai."""
        return " ".join(DIGITS[int(c)] for c in text if c.isdigit())

    def decimal(self, whole: str, fraction: str) -> str:
        """whole,fraction: 1,05 -> một phẩy không năm. Both are strings of digits."""
        head = self.cardinal(int(whole)) if whole else DIGITS[0]
        if not fraction:
            return head
        zeros = len(fraction) - len(fraction.lstrip("0"))
        rest = fraction[zeros:]
        words = [DIGITS[0]] * zeros
        if rest and len(rest) <= 3:
            words.append(self.cardinal(int(rest)))
        elif rest:
            words.append(self.digits(rest))
        return f"{head} phẩy {' '.join(words)}"

    def ordinal(self, n: int) -> str:
        """The word after ``thứ``: 1 -> nhất, 4 -> tư, else the cardinal (thứ mười bốn)."""
        if n == 1:
            return "nhất"
        if n == 4:
            return "tư"
        return self.cardinal(n)

    def month(self, n: int) -> str:
        """The word after ``tháng``: 4 -> tư (tháng tư), else the cardinal."""
        return "tư" if n == 4 else self.cardinal(n)


def _unit(units: int, tens: int) -> str:
    if units == 5 and tens >= 1:
        return "lăm"
    if units == 1 and tens >= 2:
        return "mốt"
    if units == 4 and tens >= 2:
        return "tư"
    return DIGITS[units]
