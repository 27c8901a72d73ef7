"""Live reload: notice edited playlists and fleet while the controller runs.

A thread polls the files' modification time and size every couple of seconds (no
inotify: the same on every file system, network shares included). A change is acted on
once the files have held still for one poll, so a file caught half-saved by an editor
is not refused for nothing. Adding or removing a playlist file in a watched folder is a
change too. `poke()` asks for a reload at once (SIGHUP in `loa-controller run`).

What a reload does (validate together, swap atomically, or refuse and keep the previous
schedule) is `Controller.reload()` in controller/main.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0

Signature = tuple[tuple[str, int | None, int | None], ...]


def watched_files(fleet: Path, playlists: Iterable[Path]) -> list[Path]:
    """The fleet file, each playlist file, each playlist folder and the *.yaml/*.yml in it."""
    found = [fleet]
    for path in playlists:
        found.append(path)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
    return found


def signature(paths: Sequence[Path]) -> Signature:
    """(path, mtime in ns, size) of each path; None for a missing one."""
    out: list[tuple[str, int | None, int | None]] = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            out.append((str(path), None, None))
            continue
        out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


class FileWatcher:
    """Calls `on_change` from its own thread when the watched files changed and settled."""

    def __init__(
        self,
        paths: Callable[[], Sequence[Path]],
        on_change: Callable[[], object],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._paths = paths
        self._on_change = on_change
        self._interval = interval_s
        self._stop = threading.Event()
        self._poked = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded: Signature = ()

    def start(self, loaded: Signature | None = None) -> None:
        """Start watching. `loaded`: the files' signature when they were last loaded
        (taken before loading them); by default, the files as they are now."""
        self._loaded = loaded if loaded is not None else signature(self._paths())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="reload-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def poke(self) -> None:
        """Reload at once, changed or not."""
        self._poked.set()

    def _run(self) -> None:
        previous = self._loaded
        while not self._stop.is_set():
            poked = self._poked.wait(self._interval)
            if self._stop.is_set():
                return
            self._poked.clear()
            current = signature(self._paths())
            settled = current == previous
            previous = current
            if poked or (current != self._loaded and settled):
                self._loaded = current
                try:
                    self._on_change()
                except Exception:
                    log.exception("reloading the playlists and the fleet failed")
