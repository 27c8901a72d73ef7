"""What the agent knows about its own health: the box (disk, temperature, uptime) and
how far its clock is from the controller's. The heartbeat is built from these.

Clock offset to the controller
------------------------------
Every command the controller signs carries `issued_at`, the controller's clock when it
signed. When an admitted command arrives, the agent notes `local receive time −
issued_at`, which is the offset (agent clock − controller clock) *plus* the time the
command took from the controller to the agent (signing, the broker, the link). That
delay is never negative, so the smallest of recent samples is the best estimate, and
its error is the smallest delay seen: a few milliseconds on a LAN, typically
50–300 ms over 4G. The estimate is biased towards "agent ahead"; it is never off the
other way. Samples are kept for an hour (at most 64); acknowledgements alone (one per
batch of events) keep it fresh. Left out as samples: retained membership messages
(signed long before they are delivered), and anything received before a step of the
wall clock (NTP setting the time), which would mix two clocks.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: Where Linux shows its thermal sensors.
THERMAL_ROOT = Path("/sys/class/thermal")
#: Sensor types that measure the SoC / CPU (Raspberry Pi: cpu-thermal; PCs: x86_pkg_temp).
CPU_SENSOR_HINTS = ("cpu", "soc", "x86_pkg", "core", "package")

OFFSET_WINDOW_S = 3600.0
OFFSET_MAX_SAMPLES = 64
#: A wall clock that moved against the monotonic one by more than this was set (stepped).
CLOCK_STEP_S = 0.5


def disk_free(path: Path) -> int | None:
    """Bytes free for the agent on the file system holding path (None if unreadable)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def folder_size(path: Path) -> int | None:
    """Bytes in the regular files directly under path (the content cache is flat)."""
    try:
        total = 0
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
        return total
    except FileNotFoundError:
        return 0
    except OSError:
        return None


def cpu_temperature(root: Path = THERMAL_ROOT) -> float | None:
    """The CPU temperature in °C where the kernel shows one; None where it does not."""
    readings: list[tuple[bool, float]] = []
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    for zone in zones:
        try:
            millidegrees = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            kind = (zone / "type").read_text().strip().lower()
        except OSError:
            kind = ""
        readings.append((any(hint in kind for hint in CPU_SENSOR_HINTS), millidegrees / 1000))
    if not readings:
        return None
    cpu = [value for is_cpu, value in readings if is_cpu]
    return round(cpu[0] if cpu else readings[0][1], 1)


def system_uptime(proc_uptime: Path = Path("/proc/uptime")) -> float | None:
    """Seconds since the box booted (a reboot shows as a small number)."""
    try:
        return float(proc_uptime.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class _Sample:
    offset_s: float  # local receive time - issued_at
    mono: float  # time.monotonic() at receipt
    wall_minus_mono: float  # to notice a step of the wall clock since


class ClockOffset:
    """Estimates this agent's clock minus the controller's from signed commands.

    Thread-safe. The monotonic times (`mono`) can be given, for tests."""

    def __init__(
        self,
        *,
        window_s: float = OFFSET_WINDOW_S,
        max_samples: int = OFFSET_MAX_SAMPLES,
    ) -> None:
        self._window_s = window_s
        self._samples: deque[_Sample] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def add(self, issued_at: datetime, received_at: datetime, mono: float | None = None) -> None:
        """A command signed at issued_at (controller clock) arrived at received_at (ours)."""
        mono = time.monotonic() if mono is None else mono
        sample = _Sample(
            offset_s=(received_at - issued_at).total_seconds(),
            mono=mono,
            wall_minus_mono=received_at.timestamp() - mono,
        )
        with self._lock:
            self._samples.append(sample)

    def estimate(self, now: datetime, mono: float | None = None) -> float | None:
        """Agent clock − controller clock in seconds (None without recent samples)."""
        mono = time.monotonic() if mono is None else mono
        wall_minus_mono = now.timestamp() - mono
        with self._lock:
            fresh = [
                s for s in self._samples
                if mono - s.mono <= self._window_s
                and abs(s.wall_minus_mono - wall_minus_mono) <= CLOCK_STEP_S
            ]
            self._samples = deque(fresh, maxlen=self._samples.maxlen)
        if not fresh:
            return None
        return round(min(s.offset_s for s in fresh), 3)
