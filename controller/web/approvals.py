"""Approvals as a manager sees them on the page and in the API: the programmes that need
approval within the manager's reach, and approving one. The approval itself, and its
audit row, are controller.approval.Approvals.approve, as for `loa-controller approve`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.approval import ContentUnreadableError
from controller.playlist import Programme
from controller.users import User
from controller.web.context import WebContext
from protocol.l10n import Text


@dataclass(frozen=True)
class ApprovalRow:
    programme: Programme
    approved: bool
    #: Approved by whom and when, or why it is pending (shown in the reader's language).
    describe: Text
    clusters: int
    #: The audio profiles among its clusters (controller.audio_chain): each bulletin has a
    #: listen button per profile, the bulletin as those clusters will get it.
    profiles: tuple[str, ...] = ()
    #: Its next airings (local times), as plan() has them: what approving lets air.
    next_airings: tuple[datetime, ...] = ()


def approval_rows(ctx: WebContext, user: User) -> list[ApprovalRow]:
    """Every programme that needs approval and reaches only clusters within the user's
    scope, by id; a programme whose audio cannot be read is listed as pending, saying why."""
    if ctx.approvals is None or ctx.playlists is None:
        return []
    reach = ctx.service.reach(user)
    fleet = ctx.service.fleet()
    rows = []
    for programme in sorted(ctx.playlists().programmes.values(), key=lambda p: p.id):
        if not programme.requires_approval:
            continue
        try:
            clusters = fleet.resolve(programme.targets, programme.exclude)
        except KeyError:
            continue
        if not set(clusters) <= reach:
            continue
        profiles = tuple(fleet.by_profile(clusters))
        airings = next_airings(ctx, programme)
        try:
            state = ctx.approvals.state(programme)
            rows.append(ApprovalRow(programme, state.approved, state.describe(ctx.tz),
                                    len(clusters), profiles, airings))
        except ContentUnreadableError as exc:
            why = Text("pending: the audio file {file} cannot be read", file=exc.path.name)
            rows.append(ApprovalRow(programme, False, why, len(clusters), profiles, airings))
    return rows


AIRINGS_SHOWN = 5
AIRINGS_WITHIN = timedelta(days=62)


def next_airings(ctx: WebContext, programme: Programme) -> tuple[datetime, ...]:
    """The programme's next airings from now (at most AIRINGS_SHOWN, within two months),
    in local time: the occurrences plan() gives the scheduler."""
    now = ctx.service.now()
    found = []
    for when in programme.occurrences(now, now + AIRINGS_WITHIN, ctx.tz):
        found.append(when.astimezone(ctx.tz))
        if len(found) == AIRINGS_SHOWN:
            break
    return tuple(found)


def approve(ctx: WebContext, user: User, programme_id: str, source: str) -> ApprovalRow | None:
    """Approve a programme of approval_rows() as `user` (from `source`: web, api); its row
    as it now stands, or None if it is not one of them. ContentUnreadableError when a
    bulletin's audio cannot be read."""
    if ctx.approvals is None:
        return None
    for row in approval_rows(ctx, user):
        if row.programme.id == programme_id:
            state = ctx.approvals.approve(
                row.programme, user.name, ctx.service.now(), fleet=ctx.service.fleet(),
                source=source,
            )
            return ApprovalRow(row.programme, state.approved, state.describe(ctx.tz),
                               row.clusters)
    return None
