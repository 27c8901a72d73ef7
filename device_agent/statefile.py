"""Small JSON state files that survive kill -9 and power loss: written whole, then renamed.

The agent keeps a few small records on the SD card (commands already seen, the current
group membership, the local schedule). Each is one JSON file replaced atomically: a
reader after a crash finds either the old version or the new one, never half of each.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JsonStateFile:
    """One JSON document on disk, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Any:
        """The saved document, or None if there is none (or it was unreadable, set aside)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            log.error(
                "%s could not be read (%s); moved it to %s and starting from empty",
                self.path, exc, aside,
            )
            return None

    def save(self, document: Any) -> None:
        data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
