"""What a mistake in a configuration file is, and how it is reported.

Managers and technicians edit the fleet, the playlists and both programs' config by
hand, so every mistake is a `Problem` at ``file:line:col`` saying what is wrong and what
to write instead, and a file is refused with all of its problems at once (`ConfigError`),
never the first alone. Where problems come from: protocol/yamlload.py (the YAML itself)
and protocol/validation.py (the models' rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from protocol.l10n import _

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file, at a 1-based line and column."""

    file: str
    line: int
    col: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = _("warning: ") if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems in reading order: by file, line, column; duplicates dropped."""
    return sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.message))


class ConfigError(Exception):
    """One or more errors in configuration files; str() lists them one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = sort_problems(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
