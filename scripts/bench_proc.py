"""What a process costs, read from Linux's /proc: CPU time, resident memory, children."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    user_s: float
    system_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.system_s

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user_s + other.user_s, self.system_s + other.system_s)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user_s - other.user_s, self.system_s - other.system_s)


NO_CPU = CpuTimes(0.0, 0.0)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_times(pid: int) -> CpuTimes:
    """User and system CPU seconds the process has used (its own threads, not children)."""
    fields = _stat_fields(pid)
    if fields is None:
        return NO_CPU
    # After the name: state(3) ppid(4) ... utime(14) stime(15), so index 11 and 12.
    return CpuTimes(int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)


def total_cpu(pids: list[int]) -> CpuTimes:
    total = NO_CPU
    for pid in pids:
        total = total + cpu_times(pid)
    return total


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory now (VmRSS); 0 once the process is gone."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory the process has had (VmHWM)."""
    return _status_kb(pid, "VmHWM") * 1024


def rss_parts(pid: int) -> tuple[int, int]:
    """Resident memory now split into private (RssAnon) and file-backed pages (RssFile:
    the program and its shared libraries, shared with every process that maps them)."""
    return _status_kb(pid, "RssAnon") * 1024, _status_kb(pid, "RssFile") * 1024


def children(pid: int) -> list[int]:
    """Every descendant of pid (scanning /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
