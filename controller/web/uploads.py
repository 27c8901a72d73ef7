"""Audio uploaded through the page or the API, kept until it is sent."""

from __future__ import annotations

import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import UploadFile

from controller.web.errors import ApiError
from controller.web.limits import MAX_UPLOAD_BYTES
from protocol.l10n import Text

#: Uploads one user may have waiting; a new one beyond them removes the oldest.
PENDING_PER_USER = 5


@dataclass
class Uploads:
    """Audio uploaded through the API, waiting to be sent once; each belongs to one user,
    who has at most PENDING_PER_USER of them waiting (the disk they take is bounded)."""

    root: Path
    _owners: dict[str, tuple[str, Path]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def new_path(self, user: str, filename: str) -> tuple[str, Path]:
        upload_id = secrets.token_hex(16)
        folder = self.root / upload_id
        folder.mkdir()
        suffix = Path(filename or "audio").suffix[:10]
        path = folder / f"upload{suffix}"
        with self._lock:
            self._owners[upload_id] = (user, path)  # dicts keep their insertion order
            mine = [k for k, (owner, _) in self._owners.items() if owner == user]
        for old in mine[:-PENDING_PER_USER]:
            self.discard(old)
        return upload_id, path

    def discard(self, upload_id: str) -> None:
        """Remove an upload once it has been sent (its prepared audio is in the content store)."""
        with self._lock:
            found = self._owners.pop(upload_id, None)
        if found is not None:
            shutil.rmtree(found[1].parent, ignore_errors=True)

    def path_of(self, user: str, upload_id: str) -> Path | None:
        with self._lock:
            found = self._owners.get(upload_id)
        if found is None or found[0] != user:
            return None
        return found[1]


async def save_upload(upload: UploadFile, path: Path) -> int:
    """Copy an uploaded file to `path` a megabyte at a time; its size. ApiError 413 past
    MAX_UPLOAD_BYTES, 400 when empty."""
    size = 0
    with open(path, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise ApiError(
                    413, Text("the audio file is larger than {mb} MB", mb=MAX_UPLOAD_BYTES >> 20)
                )
            out.write(chunk)
    if size == 0:
        raise ApiError(400, Text("the audio file is empty"))
    return size
