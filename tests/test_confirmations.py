"""The confirmation tracker's rules on a ManualClock: when a play a cluster has not
confirmed is sent again, when it is given up on and why, what stops it, and how much one
pass may do. The tracker runs on the controller's real store (SQLite); the resends it
asks for are recorded as the distributor would receive them.

The same rules end to end, on mosquitto with agents and a broker killed -9:
tests/test_delivery_confirmed.py and tests/test_broker_loss.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.confirmations import (
    CONFIRMED,
    MAX_SENDS_PER_PASS,
    MISSED,
    PENDING,
    WITHDRAWN,
    Confirmations,
    ResendPolicy,
    not_received_reason,
)
from controller.store import Store
from protocol.clock import ManualClock
from protocol.messages import Event, EventKind

T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
HCM = ZoneInfo("Asia/Ho_Chi_Minh")
START = T0 + timedelta(minutes=30)
LATEST = START + timedelta(minutes=10)


class Sent:
    """What the tracker asked the distributor to send again: (cluster, play id)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.connected = True

    def __call__(self, cluster: str, body_json: str) -> str:
        self.calls.append((cluster, json.loads(body_json)["play_id"]))
        return f"cmd-{len(self.calls):08d}"

    def take(self) -> list[tuple[str, str]]:
        out, self.calls = self.calls, []
        return out


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock(T0)
        self.store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
        self.sent = Sent()
        self.tracker = self.new_tracker()
        self.seq = 0

    def new_tracker(self) -> Confirmations:
        """A tracker as a (re)started controller builds it on the same store."""
        return Confirmations(
            self.store.engine, self.clock, resend=self.sent,
            connected=lambda: self.sent.connected, tz=HCM, policy=ResendPolicy(),
        )

    def send(self, play_id: str, clusters: list[str], latest: datetime = LATEST,
             *, expect: bool = True) -> None:
        """What Distributor.send_play does: record the play, (publish,) expect its clusters."""
        now = self.clock.now()
        body = {"play_id": play_id}
        self.store.plays.record(
            play_id=play_id, programme=None, bulletin=f"bulletin {play_id}", level="normal",
            start_at=latest - timedelta(minutes=10), latest_start=latest, duration_s=1.0,
            items=[], cluster_ids=clusters, urgent=False, sent_at=now, body=json.dumps(body),
        )
        if expect:
            self.tracker.expect(play_id, clusters, latest, "cmd-original", now)

    def report(self, cluster: str, play_id: str | None, kind: EventKind = "received",
               ref: str | None = None, reason: str | None = None) -> None:
        """An event the intake stored, handed to the tracker as its batch listener."""
        self.seq += 1
        event = Event(cluster=cluster, outbox="ob-12345678", seq=self.seq, at=self.clock.now(),
                      kind=kind, play_id=play_id, ref=ref, reason=reason)
        fresh = self.store.events.add([event], self.clock.now())
        self.tracker.confirm(fresh)

    def at(self, when: datetime) -> list[tuple[str, str]]:
        """Move the clock to `when`, run what is due, and say what was sent again."""
        self.clock.set(when)
        while (due := self.tracker.next_due()) is not None and due <= when:
            self.tracker.run_due(when)
        return self.sent.take()

    def states(self, play_id: str) -> dict[str, str]:
        return {c: row[0] for c, row in self.tracker.of_play(play_id).items()}


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_play_is_sent_again_with_backoff_until_confirmed(rig: Rig) -> None:
    rig.send("p1", ["a-01", "a-02", "a-03"])
    rig.report("a-01", "p1")
    assert rig.states("p1") == {"a-01": CONFIRMED, "a-02": PENDING, "a-03": PENDING}
    assert rig.at(T0 + timedelta(seconds=9)) == []
    # 10 s without a confirmation: sent again, to those two alone.
    assert sorted(rig.at(T0 + timedelta(seconds=10))) == [("a-02", "p1"), ("a-03", "p1")]
    rig.report("a-02", "p1", kind="delivered")  # any event about the play confirms it
    # Then every 20 s, 40 s, 80 s, 160 s, and at most every 5 minutes.
    assert rig.at(T0 + timedelta(seconds=29)) == []
    assert rig.at(T0 + timedelta(seconds=30)) == [("a-03", "p1")]
    assert rig.at(T0 + timedelta(seconds=70)) == [("a-03", "p1")]
    assert rig.at(T0 + timedelta(seconds=150)) == [("a-03", "p1")]
    assert rig.at(T0 + timedelta(seconds=310)) == [("a-03", "p1")]
    assert rig.at(T0 + timedelta(seconds=609)) == []
    assert rig.at(T0 + timedelta(seconds=610)) == [("a-03", "p1")]
    rig.report("a-03", "p1")
    assert rig.at(T0 + timedelta(seconds=910)) == []
    assert rig.tracker.next_due() is None  # nothing left to watch
    sends = {c: row[1] for c, row in rig.tracker.of_play("p1").items()}
    assert sends == {"a-01": 1, "a-02": 2, "a-03": 7}


def test_a_cluster_that_never_confirms_is_recorded_not_received_by_the_latest_start(
    rig: Rig,
) -> None:
    rig.send("p1", ["a-01", "a-02"])
    rig.report("a-01", "p1")
    rig.at(LATEST)  # resent meanwhile, and never confirmed
    assert rig.states("p1")["a-02"] == PENDING  # still in flight: a little grace
    rig.at(LATEST + timedelta(seconds=15))
    assert rig.states("p1") == {"a-01": CONFIRMED, "a-02": MISSED}
    _state, _sends, reason, at = rig.tracker.of_play("p1")["a-02"]
    assert reason == "not received: no confirmation from the cluster by 2026-11-26 08:40:00 +07"
    assert reason == not_received_reason(LATEST, HCM)
    assert at == LATEST + timedelta(seconds=15)
    assert rig.tracker.stats.not_received == 1
    [found] = rig.tracker.not_received(T0)
    assert (found.cluster, found.play_id, found.bulletin) == ("a-02", "p1", "bulletin p1")
    assert rig.tracker.latest_not_received()["a-02"].play_id == "p1"
    assert rig.tracker.count_not_received(T0) == 1
    assert rig.tracker.waiting_by_cluster() == {}
    # It had it after all, and its outbox tells so later: its own events are the record.
    rig.report("a-02", "p1")
    assert rig.states("p1")["a-02"] == CONFIRMED
    assert rig.tracker.stats.late == 1


def test_a_refusal_is_kept_as_the_reason_it_was_not_received(rig: Rig) -> None:
    rig.send("p1", ["a-01"])
    rig.report("a-01", None, kind="rejected", ref="cmd-original",
               reason="expired at 2026-11-26T00:00:00+00:00 (this cluster's clock says ...)")
    rig.at(LATEST + timedelta(seconds=15))
    assert rig.tracker.of_play("p1")["a-01"][2] == (
        "not received: no confirmation from the cluster by 2026-11-26 08:40:00 +07 (it "
        "refused the command: expired at 2026-11-26T00:00:00+00:00 (this cluster's clock "
        "says ...))"
    )


def test_offline_clusters_wait_to_come_back_and_get_their_plays_at_once(rig: Rig) -> None:
    rig.store.clusters.set_state("a-02", "offline", T0)
    rig.send("p1", ["a-01", "a-02"])
    rig.send("p2", ["a-02"], latest=LATEST + timedelta(hours=1))
    rig.send("gone", ["a-02"], latest=T0 + timedelta(seconds=5))
    assert rig.at(T0 + timedelta(seconds=10)) == [("a-01", "p1")]  # not the offline one
    rig.clock.set(T0 + timedelta(seconds=12))
    rig.store.clusters.set_state("a-02", "online", rig.clock.now())
    # Back online: every play it has not confirmed that can still start, most urgent first.
    assert rig.tracker.catch_up("a-02") == 2
    assert rig.sent.take() == [("a-02", "p1"), ("a-02", "p2")]
    # Not sent once more at the next round: it was just sent them.
    assert rig.at(T0 + timedelta(seconds=20)) == []
    assert rig.states("gone") == {"a-02": MISSED}  # it came back too late for that one


def test_nothing_is_sent_while_disconnected_and_everything_at_once_after(rig: Rig) -> None:
    rig.send("p1", ["a-01"])
    rig.send("p2", ["a-02"])
    rig.sent.connected = False
    assert rig.at(T0 + timedelta(seconds=30)) == []
    rig.sent.connected = True
    rig.tracker.resend_now()  # the broker watch's action after a reconnection
    assert sorted(rig.at(T0 + timedelta(seconds=31))) == [("a-01", "p1"), ("a-02", "p2")]
    # And again after the next reconnection, however recent the last send.
    rig.tracker.resend_now()
    assert sorted(rig.at(T0 + timedelta(seconds=32))) == [("a-01", "p1"), ("a-02", "p2")]


def test_a_stopped_play_is_not_sent_again(rig: Rig) -> None:
    rig.send("p1", ["a-01", "a-02"])
    rig.tracker.withdraw("p1", ["a-01", "a-02"], T0 + timedelta(seconds=5))
    assert rig.at(T0 + timedelta(seconds=10)) == []
    assert rig.at(LATEST + timedelta(minutes=1)) == []
    assert rig.states("p1") == {"a-01": WITHDRAWN, "a-02": WITHDRAWN}  # not a miss either
    # "Stop everything" withdraws what is due on those clusters, not what is to come.
    now = rig.clock.now()
    rig.send("due", ["a-01"], latest=now + timedelta(minutes=5))  # started 5 min ago
    rig.send("later", ["a-01"], latest=now + timedelta(hours=1))
    rig.tracker.withdraw(None, ["a-01"], rig.clock.now())
    assert rig.states("due") == {"a-01": WITHDRAWN}
    assert rig.states("later") == {"a-01": PENDING}


def test_a_restarted_controller_watches_again_and_waits_for_the_outboxes(rig: Rig) -> None:
    rig.send("p1", ["a-01"])
    rig.send("p2", ["a-02"], latest=T0 + timedelta(minutes=1))
    # Down for two minutes: p2's latest start passed meanwhile.
    rig.clock.set(T0 + timedelta(minutes=3))
    rig.tracker = rig.new_tracker()
    assert rig.at(T0 + timedelta(minutes=3, seconds=10)) == [("a-01", "p1")]
    # p2 is given up on only once the agents had a minute to send what waits in their
    # outboxes: a-02's `received` comes in time.
    rig.report("a-02", "p2")
    rig.at(T0 + timedelta(minutes=4, seconds=1))
    assert rig.states("p2") == {"a-02": CONFIRMED}


def test_one_pass_sends_a_bounded_number_of_commands(rig: Rig) -> None:
    clusters = [f"c-{n:04d}" for n in range(MAX_SENDS_PER_PASS + 50)]
    rig.send("big", clusters)
    rig.clock.set(T0 + timedelta(seconds=10))
    rig.tracker.run_due()
    assert len(rig.sent.take()) == MAX_SENDS_PER_PASS
    assert rig.tracker.next_due() == rig.clock.now()  # the rest at once, next pass
    rig.tracker.run_due()
    assert len(set(rig.sent.take())) == 50  # the others, not the same ones again
    assert rig.tracker.next_due() == T0 + timedelta(seconds=30)


def test_a_received_that_comes_before_the_rows_is_found_in_the_events(rig: Rig) -> None:
    """Rows are written once the play is published: a fast agent's `received` can be
    stored first. It is found in the events before anything is sent again."""
    rig.send("p1", ["a-01", "a-02"], expect=False)
    rig.report("a-01", "p1")  # stored before the tracker heard of the play
    rig.tracker.expect("p1", ["a-01", "a-02"], LATEST, "cmd-original", rig.clock.now())
    assert rig.at(T0 + timedelta(seconds=10)) == [("a-02", "p1")]
    assert rig.states("p1") == {"a-01": CONFIRMED, "a-02": PENDING}


def test_plays_sent_without_a_record_are_watched_after_a_restart(rig: Rig) -> None:
    """The controller stopped between sending a play and writing its rows (or an older
    controller sent it): the next one starts watching it, from the events."""
    rig.send("p1", ["a-01", "a-02"], expect=False)
    rig.send("old", ["a-01"], latest=T0 - timedelta(hours=2), expect=False)
    rig.report("a-01", "p1")
    rig.tracker = rig.new_tracker()
    assert rig.states("p1") == {"a-01": CONFIRMED, "a-02": PENDING}
    assert rig.states("old") == {}  # long past: not dug up
    assert rig.at(T0 + timedelta(seconds=10)) == [("a-02", "p1")]
