"""Delivery confirmed end to end: per play and per cluster, whether the agent admitted it.

QoS 1 and a persistent session are not a delivery guarantee: a broker killed -9 loses
the messages it queued since its last autosave, and so does a broker restored from an
old backup, a cluster node that dies or a session that expires (docs/operations.md). So
the controller does not take a play as delivered once it has handed it to its MQTT
client. For every cluster a play targets it keeps a row (table `confirmations`) that
stays `pending` until the cluster reports anything about the play: its `received`
event, or any later one. Then:

- **Sent again until confirmed.** A play with pending clusters is sent again to each of
  them on the cluster's own command topic, `confirm_within` after it was sent, then with
  the wait doubling up to `max_wait`, until every cluster has confirmed it or its latest
  start has passed. A resend is a new command (new id, signed now, addressed to that
  cluster alone) carrying the same play body and play id: an agent schedules a play id
  once, and answers a play it already holds with its `received` again
  (docs/protocol.md, "Confirmation and resend"). Clusters the controller holds to be
  offline are not sent to; they get every pending play still able to start when they
  come back online (`catch_up`). Nothing is resent while the controller's own link is
  down; once it reconnects everything pending is due at once (`resend_now`, run by the
  broker watch of controller/reconnect.py).
- **What never arrived is recorded.** A cluster still pending `miss_grace` after the
  play's latest start is recorded as missed: `not received: no confirmation from the
  cluster by <latest start>` (with the cluster's reason when it refused the command).
  Anything the cluster reports about the play later (it played while the controller
  could not hear it) makes it confirmed: the agents' events are the record.
- **Withdrawn.** A play the controller stops (a reload withdrew it, an operator stopped
  an announcement) is no longer sent to the clusters that have not confirmed it.

The rows of a play are written once it is published (after its audio: nothing holds up
an announcement); a `received` stored before them is found in the events table, which is
looked at before anything is sent again or given up on: the agents' events are the
record, the rows a summary of it. A controller that starts writes the rows missing for
plays whose latest start is less than an hour ago (it stopped in between, or an older
controller sent them).

Bounded work: one deadline per play in a heap (not one per cluster); a pass looks at no
more than MAX_PLAYS_PER_PASS plays and sends no more than MAX_SENDS_PER_PASS commands,
then hands the intake's writer thread (which runs it) back to the events; what is left is
due at once. As events come in, rows are confirmed by `received` events (one per play
and cluster), and by other events only for plays still watched.

Threads: `run_due`, `confirm` and `catch_up` run on the intake's writer thread; `expect`
and `withdraw` on the dispatcher's or the web app's; `resend_now` on the link's. The
heap is under a lock; resends and withdrawals are serialised, so a stopped play is not
sent again after its stop.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)

from controller.store import aware, utc
from controller.store.engine import KEYS_PER_LOOKUP, keys_in
from controller.store.schema import clusters, confirmations, events, plays
from protocol.clock import Clock
from protocol.messages import Event

log = logging.getLogger(__name__)

PENDING = "pending"  # sent, nothing heard from the cluster about it yet
CONFIRMED = "confirmed"  # the cluster reported on it (received, or anything later)
MISSED = "missed"  # its latest start passed without a confirmation: not received
WITHDRAWN = "withdrawn"  # the controller stopped it before the cluster confirmed it
# The table is controller.store.schema.confirmations (revision 0002).

#: Plays looked at, and commands sent, in one pass of the writer thread at most.
MAX_PLAYS_PER_PASS = 50
MAX_SENDS_PER_PASS = 200
#: Plays sent again to one cluster that comes back online, at most (the most urgent).
CATCH_UP_MAX = 100
#: Plays with a latest start up to this long ago are watched by a controller that starts
#: and finds no record of their confirmations.
BACKFILL_WITHIN = timedelta(hours=1)
#: Clusters named in one log line, at most.
NAMED_IN_LOG = 10


@dataclass(frozen=True)
class ResendPolicy:
    """When commands not confirmed are sent again, and when a cluster is given up on."""

    confirm_within: timedelta = timedelta(seconds=10)  # the first resend, after the send
    max_wait: timedelta = timedelta(minutes=5)  # the longest wait between two resends
    miss_grace: timedelta = timedelta(seconds=15)  # after the latest start: not received
    # After the controller starts, plays whose latest start passed while it was down
    # wait this long for what the agents' outboxes send again before being given up on.
    start_grace: timedelta = timedelta(seconds=60)


# (cluster, PlayBody JSON) -> the id of the command sent (None: it could not be sent).
Resend = Callable[[str, str], str | None]


@dataclass
class ConfirmationStats:
    """What the tracker did since the controller started (in `fleet`'s counts: the store)."""

    expected: int = 0  # (play, cluster) pairs sent
    confirmed: int = 0
    resent: int = 0  # commands sent again (catch-ups included)
    caught_up: int = 0  # of which to clusters back online
    not_received: int = 0  # (play, cluster) pairs recorded missed
    late: int = 0  # confirmed after being recorded not received
    withdrawn: int = 0
    passes: int = 0


@dataclass(frozen=True)
class NotReceived:
    """A play a cluster never confirmed by its latest start."""

    play_id: str
    cluster: str
    bulletin: str | None
    latest_start: datetime
    at: datetime  # when the controller recorded it
    reason: str


@dataclass
class _Watch:
    """One play with clusters still pending, and when to look at it next."""

    play_id: str
    latest_start: datetime
    wait: timedelta  # before the next resend
    due: datetime
    # A round of resends cut short by the pass's budget: the clusters it has done.
    round_done: set[str] | None = None
    # Clusters sent it within confirm_within (a catch-up) are left out of a round, except
    # in the round after a reconnection: what went out before it may be lost.
    skip_recent: bool = True
    # Not given up on before this (a play found pending when the controller started: the
    # agents' outboxes send their backlog first).
    not_before: datetime | None = None


def not_received_reason(latest_start: datetime, tz: tzinfo, refusal: str | None = None) -> str:
    when = latest_start.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")
    reason = f"not received: no confirmation from the cluster by {when}"
    if refusal:
        reason += f" (it refused the command: {refusal})"
    return reason


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:NAMED_IN_LOG])
    more = len(items) - NAMED_IN_LOG
    return shown + (f" and {more} more" if more > 0 else "")


class ConfirmationRecords:
    """Reading the confirmations (for `loa-controller fleet`, the urgent status page)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def waiting_by_cluster(self) -> dict[str, int]:
        """Per cluster: plays sent to it that it has not confirmed yet."""
        c = confirmations.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(c.cluster, func.count()).where(c.state == PENDING).group_by(c.cluster)
            ).all()
        return {cluster: int(count) for cluster, count in rows}

    def of_play(self, play_id: str) -> dict[str, tuple[str, int, str | None, datetime | None]]:
        """Per cluster of one play: (state, sends, reason, when missed)."""
        c = confirmations.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(c.cluster, c.state, c.sends, c.reason, c.missed_at)
                .where(c.play_id == play_id)
            ).all()
        return {
            cluster: (state, int(sends), reason, aware(at) if at is not None else None)
            for cluster, state, sends, reason, at in rows
        }

    def not_received(self, since: datetime, limit: int = 1000) -> list[NotReceived]:
        """Plays recorded not received since `since`, the latest first."""
        c = confirmations.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(c.play_id, c.cluster, plays.c.bulletin, plays.c.latest_start,
                       c.missed_at, c.reason)
                .select_from(confirmations.join(plays, plays.c.play_id == c.play_id))
                .where(c.state == MISSED, c.missed_at >= utc(since))
                .order_by(c.missed_at.desc())
                .limit(limit)
            ).all()
        return [
            NotReceived(play_id, cluster, bulletin, aware(latest), aware(at), reason or "")
            for play_id, cluster, bulletin, latest, at, reason in rows
        ]

    def latest_not_received(self) -> dict[str, NotReceived]:
        """Per cluster, the latest play it was recorded not to have received."""
        c = confirmations.c
        latest = (
            select(c.cluster, func.max(c.missed_at).label("at"))
            .where(c.state == MISSED).group_by(c.cluster).subquery()
        )
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(c.play_id, c.cluster, plays.c.bulletin, plays.c.latest_start,
                       c.missed_at, c.reason)
                .select_from(
                    confirmations
                    .join(latest, and_(latest.c.cluster == c.cluster, latest.c.at == c.missed_at))
                    .join(plays, plays.c.play_id == c.play_id)
                )
                .where(c.state == MISSED)
            ).all()
        return {
            cluster: NotReceived(play_id, cluster, bulletin, aware(latest_start), aware(at),
                                 reason or "")
            for play_id, cluster, bulletin, latest_start, at, reason in rows
        }

    def count_not_received(self, since: datetime) -> int:
        c = confirmations.c
        with self._engine.connect() as conn:
            found = conn.execute(
                select(func.count()).select_from(confirmations)
                .where(c.state == MISSED, c.missed_at >= utc(since))
            ).scalar()
        return int(found or 0)


class Confirmations(ConfirmationRecords):
    """The tracker: rows per (play, cluster), resends on deadlines, misses recorded."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        resend: Resend,
        connected: Callable[[], bool] = lambda: True,
        tz: tzinfo = UTC,
        policy: ResendPolicy | None = None,
    ) -> None:
        super().__init__(engine)
        self._clock = clock
        self._resend = resend
        self._connected = connected
        self._tz = tz
        self.policy = policy or ResendPolicy()
        self._lock = threading.Lock()  # the heap and the watches
        self._sending = threading.RLock()  # resends and withdrawals, one at a time
        self._watches: dict[str, _Watch] = {}
        self._heap: list[tuple[datetime, int, str]] = []
        self._order = itertools.count()
        self._started = clock.now()
        self.stats = ConfirmationStats()
        self._load()

    # --- sending (the dispatcher's and the web app's threads) ------------------------------

    def expect(
        self,
        play_id: str,
        cluster_ids: Collection[str],
        latest_start: datetime,
        command_id: str,
        now: datetime,
    ) -> None:
        """A play was published to these clusters. A `received` that beat this here is
        found in the events before anything is sent again (`_heard`)."""
        c = confirmations.c
        wanted = list(dict.fromkeys(cluster_ids))
        with self._engine.begin() as conn:
            known = {
                row[0] for row in conn.execute(select(c.cluster).where(c.play_id == play_id))
            }
            new = [cluster for cluster in wanted if cluster not in known]
            if new:  # nothing but short strings per row: 1,000 clusters cost milliseconds
                conn.execute(insert(confirmations), [
                    {"play_id": play_id, "cluster": cluster, "state": PENDING, "sends": 1,
                     "command_id": command_id}
                    for cluster in new
                ])
            if known:  # the same play sent again (a restart between sending and recording)
                conn.execute(
                    update(confirmations)
                    .where(c.play_id == play_id, c.state == PENDING)
                    .values(command_id=command_id, last_sent=utc(now), sends=c.sends + 1)
                )
        with self._lock:
            self.stats.expected += len(new)
            self._arm(play_id, latest_start, now + self.policy.confirm_within, fresh=True)

    def withdraw(self, play_id: str | None, cluster_ids: Collection[str], now: datetime) -> int:
        """The controller stops this play (None: what is on air or due now) on these
        clusters: those that have not confirmed it are not sent it again."""
        if not cluster_ids:
            return 0
        c = confirmations.c
        with self._sending, self._engine.begin() as conn:
            query = update(confirmations).where(
                c.state == PENDING, c.cluster.in_(list(cluster_ids))
            )
            if play_id is not None:
                query = query.where(c.play_id == play_id)
            else:
                due = select(plays.c.play_id).where(plays.c.start_at <= utc(now))
                query = query.where(c.play_id.in_(due))
            count = int(conn.execute(query.values(state=WITHDRAWN)).rowcount or 0)
        with self._lock:
            self.stats.withdrawn += count
        return count

    # --- the link's thread -------------------------------------------------------------------

    def resend_now(self) -> None:
        """Everything pending is due at once (the controller reconnected to the broker)."""
        now = self._clock.now()
        with self._lock:
            for watch in self._watches.values():
                watch.wait = self.policy.confirm_within
                watch.round_done = None
                watch.skip_recent = False
                watch.due = min(now, self._give_up_at(watch))
                heapq.heappush(self._heap, (watch.due, next(self._order), watch.play_id))

    # --- the intake's writer thread ----------------------------------------------------------

    def next_due(self) -> datetime | None:
        with self._lock:
            while self._heap:
                due, _, play_id = self._heap[0]
                watch = self._watches.get(play_id)
                if watch is not None and watch.due == due:
                    return due
                heapq.heappop(self._heap)  # superseded by a later push
            return None

    def run_due(self, now: datetime | None = None) -> None:
        """Resend, or give up on, the plays whose deadline has come (a bounded pass)."""
        now = now or self._clock.now()
        plays_left, sends_left = MAX_PLAYS_PER_PASS, MAX_SENDS_PER_PASS
        self.stats.passes += 1
        while plays_left > 0 and sends_left > 0:
            watch = self._pop_due(now)
            if watch is None:
                return
            plays_left -= 1
            try:
                if now >= self._give_up_at(watch):
                    self._give_up(watch, now)
                elif not self._connected():
                    # Nothing goes out meanwhile; reconnecting makes it due at once.
                    self._rearm(watch, now + watch.wait)
                else:
                    sends_left -= self._resend_round(watch, now, sends_left)
            except Exception:  # the store is down: look at this play again later
                log.exception("could not look at play %s; trying again", watch.play_id)
                self._rearm(watch, now + self.policy.confirm_within, force=True)

    def confirm(self, fresh: Sequence[Event]) -> None:
        """Events just stored (a batch listener of the intake): the clusters that reported
        on a play have confirmed it; a refusal of one of its commands is kept as the
        reason, should it never be confirmed."""
        with self._lock:
            watched = set(self._watches)
        pairs = {
            (ev.play_id, ev.cluster) for ev in fresh
            if ev.play_id and (ev.kind == "received" or ev.play_id in watched)
        }
        refusals = [
            {"b_ref": ev.ref, "b_cluster": ev.cluster, "b_reason": (ev.reason or "")[:500]}
            for ev in fresh if ev.kind == "rejected" and ev.ref
        ]
        if not pairs and not refusals:
            return
        now = self._clock.now()
        c = confirmations.c
        late: list[tuple[str, str]] = []
        with self._engine.begin() as conn:
            found: list[tuple[str, str, str]] = []
            keys = list(pairs)
            for start in range(0, len(keys), KEYS_PER_LOOKUP):
                part = keys[start : start + KEYS_PER_LOOKUP]
                clause, values = keys_in((c.play_id, c.cluster), part)
                found.extend(
                    (row[0], row[1], row[2]) for row in conn.execute(
                        select(c.play_id, c.cluster, c.state).where(
                            clause, c.state.in_((PENDING, MISSED)),
                        ),
                        values,
                    )
                )
            if found:
                conn.execute(
                    update(confirmations)
                    .where(c.play_id == bindparam("b_play"), c.cluster == bindparam("b_cluster"))
                    .values(state=CONFIRMED, confirmed_at=utc(now)),
                    [{"b_play": play, "b_cluster": cluster} for play, cluster, _ in found],
                )
                late = [(play, cluster) for play, cluster, state in found if state == MISSED]
            if refusals:
                conn.execute(
                    update(confirmations)
                    .where(
                        c.command_id == bindparam("b_ref"),
                        c.cluster == bindparam("b_cluster"),
                        c.state == PENDING,
                    )
                    .values(refusal=bindparam("b_reason")),
                    refusals,
                )
        with self._lock:
            self.stats.confirmed += len(found)
            self.stats.late += len(late)
        for play, cluster in late:
            log.info(
                "cluster %s reported on play %s after it was recorded as not received: it "
                "had the command after all; its own events now tell what became of it",
                cluster, play,
            )

    def catch_up(self, cluster: str) -> int:
        """A cluster came online: send it again, at once, every play it has not confirmed
        that can still start (the most urgent first, at most CATCH_UP_MAX)."""
        if not self._connected():
            return 0
        now = self._clock.now()
        c = confirmations.c
        with self._sending:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(c.play_id, plays.c.body)
                    .select_from(confirmations.join(plays, plays.c.play_id == c.play_id))
                    .where(c.cluster == cluster, c.state == PENDING,
                           plays.c.latest_start > utc(now), plays.c.body.is_not(None))
                    .order_by(plays.c.latest_start)
                    .limit(CATCH_UP_MAX)
                ).all()
                heard = {
                    row[0] for row in conn.execute(
                        select(events.c.play_id).distinct().where(
                            events.c.cluster == cluster,
                            events.c.play_id.in_([play_id for play_id, _ in rows]),
                        )
                    )
                } if rows else set()
            for play_id in heard:
                self._mark_confirmed(play_id, {cluster}, now)
            sent = [
                (play_id, command_id) for play_id, body in rows if play_id not in heard
                if (command_id := self._send_one(cluster, play_id, body)) is not None
            ]
            self._record_sends(((play_id, cluster, cid) for play_id, cid in sent), now)
        with self._lock:
            self.stats.caught_up += len(sent)
        if sent:
            log.info(
                "cluster %s is online: sent it again %d play(s) it has not confirmed: %s",
                cluster, len(sent), _names([play_id for play_id, _ in sent]),
            )
        return len(sent)

    # --- helpers -----------------------------------------------------------------------------

    def _load(self) -> None:
        """Watch again the plays with clusters pending (the controller restarted)."""
        self._backfill()
        c = confirmations.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(plays.c.play_id, plays.c.latest_start).where(
                    plays.c.play_id.in_(select(c.play_id).where(c.state == PENDING).distinct())
                )
            ).all()
        with self._lock:
            for play_id, latest in rows:
                self._watches[play_id] = _Watch(
                    play_id, aware(latest), self.policy.confirm_within,
                    due=self._started + self.policy.confirm_within,
                    not_before=self._started + self.policy.start_grace,
                )
                self._arm(play_id, aware(latest), self._started + self.policy.confirm_within)
        if rows:
            log.info("watching %d play(s) not yet confirmed by all their clusters", len(rows))

    def _backfill(self) -> None:
        """Rows for the clusters of plays sent without them (the controller stopped between
        sending a play and writing its rows, or a controller older than this table sent
        it) whose latest start is less than BACKFILL_WITHIN ago: confirmed where the
        events say so, pending otherwise."""
        c = confirmations.c
        with self._engine.begin() as conn:
            found = conn.execute(
                select(plays.c.play_id, plays.c.clusters).where(
                    plays.c.latest_start > utc(self._started - BACKFILL_WITHIN),
                    plays.c.play_id.not_in(select(c.play_id).distinct()),
                )
            ).all()
            for play_id, raw in found:
                try:
                    targets = [str(cluster) for cluster in json.loads(raw)]
                except (TypeError, ValueError):
                    log.warning("play %s names its clusters unreadably; not watched", play_id)
                    continue
                heard = _heard(conn, play_id, targets)
                if targets:
                    conn.execute(insert(confirmations), [
                        {"play_id": play_id, "cluster": cluster, "sends": 1,
                         "state": CONFIRMED if cluster in heard else PENDING}
                        for cluster in dict.fromkeys(targets)
                    ])
        if found:
            log.info("%d play(s) sent without a record of their confirmations now have one",
                     len(found))

    def _give_up_at(self, watch: _Watch) -> datetime:
        at = watch.latest_start + self.policy.miss_grace
        return max(at, watch.not_before) if watch.not_before is not None else at

    def _arm(self, play_id: str, latest_start: datetime, due: datetime, *,
             fresh: bool = False) -> None:
        """Watch a play (caller holds the lock); an earlier deadline wins."""
        watch = self._watches.get(play_id)
        if watch is None:
            watch = _Watch(play_id, latest_start, self.policy.confirm_within, due)
            self._watches[play_id] = watch
        elif fresh:
            watch.wait = self.policy.confirm_within
        watch.latest_start = max(watch.latest_start, latest_start)
        watch.due = min(watch.due, due, self._give_up_at(watch))
        heapq.heappush(self._heap, (watch.due, next(self._order), play_id))

    def _rearm(self, watch: _Watch, due: datetime, *, force: bool = False) -> None:
        """Look at the play again at `due` (force: even past its give-up time, which a
        failed attempt at giving up on it has reached)."""
        with self._lock:
            if self._watches.get(watch.play_id) is not watch:
                return
            watch.due = due if force else min(due, self._give_up_at(watch))
            heapq.heappush(self._heap, (watch.due, next(self._order), watch.play_id))

    def _pop_due(self, now: datetime) -> _Watch | None:
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                due, _, play_id = heapq.heappop(self._heap)
                watch = self._watches.get(play_id)
                if watch is not None and watch.due == due:
                    return watch
            return None

    def _drop(self, watch: _Watch) -> None:
        with self._lock:
            if self._watches.get(watch.play_id) is watch:
                del self._watches[watch.play_id]

    def _send_one(self, cluster: str, play_id: str, body: str | None) -> str | None:
        if body is None:
            return None
        try:
            command_id = self._resend(cluster, body)
        except Exception:  # one unreadable play never stops the others
            log.exception("could not send play %s again to cluster %s", play_id, cluster)
            return None
        if command_id is not None:
            with self._lock:
                self.stats.resent += 1
        return command_id

    def _mark_confirmed(self, play_id: str, cluster_ids: Collection[str], now: datetime) -> None:
        c = confirmations.c
        with self._engine.begin() as conn:
            conn.execute(
                update(confirmations)
                .where(c.play_id == play_id, c.cluster.in_(list(cluster_ids)),
                       c.state.in_((PENDING, MISSED)))
                .values(state=CONFIRMED, confirmed_at=utc(now))
            )
        with self._lock:
            self.stats.confirmed += len(cluster_ids)

    def _record_sends(self, sent: Iterable[tuple[str, str, str]], now: datetime) -> None:
        rows = [{"b_play": p, "b_cluster": c, "b_command": cid} for p, c, cid in sent]
        if not rows:
            return
        c = confirmations.c
        with self._engine.begin() as conn:
            conn.execute(
                update(confirmations)
                .where(c.play_id == bindparam("b_play"), c.cluster == bindparam("b_cluster"),
                       c.state == PENDING)
                .values(sends=c.sends + 1, last_sent=utc(now),
                        command_id=bindparam("b_command")),
                rows,
            )

    def _resend_round(self, watch: _Watch, now: datetime, budget: int) -> int:
        """Send the play again to its pending clusters that are not offline; how many."""
        if now > watch.latest_start:  # it can no longer start: only its miss is left
            self._rearm(watch, self._give_up_at(watch))
            return 0
        c = confirmations.c
        done = watch.round_done or set()
        with self._sending:
            with self._engine.connect() as conn:
                play = conn.execute(
                    select(plays.c.sent_at, plays.c.body).where(plays.c.play_id == watch.play_id)
                ).first()
                sent_at, body = (aware(play[0]), play[1]) if play is not None else (now, None)
                pending = [
                    (cluster, aware(last) if last is not None else sent_at)
                    for cluster, last in conn.execute(
                        select(c.cluster, c.last_sent)
                        .where(c.play_id == watch.play_id, c.state == PENDING)
                        .order_by(c.cluster)
                    )
                ]
                heard = _heard(conn, watch.play_id, [row[0] for row in pending])
                pending = [row for row in pending if row[0] not in heard]
                if not pending:
                    self._drop(watch)  # every cluster confirmed it (or it was withdrawn)
                offline = _offline(conn, [row[0] for row in pending])
            recent = now - self.policy.confirm_within
            if heard:  # reported on before its row was written, or a listener failed
                self._mark_confirmed(watch.play_id, heard, now)
            if not pending:
                return 0
            due = [
                cluster for cluster, last in pending
                if cluster not in done and cluster not in offline
                and (not watch.skip_recent or last <= recent)
            ]
            now_sent = due[:budget]
            sent = [
                (cluster, command_id) for cluster in now_sent
                if (command_id := self._send_one(cluster, watch.play_id, body)) is not None
            ]
            self._record_sends(((watch.play_id, cl, cid) for cl, cid in sent), now)
        if len(due) > budget:  # the rest in the next pass, at once
            watch.round_done = done | set(now_sent)
            self._rearm(watch, now)
        else:
            watch.round_done = None
            watch.skip_recent = True
            watch.wait = min(watch.wait * 2, self.policy.max_wait)
            self._rearm(watch, now + watch.wait)
        if sent:
            log.info(
                "play %s: sent again to %d cluster(s) that have not confirmed it: %s "
                "(%d offline wait to come back)",
                watch.play_id, len(sent), _names([cl for cl, _ in sent]), len(offline),
            )
        return len(now_sent)

    def _give_up(self, watch: _Watch, now: datetime) -> None:
        """Record the clusters still pending as missed: not received."""
        c = confirmations.c
        with self._sending, self._engine.begin() as conn:
            pending = conn.execute(
                select(c.cluster, c.refusal)
                .where(c.play_id == watch.play_id, c.state == PENDING)
            ).all()
            if pending:
                # One last look at the record: an event may have slipped past.
                heard = _heard(conn, watch.play_id, [row[0] for row in pending])
                if heard:
                    conn.execute(
                        update(confirmations)
                        .where(c.play_id == watch.play_id, c.cluster.in_(heard))
                        .values(state=CONFIRMED, confirmed_at=utc(now))
                    )
                missed = [
                    {
                        "b_cluster": cluster,
                        "b_reason": not_received_reason(watch.latest_start, self._tz, refusal),
                    }
                    for cluster, refusal in pending if cluster not in heard
                ]
                if missed:
                    conn.execute(
                        update(confirmations)
                        .where(and_(c.play_id == watch.play_id,
                                    c.cluster == bindparam("b_cluster"), c.state == PENDING))
                        .values(state=MISSED, missed_at=utc(now), reason=bindparam("b_reason")),
                        missed,
                    )
            else:
                missed = []
        self._drop(watch)
        if not missed:
            return
        with self._lock:
            self.stats.not_received += len(missed)
        names = sorted(str(row["b_cluster"]) for row in missed)
        log.warning(
            "play %s was not received by %d cluster(s): %s; recorded as missed (%s)",
            watch.play_id, len(missed), _names(names),
            not_received_reason(watch.latest_start, self._tz),
        )


def _heard(conn: Any, play_id: str, cluster_ids: Sequence[str]) -> set[str]:
    """Which of these clusters have reported on the play (the events are the record)."""
    found: set[str] = set()
    for start in range(0, len(cluster_ids), 500):
        part = list(cluster_ids[start : start + 500])
        found.update(
            row[0] for row in conn.execute(
                select(events.c.cluster).distinct().where(
                    events.c.play_id == play_id, events.c.cluster.in_(part)
                )
            )
        )
    return found


def _offline(conn: Any, cluster_ids: Sequence[str]) -> set[str]:
    """Which of these clusters the controller holds to be offline."""
    found: set[str] = set()
    for start in range(0, len(cluster_ids), 500):
        part = list(cluster_ids[start : start + 500])
        found.update(
            row[0] for row in conn.execute(
                select(clusters.c.id).where(clusters.c.id.in_(part), clusters.c.state == "offline")
            )
        )
    return found
