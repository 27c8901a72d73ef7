"""A known history of plays, events, confirmations and availability, written into a
store as the controller and the clusters would have written it: the reports' tests
(test_report.py, test_web_reports.py) check every figure against it.

The day 2026-11-27 (Asia/Ho_Chi_Minh) on clusters a-01, a-02 (commune xa-a) and b-01
(xa-b); what each figure must be is in EXPECTED.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from schedule_support import HCM
from sqlalchemy import insert

from controller.store import Store
from controller.store.engine import utc
from controller.store.schema import confirmations, state_changes
from protocol.messages import Event

DAY = date(2026, 11, 27)

# Per cluster: scheduled, aired, interrupted, missed, failed, no result, seconds aired,
# offline seconds, not sent.
EXPECTED = {
    "a-01": (3, 2, 0, 1, 0, 0, 80.0 + 30.0, 3600.0, 0),
    "a-02": (3, 1, 1, 0, 1, 0, 20.0 + 5.0 + 60.0, 3600.0, 0),
    "b-01": (2, 0, 0, 1, 0, 1, 0.0, 9000.0, 0),
}


def at(hour: int, minute: int = 0, second: int = 0, day: date = DAY) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=HCM)


class Writer:
    """Writes what the controller and the clusters would have stored."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seq: dict[str, int] = {}

    def play(self, play_id: str, programme: str | None, level: str, start: datetime,
             clusters: list[str], seconds: float = 60.0) -> None:
        self.store.plays.record(
            play_id=play_id, programme=programme, bulletin=programme or "Thông báo khẩn",
            level=level, start_at=start, latest_start=start + timedelta(minutes=10),
            duration_s=seconds, items=["0" * 64], cluster_ids=clusters,
            urgent=programme is None, sent_at=start - timedelta(minutes=30),
        )

    def events(self, cluster: str, play_id: str,
               *steps: tuple[str, datetime] | tuple[str, datetime, str]) -> None:
        batch = []
        for step in steps:
            kind, when = step[0], step[1]
            reason = step[2] if len(step) == 3 else None  # (kind, at, reason)
            self.seq[cluster] = self.seq.get(cluster, 0) + 1
            batch.append(Event(cluster=cluster, outbox="ob1", seq=self.seq[cluster], at=when,
                               kind=kind, play_id=play_id, reason=reason))
        self.store.events.add(batch, batch[-1].at)

    def not_received(self, play_id: str, cluster: str, reason: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(insert(confirmations).values(
                play_id=play_id, cluster=cluster, state="missed", sends=3, reason=reason,
                missed_at=at(6, 10),
            ))


def write_known_history(s: Store, *, states_directly: bool = False) -> None:
    """The known day. states_directly: write the changes of availability as rows (a store
    whose clusters are live, whose current state must not move); otherwise through
    ClusterRepository.set_state, as the intake does."""
    h = Writer(s)
    # The morning news on all three. a-01: cut by the urgent announcement after 20 s,
    # replayed in full; a-02: cut and not replayed; b-01: never confirmed it.
    h.play("tin-sang@1", "tin-sang", "normal", at(6), ["a-01", "a-02", "b-01"])
    h.events("a-01", "tin-sang@1", ("received", at(5, 30)), ("playing", at(6)),
             ("interrupted", at(6, 0, 20), "preempted by Khẩn (emergency)"),
             ("playing", at(6, 1)), ("finished", at(6, 2)))
    h.events("a-02", "tin-sang@1", ("received", at(5, 30)), ("playing", at(6)),
             ("interrupted", at(6, 0, 20), "preempted by Khẩn (emergency)"))
    h.not_received("tin-sang@1", "b-01",
                   "not received: no confirmation from the cluster by 2026-11-27 06:10")
    # The urgent announcement in xa-a: aired on a-01, failed on a-02 after 5 s.
    h.play("urgent-1", None, "emergency", at(6, 0, 20), ["a-01", "a-02"], seconds=30)
    h.events("a-01", "urgent-1", ("playing", at(6, 0, 20)), ("finished", at(6, 0, 50)))
    h.events("a-02", "urgent-1", ("playing", at(6, 0, 20)),
             ("failed", at(6, 0, 25), "output: the sound card is busy"))
    # The evening news: missed on a-01 (its audio never arrived), aired on a-02, nothing
    # yet from b-01.
    h.play("tin-chieu@1", "tin-chieu", "normal", at(17, 30), ["a-01", "a-02", "b-01"])
    h.events("a-01", "tin-chieu@1",
             ("missed", at(17, 40), "could not start by 17:40: audio not held"))
    h.events("a-02", "tin-chieu@1", ("playing", at(17, 30)), ("finished", at(17, 31)))
    # Not sent at all: the law programme was not approved in time.
    s.dispatches.claim("phap-luat", at(19), "missed", "not approved in time: nobody approved",
                       at(19, 31))
    # The day before: out of the range.
    h.play("tin-sang@0", "tin-sang", "normal", at(6, day=DAY - timedelta(days=1)), ["a-01"])
    h.events("a-01", "tin-sang@0", ("playing", at(6, day=DAY - timedelta(days=1))),
             ("finished", at(6, 1, day=DAY - timedelta(days=1))))
    # Availability: a-01 offline from 22:00 the day before to 01:00 (1 h in the day); b-01
    # offline 05:00 to 07:30 (2.5 h); a-02 offline from 23:00 on (1 h to the day's end).
    changes = [
        ("a-01", "offline", at(22, day=DAY - timedelta(days=1))),
        ("a-01", "online", at(1)),
        ("b-01", "online", at(0, 30, day=DAY - timedelta(days=1))),
        ("b-01", "offline", at(5)),
        ("b-01", "online", at(7, 30)),
        ("a-02", "online", at(2)),
        ("a-02", "offline", at(23)),
    ]
    for cluster, state, when in changes:
        if states_directly:
            with s.engine.begin() as conn:
                conn.execute(insert(state_changes).values(
                    cluster=cluster, state=state, at=utc(when), recorded_at=utc(when),
                ))
        else:
            s.clusters.set_state(cluster, state, when)
