"""The guard: every way a command can be refused, and membership's retained copies."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import Keys, command, content, play_body

from device_agent.guard import (
    Duplicate,
    Guard,
    Ignored,
    MembershipState,
    Rejected,
    RejectionLimiter,
    SeenStore,
)
from device_agent.localdb import LocalDatabase
from protocol import topics
from protocol.clock import ManualClock
from protocol.messages import AckBody, MembershipBody, StopBody
from protocol.signing import canonical

T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
ME = "hg-phung-hiep-07"
CMD = topics.cluster_topic(ME, "command")
MEMBERSHIP = topics.cluster_topic(ME, "membership")


class Setup:
    def __init__(self, tmp_path: Path, groups: tuple[str, ...] = ("commune-tan-long",)) -> None:
        self.keys = Keys()
        self.clock = ManualClock(T0)
        self.groups = groups
        self.path = tmp_path / "agent.sqlite"
        self.state: LocalDatabase | None = None
        self.restart()

    def restart(self) -> None:
        """Everything the guard remembers, as a new process reading the same data directory."""
        if self.state is not None:
            self.state.close()
        self.state = LocalDatabase(self.path)
        self.membership = MembershipState(self.state.document("membership"), self.groups)
        seen = SeenStore(self.state.table("seen"))
        self.guard = Guard(self.keys.verifier, ME, self.membership.current, self.clock, seen)

    def stop(
        self,
        clusters: list[str] | None = None,
        groups: list[str] | None = None,
        ttl: timedelta = timedelta(hours=1),
    ) -> bytes:
        body = StopBody(play_id="p1")
        now = self.clock.now()
        return command(
            self.keys.signer, body, now, clusters=clusters, groups=groups, ttl=ttl
        ).to_json()

    def refused(self, topic: str, payload: bytes) -> Rejected:
        with pytest.raises(Rejected) as caught:
            self.guard.admit(topic, payload)
        return caught.value


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_signed_command_for_this_cluster_is_admitted(s: Setup) -> None:
    payload = s.stop(clusters=[ME])
    cmd = s.guard.admit(CMD, payload)
    assert cmd.id == json.loads(payload)["id"]
    assert cmd.body == StopBody(play_id="p1")
    assert cmd.to.clusters == [ME]


def test_unsigned_command_is_refused_with_its_claimed_id(s: Setup) -> None:
    obj = json.loads(s.stop(clusters=[ME]))
    del obj["sig"]
    err = s.refused(CMD, json.dumps(obj).encode())
    assert err.code == "unsigned"
    assert err.command_id == obj["id"]
    assert "unsigned" in err.reason


def test_command_signed_by_another_key_is_refused(s: Setup) -> None:
    cmd = command(s.keys.stranger, StopBody(), s.clock.now(), clusters=[ME])
    err = s.refused(CMD, cmd.to_json())
    assert err.code == "bad-signature"
    assert err.command_id == cmd.id


def test_tampered_command_is_refused(s: Setup) -> None:
    obj = json.loads(s.stop(clusters=["another-cluster"]))
    obj["to"]["clusters"] = [ME]
    err = s.refused(CMD, json.dumps(obj).encode())
    assert err.code == "bad-signature"


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"[1,2]", b"{\"sig\": 3}", b"{" * 5000])
def test_garbage_is_refused_not_crashing(s: Setup, payload: bytes) -> None:
    err = s.refused(CMD, payload)
    assert err.code in ("invalid", "unsigned", "bad-signature")
    assert err.command_id is None


def test_signed_but_invalid_command_is_refused(s: Setup) -> None:
    # A valid signature over an object that is not a valid command (unknown key).
    cmd = command(s.keys.signer, StopBody(), s.clock.now(), clusters=[ME])
    obj = cmd.model_dump(mode="json", exclude_none=True)
    obj.pop("sig")
    obj["extra"] = 1
    obj["sig"] = base64.b64encode(s.keys.private.sign(canonical(obj))).decode()
    err = s.refused(CMD, json.dumps(obj).encode())
    assert err.code == "invalid"


def test_expired_command_is_refused(s: Setup) -> None:
    payload = s.stop(clusters=[ME], ttl=timedelta(minutes=10))
    s.clock.advance(timedelta(minutes=10))  # expires_at == now: already expired
    err = s.refused(CMD, payload)
    assert err.code == "expired"
    assert err.reason.startswith("expired")


def test_command_from_the_future_is_refused_beyond_five_minutes(s: Setup) -> None:
    ahead = command(
        s.keys.signer, StopBody(), T0 + timedelta(minutes=5, seconds=1), clusters=[ME]
    )
    assert s.refused(CMD, ahead.to_json()).code == "future"
    near = command(s.keys.signer, StopBody(), T0 + timedelta(minutes=4), clusters=[ME])
    s.guard.admit(CMD, near.to_json())


def test_replay_is_refused_even_after_a_restart(s: Setup) -> None:
    payload = s.stop(clusters=[ME])
    s.guard.admit(CMD, payload)
    assert s.refused(CMD, payload).code == "replayed"
    s.restart()
    assert s.refused(CMD, payload).code == "replayed"


def test_a_play_admitted_before_is_a_duplicate_not_a_replay(s: Setup) -> None:
    """The same play command again (a broker's redelivery): not obeyed twice, not refused;
    the guard hands it back so that the agent can answer it."""
    body = play_body("p1", [content().ref], T0 + timedelta(minutes=1))
    cmd = command(s.keys.signer, body, T0, groups=["commune-tan-long"])
    topic = topics.group_topic("commune-tan-long", "command")
    s.guard.admit(topic, cmd.to_json())
    for _ in range(2):  # the same within this run, and after a restart
        again = s.refused(topic, cmd.to_json())
        assert isinstance(again, Duplicate)
        assert again.code == "ignored"
        assert again.command.id == cmd.id
        assert again.command.body == body
        s.restart()
    # Still checked like any command first: a copy that is no longer valid is refused.
    s.clock.advance(timedelta(hours=2))
    assert s.refused(topic, cmd.to_json()).code == "expired"


def test_acks_are_remembered_in_memory_only(s: Setup) -> None:
    # A replayed ack repeats what the controller already said; no disk write per ack.
    ack = command(
        s.keys.signer, AckBody(outbox="ob", seqs=[1]), s.clock.now(), clusters=[ME]
    ).to_json()
    s.guard.admit(CMD, ack)
    assert isinstance(s.refused(CMD, ack), Duplicate)  # not obeyed twice within this run
    s.restart()
    s.guard.admit(CMD, ack)  # after a restart: harmless, and admitted


def test_seen_ids_are_forgotten_once_their_command_expired(tmp_path: Path) -> None:
    table = LocalDatabase(tmp_path / "agent.sqlite").table("seen")
    store = SeenStore(table)
    store.remember("a" * 12, T0 + timedelta(minutes=1), T0)
    store.remember("b" * 12, T0 + timedelta(hours=1), T0 + timedelta(minutes=2))
    assert not store.seen("a" * 12)
    assert len(SeenStore(table)) == 1
    assert [key for key, _body in table.load()] == ["b" * 12]  # its row deleted too


def test_remembering_an_id_writes_its_row_whatever_the_number_remembered(
    tmp_path: Path,
) -> None:
    """A day of commands remembered: the next one costs one row, not the whole list."""
    db = LocalDatabase(tmp_path / "agent.sqlite")
    store = SeenStore(db.table("seen"))
    for n in range(300):
        store.remember(f"cmd-{n:08d}", T0 + timedelta(days=7), T0)
    written: list[str] = []
    db._db.set_trace_callback(written.append)  # each statement, its values filled in
    store.remember("cmd-new-0001", T0 + timedelta(days=7), T0)
    db._db.set_trace_callback(None)
    assert len(written) == 1
    assert "cmd-new-0001" in written[0]
    assert len(written[0]) < 300  # the one id, not the 300 others
    assert len(SeenStore(db.table("seen"))) == 301


def test_seen_ids_kept_as_one_document_by_an_earlier_version_move_to_rows(
    tmp_path: Path,
) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    db.document("seen").save({"seen": {
        "a" * 12: (T0 + timedelta(hours=1)).isoformat(),
        "b" * 12: "not a time",
    }})  # fmt: skip
    store = SeenStore(db.table("seen"))
    assert store.seen("a" * 12)
    assert not store.seen("b" * 12)  # damaged: skipped
    assert db.document("seen").load() is None  # the document is gone
    assert [key for key, _body in db.table("seen").load()] == ["a" * 12]
    assert SeenStore(db.table("seen")).seen("a" * 12)  # and read from its row next time


def test_a_damaged_seen_row_is_skipped_and_dropped(tmp_path: Path) -> None:
    db = LocalDatabase(tmp_path / "agent.sqlite")
    db.table("seen").save({"a" * 12: '"2026-05-01T07:00:00+00:00"', "b" * 12: "{"})
    store = SeenStore(db.table("seen"))
    assert store.seen("a" * 12)
    assert not store.seen("b" * 12)
    assert [key for key, _body in db.table("seen").load()] == ["a" * 12]


def test_command_for_another_cluster_is_refused(s: Setup) -> None:
    err = s.refused(CMD, s.stop(clusters=["another-cluster"]))
    assert err.code == "misaddressed"
    assert err.reason.startswith("addressed to another cluster")


def test_command_for_my_group_on_my_group_topic_is_admitted(s: Setup) -> None:
    topic = topics.group_topic("commune-tan-long", "command")
    payload = s.stop(groups=["commune-tan-long"])
    cmd = s.guard.admit(topic, payload)
    assert cmd.id == json.loads(payload)["id"]
    assert cmd.body == StopBody(play_id="p1")
    assert cmd.to.groups == ["commune-tan-long"]
    # Admitted once: the same command again is a replay.
    assert s.refused(topic, payload).code == "replayed"


def test_command_for_another_group_is_refused(s: Setup) -> None:
    topic = topics.group_topic("commune-hoa-an", "command")
    assert s.refused(topic, s.stop(groups=["commune-hoa-an"])).code == "misaddressed"


def test_command_for_me_on_another_clusters_topic_is_refused(s: Setup) -> None:
    topic = topics.cluster_topic("another-cluster", "command")
    assert s.refused(topic, s.stop(clusters=[ME])).code == "misaddressed"


def test_command_for_my_group_on_another_groups_topic_is_refused(s: Setup) -> None:
    topic = topics.group_topic("commune-hoa-an", "command")
    assert s.refused(topic, s.stop(groups=["commune-tan-long"])).code == "misaddressed"


def test_play_on_the_membership_topic_is_refused(s: Setup) -> None:
    c = content()
    body = play_body("p1", [c.ref], T0)
    cmd = command(s.keys.signer, body, T0, clusters=[ME])
    assert s.refused(MEMBERSHIP, cmd.to_json()).code == "misaddressed"


def membership(s: Setup, groups: list[str], at: datetime, cluster: str = ME) -> bytes:
    body = MembershipBody(cluster=cluster, groups=groups)
    return command(s.keys.signer, body, at, clusters=[cluster], ttl=timedelta(days=400)).to_json()


def test_membership_retained_copy_is_ignored_and_older_one_too(s: Setup) -> None:
    first = membership(s, ["commune-hoa-an"], T0 - timedelta(days=3))
    cmd = s.guard.admit(MEMBERSHIP, first)
    s.membership.apply(cmd)
    with pytest.raises(Ignored):
        s.guard.admit(MEMBERSHIP, first)  # retained copy on reconnect: silent
    older = membership(s, ["commune-tan-long"], T0 - timedelta(days=4))
    with pytest.raises(Ignored):
        s.guard.admit(MEMBERSHIP, older)
    # The group change took effect: the old group's commands are now refused.
    old_topic = topics.group_topic("commune-tan-long", "command")
    assert s.refused(old_topic, s.stop(groups=["commune-tan-long"])).code == "misaddressed"
    new_topic = topics.group_topic("commune-hoa-an", "command")
    s.guard.admit(new_topic, s.stop(groups=["commune-hoa-an"]))


def test_membership_survives_a_restart(s: Setup) -> None:
    cmd = s.guard.admit(MEMBERSHIP, membership(s, ["commune-hoa-an"], T0))
    s.membership.apply(cmd)
    s.restart()
    assert s.membership.current().groups == ("commune-hoa-an",)
    assert s.membership.current().command_id == cmd.id


def test_membership_of_another_cluster_is_refused(s: Setup) -> None:
    payload = membership(s, ["x"], T0, cluster="another-cluster")
    assert s.refused(MEMBERSHIP, payload).code == "misaddressed"


def test_membership_on_a_group_topic_is_refused(s: Setup) -> None:
    body = MembershipBody(cluster=ME, groups=["x"])
    cmd = command(s.keys.signer, body, T0, clusters=[ME], groups=["commune-tan-long"])
    topic = topics.group_topic("commune-tan-long", "command")
    assert s.refused(topic, cmd.to_json()).code == "misaddressed"


def test_ack_is_admitted_like_any_command(s: Setup) -> None:
    cmd = command(s.keys.signer, AckBody(outbox="o1", seqs=[1, 2]), T0, clusters=[ME])
    assert isinstance(s.guard.admit(CMD, cmd.to_json()).body, AckBody)


def test_rejection_reports_are_limited_and_the_rest_counted() -> None:
    clock = ManualClock(T0)
    limiter = RejectionLimiter(clock, per_minute=10)
    allowed = [limiter.allow() for _ in range(25)]
    assert allowed.count(True) == 10
    assert limiter.take_summary() == 0  # the minute is not over yet
    assert limiter.summary_due_at() == T0 + timedelta(minutes=1)
    clock.advance(60)
    assert limiter.take_summary() == 15
    assert limiter.take_summary() == 0
    assert limiter.allow()


def test_mangled_commands_are_refused_never_crash(s: Setup) -> None:
    rng = random.Random(39)
    c = content()
    body = play_body("p1", [c.ref], T0, level="emergency")
    original = command(s.keys.signer, body, T0, clusters=[ME])
    valid = original.to_json()
    for _ in range(3000):
        mangled = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(mangled))
            action = rng.random()
            if action < 0.5:
                mangled[where] = rng.randrange(256)
            elif action < 0.75:
                del mangled[where:where + rng.randint(1, 40)]
            else:
                mangled[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            admitted = s.guard.admit(CMD, bytes(mangled))
        except Rejected:
            continue
        # Only a change that leaves the signed content intact (white space) may pass.
        assert admitted == original
