"""Cluster identities without a broker: the signed envelope, the agent's key file, the
controller's tokens, join requests and keys (controller/identities.py), the check of
what clusters sign (controller/trust.py), and `loa-agent check`'s identity line."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.audit import AuditLog
from controller.identities import EnrolmentError, Identities
from controller.store import Store
from controller.trust import ClusterKeys, Refused
from device_agent.check import CheckResult, _check_identity, _Context
from device_agent.config import AgentConfig, OutputConfig
from device_agent.identity import KEY_FILE, AgentIdentity, read_status
from protocol.messages import MessageError
from protocol.signing import (
    Sealed,
    SignatureError,
    Unsigned,
    canonical,
    key_from_text,
    unseal,
)

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)


def identity() -> AgentIdentity:
    return AgentIdentity(Ed25519PrivateKey.generate())


# --- the envelope -------------------------------------------------------------------------


def _wire(obj: dict[str, object], sig: str) -> bytes:
    """An envelope written as seal writes one: canonical, then its signature."""
    return canonical(obj)[:-1] + b',"sig":"' + sig.encode() + b'"}'


def test_an_envelope_verifies_with_its_key_and_with_no_other() -> None:
    me = identity()
    payload = me.seal("event", {"kind": "finished", "bulletin": "Bản tin sáng"})
    sealed = unseal(payload)
    assert isinstance(sealed, Sealed)
    assert (sealed.channel, sealed.key, sealed.n) == ("event", me.key_id, (1, 1))
    assert sealed.body == {"kind": "finished", "bulletin": "Bản tin sáng"}
    sealed.verify(_public(me))
    with pytest.raises(SignatureError, match="bad signature"):
        sealed.verify(Ed25519PrivateKey.generate().public_key())
    # What it says cannot be changed: the body, its channel, its number.
    obj = json.loads(payload)
    sig = obj.pop("sig")
    for field, value in (("body", {"kind": "failed"}), ("ch", "state"), ("n", [1, 9])):
        tampered = unseal(_wire({**obj, field: value}, sig))
        assert isinstance(tampered, Sealed)
        with pytest.raises(SignatureError):
            tampered.verify(_public(me))
    assert me.seal("event", {}) != payload  # each message has its own number


def test_only_what_the_key_signed_is_read_even_with_more_after_the_signature() -> None:
    """A second "body" after the signature would win in a plain JSON parse: the message
    is read from the signed bytes only."""
    me = identity()
    payload = me.seal("event", {"kind": "finished"})
    forged = payload[:-1] + b',"body":{"kind":"failed"}}'
    with pytest.raises(MessageError):
        unseal(forged)
    sealed = unseal(payload)
    assert isinstance(sealed, Sealed)
    assert sealed.body == {"kind": "finished"}


def _public(who: AgentIdentity) -> Ed25519PublicKey:
    return key_from_text(who.public_key)


SIG = "A" * 86 + "=="


@pytest.mark.parametrize(
    "payload",
    [
        _wire({"v": 1, "ch": "event", "key": "0" * 16, "body": {}}, SIG),
        _wire({"v": 1, "ch": "oops", "key": "0" * 16, "n": [1, 1], "body": {}}, SIG),
        _wire({"v": 1, "ch": "event", "key": "KEY", "n": [1, 1], "body": {}}, SIG),
        _wire({"v": 1, "ch": "event", "key": "0" * 16, "n": [1, -1], "body": {}}, SIG),
        _wire({"v": 1, "ch": "event", "key": "0" * 16, "n": [1, 2**70], "body": {}}, SIG),
        _wire({"v": 1, "ch": "event", "key": "0" * 16, "n": [1, 1], "body": {}}, "!" * 88),
        b'{"v":1,"ch":"event","key":"0000000000000000","n":[1,1],"body":{},"sig":"x"}',
        b'{"sig": "' + SIG.encode() + b'", "body": {}}',
        b"not json",
    ],
)
def test_a_malformed_envelope_is_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(MessageError):
        unseal(payload)


def test_a_message_without_sig_is_unsigned() -> None:
    assert unseal(b'{"v": 1, "cluster": "c1", "kind": "finished"}') == Unsigned(
        {"v": 1, "cluster": "c1", "kind": "finished"}
    )
    assert unseal(b'[{"v": 1}]') == Unsigned([{"v": 1}])


# --- the agent's key --------------------------------------------------------------------------


def test_the_agent_makes_its_key_once_mode_0600_and_counts_its_starts(tmp_path: Path) -> None:
    first = AgentIdentity.load_or_create(tmp_path)
    mode = stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    again = AgentIdentity.load_or_create(tmp_path)
    assert again.key_id == first.key_id
    assert (first.boot, again.boot) == (1, 2)
    # A key file left readable by others is made 0600 at the next start.
    (tmp_path / KEY_FILE).chmod(0o644)
    AgentIdentity.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_the_controllers_answer_is_kept_for_this_key_only(tmp_path: Path) -> None:
    me = AgentIdentity.load_or_create(tmp_path)
    me.record("pending", T0)
    assert read_status(tmp_path) is not None
    assert me.enrolment() is not None
    me.record("registered", T0 + timedelta(minutes=1))
    assert AgentIdentity.load_or_create(tmp_path).registered()
    (tmp_path / KEY_FILE).unlink()  # a new key: what was said of the old one is not its own
    assert not AgentIdentity.load_or_create(tmp_path).registered()


# --- tokens, join requests, keys --------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    yield s
    s.close()


def _join(ids: Identities, who: AgentIdentity, token: str, cluster: str = "c1",
          at: datetime = T0) -> tuple[str, str | None]:  # fmt: skip
    outcome = ids.join(cluster, who.key_id, who.public_key, token, at)
    return outcome.status, outcome.reason


def test_a_token_waits_for_a_manager_and_registers_one_key_once(store: Store) -> None:
    ids = Identities(store)
    token = ids.issue_token("c1", by="quan-ly", now=T0).token
    box, thief = identity(), identity()
    assert _join(ids, box, token) == ("pending", "waiting for a manager's approval")
    assert _join(ids, box, token)[0] == "pending"  # asked again: the same answer
    status, reason = _join(ids, thief, token)  # the token is used
    assert status == "refused"
    assert reason is not None
    assert "already used" in reason
    assert ids.active_keys() == {}
    assert ids.approve("c1", by="quan-ly", now=T0) == box.key_id
    assert ids.active_keys() == {"c1": (box.key_id, box.public_key)}
    assert _join(ids, box, token)[0] == "registered"
    assert [a.status for a in ids.unanswered()] == ["registered"]  # the desk tells the agent
    assert token not in json.dumps([t.__dict__ for t in ids.tokens()], default=str)


def test_tokens_expire_belong_to_one_cluster_and_the_newest_replaces_the_rest(
    store: Store,
) -> None:
    ids = Identities(store)
    old = ids.issue_token("c1", by="quan-ly", now=T0, ttl=timedelta(hours=1)).token
    status, reason = _join(ids, identity(), old, at=T0 + timedelta(hours=1))
    assert status == "refused"
    assert reason is not None
    assert "expired" in reason
    newer = ids.issue_token("c1", by="quan-ly", now=T0, ttl=timedelta(hours=1)).token
    newest = ids.issue_token("c1", by="quan-ly", now=T0, ttl=timedelta(hours=1)).token
    assert "replaced by a newer one" in str(_join(ids, identity(), newer)[1])
    assert "another cluster" in str(_join(ids, identity(), newest, cluster="c2")[1])
    assert "unknown enrolment token" in str(_join(ids, identity(), "x" * 43)[1])
    assert _join(ids, identity(), newest)[0] == "pending"
    with pytest.raises(EnrolmentError, match="1 minute"):
        ids.issue_token("c1", by="quan-ly", now=T0, ttl=timedelta(seconds=5))


def test_a_token_that_approves_itself_registers_at_once(store: Store) -> None:
    ids = Identities(store)
    token = ids.issue_token("c1", by="ky-thuat", now=T0, auto_approve=True).token
    box = identity()
    assert _join(ids, box, token) == ("registered", None)
    assert ids.active_keys()["c1"][0] == box.key_id
    assert ids.unanswered() == []  # answered by the desk at once


def test_replacing_a_box_retires_its_key_when_the_new_one_is_registered_and_is_audited(
    store: Store,
) -> None:
    audit = AuditLog(store)
    ids = Identities(store, audit)
    old_box, new_box = identity(), identity()
    _join(ids, old_box, ids.issue_token("c1", by="quan-ly", now=T0, auto_approve=True).token)
    # A plain token cannot be had for a cluster with a key: replacing is its own step.
    with pytest.raises(EnrolmentError, match="enrol replace c1"):
        ids.issue_token("c1", by="quan-ly", now=T0)
    token = ids.issue_token("c1", by="quan-ly", now=T0, purpose="replace").token
    assert _join(ids, new_box, token)[0] == "pending"
    assert ids.active_keys()["c1"][0] == old_box.key_id  # until a manager approves
    ids.approve("c1", by="quan-ly", now=T0 + timedelta(hours=1))
    assert ids.active_keys()["c1"][0] == new_box.key_id
    keys = {k.key_id: k for k in ids.keys("c1")}
    assert keys[old_box.key_id].status == "retired"
    assert keys[old_box.key_id].retired_at == T0 + timedelta(hours=1)
    status, reason = _join(ids, old_box, token)
    assert status == "refused"
    assert "retired" in str(reason)
    actions = [(e.action, e.user, e.subject) for e in reversed(audit.entries())]
    assert actions == [
        ("enrol-token", "quan-ly", "c1"),
        ("enrol-register", "enrolment token", "c1"),
        ("enrol-replace", "quan-ly", "c1"),
        ("enrol-approve", "quan-ly", "c1"),
    ]
    approved = audit.entries()[0].detail or ""
    assert f"registered key {new_box.key_id}" in approved
    assert f"retired key {old_box.key_id}" in approved


def test_a_rejected_key_is_refused_from_then_on(store: Store) -> None:
    ids = Identities(store)
    box = identity()
    token = ids.issue_token("c1", by="quan-ly", now=T0).token
    _join(ids, box, token)
    with pytest.raises(EnrolmentError, match="no join request from cluster c2"):
        ids.approve("c2", by="quan-ly", now=T0)
    ids.reject("c1", by="quan-ly", now=T0)
    assert _join(ids, box, token)[0] == "refused"
    assert [(a.status, a.key_id) for a in ids.unanswered()] == [("refused", box.key_id)]


# --- what the controller believes -------------------------------------------------------------


def test_only_the_registered_key_of_the_cluster_is_believed() -> None:
    box, other = identity(), identity()
    keys = ClusterKeys()
    keys.replace_all({"c1": (box.key_id, box.public_key)})
    opened = keys.open("c1", "event", box.seal("event", {"kind": "finished"}))
    assert (opened.body, opened.key, opened.n) == ({"kind": "finished"}, box.key_id, (1, 1))
    for cluster, payload in (
        ("c1", b'{"kind": "finished"}'),  # unsigned
        ("c1", other.seal("event", {})),  # another key
        ("c2", box.seal("event", {})),  # c1's key is not c2's
        ("c1", box.seal("state", {})),  # signed for another channel
    ):
        with pytest.raises(Refused):
            keys.open(cluster, "event", payload)
    assert keys.refused == 4


def test_a_message_changed_after_signing_or_with_a_malformed_signature_is_refused() -> None:
    """The registered key's id, but bytes it did not sign: the signature check itself."""
    box = identity()
    keys = ClusterKeys()
    keys.replace_all({"c1": (box.key_id, box.public_key)})
    good = box.seal("event", {"kind": "finished", "play_id": "p1"})
    tampered = good.replace(b'"p1"', b'"p2"')
    sig = good[-90:-2]
    flipped = good[:-90] + (b"B" if sig[:1] == b"A" else b"A") + good[-89:]
    # 88 base64 characters with no padding: 66 bytes, not a 64-byte signature.
    long_sig = good[:-90] + base64.b64encode(b"x" * 66) + b'"}'
    for payload, why in ((tampered, "bad signature"), (flipped, "bad signature"),
                         (long_sig, "bad signature")):  # fmt: skip
        with pytest.raises(Refused, match=why):
            keys.open("c1", "event", payload)
    assert keys.refused == 3
    assert keys.open("c1", "event", good).body["play_id"] == "p1"


def test_while_upgrading_unsigned_is_taken_from_clusters_without_a_key_only() -> None:
    box = identity()
    keys = ClusterKeys(require_signed=False)
    keys.replace_all({"c1": (box.key_id, box.public_key)})
    assert keys.open("c2", "event", b'{"kind": "finished"}').key is None
    assert keys.open("c2", "event", identity().seal("event", {})).key is None  # not enrolled
    with pytest.raises(Refused, match="registered key"):
        keys.open("c1", "event", b'{"kind": "finished"}')
    assert keys.unsigned == 2


def test_a_flood_of_refusals_logs_ten_lines_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    keys = ClusterKeys()
    for _ in range(1000):
        with pytest.raises(Refused):
            keys.open("c1", "event", b'{"kind": "finished"}')
    assert keys.refused == 1000
    assert len([r for r in caplog.records if r.name == "controller.trust"]) == 10


# --- loa-agent check ---------------------------------------------------------------------------


def _check(tmp_path: Path, token: bool) -> CheckResult:
    config = AgentConfig(
        cluster_id="c1", broker_url="mqtt://127.0.0.1:1", controller_public_key=tmp_path / "x",
        data_dir=tmp_path / "data", output=OutputConfig(kind="null"),
        enrolment_token_file=(tmp_path / "enrolment.token") if token else None,
    )
    return _check_identity(_Context(config, click=False, timeout_s=1))


def test_check_says_what_the_controller_made_of_this_clusters_key(tmp_path: Path) -> None:
    no_token = _check(tmp_path, token=False)
    assert no_token.status == "FAIL"
    assert "loa-controller enrol token c1" in str(no_token.fix)
    (tmp_path / "enrolment.token").write_text("t" * 43 + "\n")
    assert _check(tmp_path, token=True).status == "WARN"  # the agent makes its key at start
    box = AgentIdentity.load_or_create(tmp_path / "data")
    waiting = _check(tmp_path, token=True)
    assert (waiting.status, box.key_id in waiting.message) == ("WARN", True)
    box.record("pending", T0)
    pending = _check(tmp_path, token=True)
    assert pending.status == "WARN"
    assert f"loa-controller enrol approve c1 (key {box.key_id})" in str(pending.fix)
    box.record("refused", T0, "this token was already used")
    refused = _check(tmp_path, token=True)
    assert refused.status == "FAIL"
    assert "already used" in refused.message
    box.record("registered", T0)
    assert _check(tmp_path, token=False).status == "PASS"


def test_fleet_shows_each_clusters_key_registered_waiting_or_missing(
    tmp_path: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manager sees in `fleet` which clusters the controller takes reports from."""
    from controller.cli import main as cli_main

    store.clusters.sync_fleet([(c, c, "xa-a", "Xã A") for c in ("c1", "c2", "c3")])
    ids = Identities(store)
    registered, asking = identity(), identity()
    ids.register_key("c1", registered.public_key, registered.key_id, by="quan-ly", now=T0)
    token = ids.issue_token("c2", by="quan-ly", now=T0).token
    assert _join(ids, asking, token, cluster="c2")[0] == "pending"
    config = tmp_path / "controller.yaml"
    config.write_text(
        "broker_url: mqtt://127.0.0.1:1883\nfleet: fleet.yaml\nplaylists: [playlists]\n"
        f"store_url: sqlite:///{tmp_path / 'controller.db'}\nprivate_key: controller.key\n"
        "content_dir: content\n",
        encoding="utf-8",
    )
    outputs = []
    for args in (["--json"], []):
        with pytest.raises(SystemExit) as done:
            cli_main(["fleet", "--config", str(config), *args])
        assert done.value.code == 0
        outputs.append(capsys.readouterr().out)
    keys = {row["cluster"]: row["key"] for row in json.loads(outputs[0])}
    assert keys == {
        "c1": {"status": "registered", "id": registered.key_id},
        "c2": {"status": "waiting approval", "id": asking.key_id},
        "c3": {"status": "not registered", "id": None},
    }
    lines = {line.split()[0]: line for line in outputs[1].splitlines()
             if line[:3] in ("c1 ", "c2 ", "c3 ")}  # fmt: skip
    assert lines["c1"].rstrip().endswith(registered.key_id)
    assert lines["c2"].rstrip().endswith(f"{asking.key_id} waiting approval")
    assert lines["c3"].rstrip().endswith("not registered")
    assert "1 of 3 clusters have a registered key; 1 waiting for a manager's approval" in outputs[1]
