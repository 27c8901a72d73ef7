"""What the fuzz modes share: a process under test, a relay board on a pty, the broker.

- `Watched`: a real `loa-agent run` or `loa-controller run` process, its log, its
  resident memory and CPU time (bench_proc), whether it is still alive, and when it has
  gone quiet (its CPU time no longer moves: it has worked through what it was sent);
- `PtyRelay`: an LCUS relay board on a pseudo-terminal, as the agent's relay driver opens
  it in the field (serial_for_url on a tty): it records every frame the agent writes and
  counts those that switch the amplifier on;
- `fuzz_broker`: a private mosquitto (bench_broker) whose queues hold a whole run, so
  what the fuzzer sends reaches the process under test instead of being dropped by the
  broker.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from bench_broker import TUNING, PrivateMosquitto
from bench_proc import cpu_times, rss_bytes, rss_parts

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024

#: The broker's tuning for a fuzz run: a subscriber's queue holds a whole run.
FUZZ_TUNING: tuple[tuple[str, str], ...] = tuple(
    (key, "1000000" if key == "max_queued_messages" else value) for key, value in TUNING
)


def fuzz_broker(work: Path) -> PrivateMosquitto:
    broker = PrivateMosquitto(work / "broker", tuning=FUZZ_TUNING)
    broker.start()
    return broker


def say(message: str) -> None:
    """A progress line (stderr: stdout is for the JSON)."""
    print(f"[fuzz {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Watched:
    """A Loa process started with `python -m <module> [-v] run --config FILE`."""

    def __init__(self, module: str, config: Path, log: Path, *, verbose: bool = False) -> None:
        self.log = log
        args = [sys.executable, "-m", module, *(["-v"] if verbose else []), "run",
                "--config", str(config)]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                stderr=subprocess.STDOUT, cwd=config.parent,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        return rss_bytes(self.pid) / MB

    def rss_parts_mb(self) -> tuple[float, float]:
        """Resident memory now: private (RssAnon), and pages of files (RssFile: the
        program and the libraries it has touched so far, shared with other processes)."""
        anon, files = rss_parts(self.pid)
        return anon / MB, files / MB

    def cpu_s(self) -> float:
        return cpu_times(self.pid).total_s

    def wait_quiet(self, *, busy_below: float = 0.05, window_s: float = 1.0,
                   timeout_s: float = 600.0) -> float:  # fmt: skip
        """Wait until the process uses less than busy_below of a core over window_s (it
        has worked through its input); the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s and self.alive():
            before = self.cpu_s()
            time.sleep(window_s)
            if self.cpu_s() - before < busy_below * window_s:
                break
        return time.monotonic() - started

    def settled_rss_mb(self, samples: int = 5, every_s: float = 0.2) -> float:
        """The median of a few samples of resident memory."""
        values = []
        for _ in range(samples):
            values.append(self.rss_mb())
            time.sleep(every_s)
        return sorted(values)[len(values) // 2]

    def tracebacks(self) -> int:
        """Tracebacks in its log (each one an error the code did not expect)."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace").count("Traceback (")
        except OSError:
            return 0

    def lines_matching(self, pattern: str) -> int:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return 0
        return len(re.findall(pattern, text))

    def log_bytes(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class PtyRelay:
    """An LCUS relay board on a pty: `url` is what the agent's config names."""

    def __init__(self, link: Path, channel: int = 1) -> None:
        self.link = link
        self.on_frame = bytes([0xA0, channel, 0x01, (0xA0 + channel + 1) & 0xFF])
        self._lock = threading.Lock()
        self._received = bytearray()
        self._marks: list[int] = []
        master, slave = os.openpty()
        tty.setraw(slave)
        self._master, self._slave = master, slave
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(slave))
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="pty-relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return str(self.link)

    def switched_on(self) -> int:
        """How many times the agent has switched the amplifier on so far."""
        with self._lock:
            return bytes(self._received).count(self.on_frame)

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._master, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select()}
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self._received += data

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            os.close(fd)
        self.link.unlink(missing_ok=True)
