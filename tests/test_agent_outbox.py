"""The outbox: numbered, stored before sending, resent until acknowledged, kept across restarts."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_agent.localdb import DatabaseInUse, LocalDatabase
from device_agent.outbox import Outbox
from protocol.clock import ManualClock

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
ME = "hg-phung-hiep-07"


def open_outbox(path: Path, clock: ManualClock) -> Outbox:
    return Outbox(path, ME, clock, resend_after_s=10)


def test_events_are_numbered_and_due_until_sent(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    box = open_outbox(tmp_path / "outbox.sqlite", clock)
    first = box.add("received", ref="cmd-00000001", play_id="p1", bulletin="b", level="normal")
    second = box.add("delivered", ref="cmd-00000001", play_id="p1")
    assert (first.seq, second.seq) == (1, 2)
    assert first.outbox == second.outbox == box.outbox_id
    assert first.cluster == ME
    assert first.at == T0
    assert [e.seq for e in box.due()] == [1, 2]
    box.mark_sent([1, 2])
    assert box.due() == []
    assert box.next_due_at() == datetime.fromtimestamp(T0.timestamp() + 10, UTC)
    clock.advance(9.9)
    assert box.due() == []
    clock.advance(0.1)
    assert [e.seq for e in box.due()] == [1, 2]


def test_resends_back_off_until_a_new_connection(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    box = Outbox(tmp_path / "outbox.sqlite", ME, clock, resend_after_s=10, max_resend_s=60)
    box.add("playing", play_id="p1", sending=True)
    gaps = []
    last = clock.now()
    for _ in range(5):
        due_at = box.next_due_at()
        assert due_at is not None
        clock.set(due_at)
        assert len(box.due()) == 1
        box.mark_sent([1])
        gaps.append((due_at - last).total_seconds())
        last = due_at
    assert gaps == [10, 20, 40, 60, 60]
    box.mark_sent([1], reconnected=True)
    assert box.next_due_at() == clock.now() + timedelta(seconds=10)


def test_an_event_sent_at_once_is_not_due_again_before_the_resend_time(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    box = open_outbox(tmp_path / "outbox.sqlite", clock)
    box.add("playing", play_id="p1", sending=True)
    assert box.due() == []
    clock.advance(10)
    assert len(box.due()) == 1


def test_ack_removes_only_the_named_events_of_this_outbox(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    box = open_outbox(tmp_path / "outbox.sqlite", clock)
    for _ in range(5):
        box.add("playing", play_id="p1")
    assert box.ack("another-outbox", [1, 2, 3]) == 0
    assert box.pending() == 5
    assert box.ack(box.outbox_id, [1, 3, 99]) == 2
    assert [e.seq for e in box.unacked()] == [2, 4, 5]
    assert box.ack(box.outbox_id, [1]) == 0


def test_events_and_outbox_id_survive_reopening(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "outbox.sqlite"
    box = open_outbox(path, clock)
    box.add("finished", play_id="p1")
    box.add("finished", play_id="p2")
    box.ack(box.outbox_id, [1, 2])
    box.add("missed", play_id="p3", reason="audio incomplete: 3 of 14 chunks missing")
    outbox_id = box.outbox_id
    box.close()  # a kill -9 leaves the same committed state: add() commits before returning

    again = open_outbox(path, clock)
    assert again.outbox_id == outbox_id
    [kept] = again.unacked()
    assert (kept.seq, kept.play_id) == (3, "p3")
    assert kept.reason == "audio incomplete: 3 of 14 chunks missing"
    # Numbers are never reused, even after everything was acknowledged.
    assert again.add("received", play_id="p4").seq == 4


def test_a_new_database_has_small_pages_and_an_older_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    """1 KiB pages make a commit write less to the SD card; a database made by an earlier
    version with SQLite's 4 KiB pages is opened as it is, its events intact."""
    clock = ManualClock(T0)
    new = open_outbox(tmp_path / "new.sqlite", clock)
    new.add("finished", play_id="p1")
    assert new._db.query("PRAGMA page_size") == [(1024,)]
    new.close()

    old_path = tmp_path / "old.sqlite"
    with sqlite3.connect(old_path) as old:  # as the earlier version left it
        old.execute("PRAGMA page_size=4096")
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE documents (name TEXT PRIMARY KEY, body TEXT NOT NULL)")
    old.close()
    box = open_outbox(old_path, clock)
    box.add("finished", play_id="p1")
    assert box._db.query("PRAGMA page_size") == [(4096,)]
    box.close()
    again = open_outbox(old_path, clock)
    assert [e.play_id for e in again.unacked()] == ["p1"]
    again.close()


def test_a_new_database_gets_a_new_outbox_id(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    a = open_outbox(tmp_path / "a.sqlite", clock)
    b = open_outbox(tmp_path / "b.sqlite", clock)
    assert a.outbox_id != b.outbox_id


def test_long_reasons_are_cut_to_fit_the_event(tmp_path: Path) -> None:
    box = open_outbox(tmp_path / "outbox.sqlite", ManualClock(T0))
    event = box.add("rejected", reason="x" * 2000)
    assert event.reason is not None
    assert len(event.reason) == 500


KILLED_WRITER = """
import os, signal, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from device_agent.outbox import Outbox
from protocol.clock import ManualClock
box = Outbox(Path(sys.argv[1]), "c1", ManualClock(datetime(2026, 5, 1, tzinfo=UTC)))
for n in range(20):
    box.add("playing", play_id=f"p{n}")
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed(script: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run script (on the database at path) in a process that kills itself with SIGKILL."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env=env, capture_output=True, timeout=60, check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    return done


def test_committed_events_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    killed(KILLED_WRITER, path)
    box = open_outbox(path, ManualClock(T0))
    assert [e.play_id for e in box.unacked()] == [f"p{n}" for n in range(20)]


def test_a_second_agent_cannot_open_the_same_database(tmp_path: Path) -> None:
    first = LocalDatabase(tmp_path / "agent.sqlite")
    Outbox(first, ME, ManualClock(T0))
    with pytest.raises(DatabaseInUse, match="in use by another loa-agent"):
        LocalDatabase(tmp_path / "agent.sqlite")
    first.close()
    LocalDatabase(tmp_path / "agent.sqlite").close()


KILLED_IN_BATCH = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from device_agent.localdb import LocalDatabase
from device_agent.outbox import Outbox
from protocol.clock import ManualClock

db = LocalDatabase(Path(sys.argv[1]))
box = Outbox(db, "c1", ManualClock(datetime(2026, 5, 1, tzinfo=UTC)))
box.add("received", play_id="before")
with db.batch():
    for n in range(5):
        box.add("playing", play_id=f"p{n}")
        db.after_commit(lambda: print("published", flush=True))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_batch_is_one_commit_and_its_actions_run_after_it(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    box = Outbox(db, ME, ManualClock(T0))
    seen: list[tuple[str, bool]] = []

    def publish(name: str) -> None:
        seen.append((name, db.query("SELECT COUNT(*) FROM events")[0][0] == 3))

    with db.batch():
        for n in range(3):
            box.add("playing", play_id=f"p{n}")
            db.after_commit(functools.partial(publish, f"p{n}"))
        with db.batch():  # nested: part of the outer one
            db.after_commit(lambda: publish("nested"))
        assert seen == []  # nothing goes out before the commit
    assert seen == [("p0", True), ("p1", True), ("p2", True), ("nested", True)]
    db.after_commit(lambda: publish("outside"))  # no batch open: at once
    assert seen[-1] == ("outside", True)
    db.close()


def test_a_failed_part_of_a_batch_is_undone_alone(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    box = Outbox(db, ME, ManualClock(T0))

    def delete_all_then_fail() -> None:
        with db.transaction() as conn:
            conn.execute("DELETE FROM events")
            raise RuntimeError("half-way")

    with db.batch():
        box.add("playing", play_id="kept")
        with pytest.raises(RuntimeError):
            delete_all_then_fail()
        box.add("finished", play_id="kept")
    assert [e.kind for e in box.unacked()] == ["playing", "finished"]
    db.close()


def test_kill_9_inside_a_batch_keeps_what_was_committed_before_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    done = killed(KILLED_IN_BATCH, path)
    assert b"published" not in done.stdout  # nothing went out for what was not saved
    box = open_outbox(path, ManualClock(T0))
    assert [e.play_id for e in box.unacked()] == ["before"]
