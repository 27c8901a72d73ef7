"""Writing files that hold secrets or must never be seen half-written.

`write_atomic` writes into a new file in the same folder, created with the final mode
from the start (never readable by others, not even for an instant), syncs it, and
renames it over the target. Whatever was there before (a key left 0644, a symlink, a
file owned by someone else's umask) is replaced, never written through: the result has
exactly the mode asked for. A reader sees the old file or the new one, never a part.

The new file keeps the owner and group of the one it replaces where the writer may give
them (root can): a broker's password file handed to the `mosquitto` user once stays
readable by it when it is written again.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

PRIVATE = 0o600  # private keys, passwords, tokens: the owner only
PUBLIC = 0o644  # public keys, configuration without secrets


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """Replace path with data, the new file having exactly `mode` (umask aside: it is
    set explicitly). The folder is created if missing (mode 0700 for a private file)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700 if mode == PRIVATE else 0o755)
    try:
        before: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        before = None
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if (
            before is not None and stat.S_ISREG(before.st_mode)  # a link gives nothing away
            and (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid())
        ):
            # not ours to give (PermissionError): the file is the writer's, as a new one is
            with contextlib.suppress(PermissionError):
                os.fchown(fd, before.st_uid, before.st_gid)
        os.fchmod(fd, mode)  # mkstemp makes it 0600; a public file is opened up here
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
