"""Approval: a programme marked `requires_approval: true` airs only once a manager approved it.

What is approved is the programme's content: the SHA-256 of each of its bulletins,
computed from the bytes of the bulletin's audio files in order (intro, files, outro).
An approval stays valid for every airing of the programme while that content is the
same; replace or edit a bulletin's audio (the weekly law programme gets a new
recording) and the programme needs approval again. The schedule and targets are not
part of it: they are the playlist's business, checked by `loa-controller check`.

Approvals are kept in the store (who, when, which content), so the CLI (`loa-controller
approve`, `loa-controller pending`) and the running controller see the same ones. Every
approval, whoever gives it (the CLI, the approvals page, the API), goes through
`Approvals.approve`, which also writes it to the audit log (controller.audit).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from controller.audit import AuditLog
from controller.fleet import Fleet
from controller.playlist import Bulletin, Programme
from controller.store import Approval, Store
from protocol.l10n import Text, When


class ContentUnreadableError(OSError):
    """A bulletin's audio file cannot be read, so its content cannot be approved."""

    def __init__(self, path: Path, why: str | None) -> None:
        super().__init__(Text("{path}: cannot read it ({why})", path=path, why=why))
        self.path = path


class FileHashes:
    """SHA-256 of files, computed once per (path, size, mtime)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[int, int, str]] = {}

    def of(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ContentUnreadableError(path, exc.strerror) from None
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise ContentUnreadableError(path, exc.strerror) from None
        value = digest.hexdigest()
        with self._lock:
            self._known[path] = (stat.st_size, stat.st_mtime_ns, value)
        return value


def bulletin_hash(bulletin: Bulletin, hashes: FileHashes) -> str:
    """The content hash of one bulletin: its audio files' hashes, with their roles, in order."""
    parts = [("intro", bulletin.intro)] if bulletin.intro else []
    parts += [("file", f) for f in bulletin.files]
    parts += [("outro", bulletin.outro)] if bulletin.outro else []
    text = json.dumps([[role, hashes.of(path)] for role, path in parts])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ApprovalState:
    """Where a programme stands: approved (by whom, when) or pending (and why)."""

    programme: str
    content: list[str]
    approval: Approval | None  # of exactly this content
    previous: Approval | None  # the latest approval of other content, if any

    @property
    def approved(self) -> bool:
        return self.approval is not None

    def describe(self, tz: tzinfo | None = None) -> Text:
        """Approved by whom and when, or why it is pending (str(): the process's language)."""
        if self.approval is not None:
            return Text("approved by {who} at {at}", who=self.approval.approved_by,
                        at=When(self.approval.approved_at, tz))
        if self.previous is not None:
            return Text("pending: its audio changed since {who} approved it at {at}",
                        who=self.previous.approved_by, at=When(self.previous.approved_at, tz))
        return Text("pending: never approved")


class Approvals:
    """Approvals of programmes' current content, kept in the store."""

    def __init__(
        self, store: Store, hashes: FileHashes | None = None, audit: AuditLog | None = None
    ) -> None:
        self._store = store
        self._hashes = hashes or FileHashes()
        self._audit = audit or AuditLog(store)

    def content(self, programme: Programme) -> list[str]:
        """The content hashes of the programme's bulletins, in order."""
        return [bulletin_hash(b, self._hashes) for b in programme.bulletins]

    def state(self, programme: Programme) -> ApprovalState:
        content = self.content(programme)
        approval = self._store.approvals.of_content(programme.id, content)
        previous = None if approval else self._store.approvals.latest(programme.id)
        return ApprovalState(programme.id, content, approval, previous)

    def is_approved(self, programme: Programme) -> bool:
        """Whether it may air: no approval needed, or its current content is approved."""
        if not programme.requires_approval:
            return True
        try:
            content = self.content(programme)
            return self._store.approvals.of_content(programme.id, content) is not None
        except ContentUnreadableError:
            return False  # unreadable audio: the dispatch reports it when preparing

    def approve(
        self, programme: Programme, by: str, at: datetime, *, fleet: Fleet, source: str
    ) -> ApprovalState:
        """Approve the programme's current content, and write that to the audit log: who
        (`by`), when, the content hashes, its targets and the clusters they reach in
        `fleet` now, and where it came from (`source`: cli, web, api)."""
        content = self.content(programme)
        self._store.approvals.add(programme.id, content, by, at)
        try:
            clusters = fleet.resolve(programme.targets, programme.exclude)
        except KeyError:  # a target the fleet no longer has: `check` names it
            clusters = []
        self._audit.record(
            at=at, user=by[:64], action="approve", subject=programme.id, title=programme.name,
            text=" ".join(content), targets=list(programme.targets), clusters=clusters,
            detail=f"source={source}",
        )
        return self.state(programme)
