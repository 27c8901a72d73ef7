"""Rotating the controller's key: the rotation the old key signs, what a cluster trusts
after it (on disk), the overlap and the retirement; `loa-controller keys`."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from access_support import controller_folder
from agent_support import Keys, command
from conftest import MosquittoBroker, require, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from identity_support import token_file

from controller.config import load_controller_config
from controller.distribution import PlaySpec
from controller.keys import load_rotation, make_rotation, rotation_path
from controller.main import Controller, Settings
from controller.samples import tone
from device_agent.guard import Guard, Ignored, MembershipState, Rejected, SeenStore
from device_agent.localdb import LocalDatabase
from device_agent.trust import ControllerKeys
from protocol import topics
from protocol.clock import ManualClock
from protocol.messages import Address, KeyRotationBody, PlayBody, StopBody
from protocol.signing import (
    Signer,
    Verifier,
    key_id,
    key_text,
    load_private_key,
    load_public_key,
    public_pem,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)
ME = "xa-a-01"
KEY = topics.cluster_topic(ME, "key")
CMD = topics.cluster_topic(ME, "command")


class Box:
    """One cluster's guard and trust, over its database, restartable."""

    def __init__(self, tmp: Path) -> None:
        self.old = Keys()  # the key pinned in the box's config
        self.new = Signer(Ed25519PrivateKey.generate())
        self.clock = ManualClock(T0)
        self.path = tmp / "agent.sqlite"
        self.db: LocalDatabase | None = None
        self.restart()

    def restart(self, pinned: Signer | None = None) -> None:
        if self.db is not None:
            self.db.close()
        self.db = LocalDatabase(self.path)
        key = (pinned or self.old.signer).public_key
        self.trust = ControllerKeys(key, self.db.document("controller-keys"), self.clock)
        membership = MembershipState(self.db.document("membership"), ("xa-a",))
        self.guard = Guard(
            Verifier(self.trust), ME, membership.current, self.clock,
            SeenStore(self.db.table("seen")), rotation_applied=self.trust.already_applied,
        )

    def rotation(self, *, signer: Signer | None = None, overlap: timedelta = timedelta(days=1),
                 to: str = ME, old: Signer | None = None) -> bytes:
        body = KeyRotationBody(
            old_key=key_text((old or self.old.signer).public_key),
            new_key=key_text(self.new.public_key), retire_at=self.clock.now() + overlap,
        )
        return command(signer or self.old.signer, body, self.clock.now(), clusters=[to],
                       ttl=timedelta(days=400)).to_json()

    def stop(self, signer: Signer) -> bytes:
        return command(signer, StopBody(play_id="p"), self.clock.now(), clusters=[ME]).to_json()

    def admit_rotation(self, payload: bytes) -> None:
        cmd = self.guard.admit(KEY, payload)
        assert isinstance(cmd.body, KeyRotationBody)
        self.trust.apply(cmd)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def test_after_a_rotation_both_keys_pass_until_the_old_retires(box: Box) -> None:
    with pytest.raises(Rejected, match="bad signature"):
        box.guard.admit(CMD, box.stop(box.new))  # not yet trusted
    box.admit_rotation(box.rotation(overlap=timedelta(hours=2)))

    box.guard.admit(CMD, box.stop(box.new))
    box.guard.admit(CMD, box.stop(box.old.signer))
    box.clock.advance(timedelta(hours=2))
    with pytest.raises(Rejected) as refused:
        box.guard.admit(CMD, box.stop(box.old.signer))
    assert refused.value.code == "bad-signature"
    assert f"retired at {(T0 + timedelta(hours=2)).isoformat()}" in refused.value.reason
    assert key_id(box.old.signer.public_key) in refused.value.reason
    box.guard.admit(CMD, box.stop(box.new))


def test_the_new_key_is_kept_across_a_restart_with_the_old_key_still_pinned(box: Box) -> None:
    box.admit_rotation(box.rotation(overlap=timedelta(minutes=5)))
    box.restart()  # the config still names the old controller.pub
    box.guard.admit(CMD, box.stop(box.new))
    box.clock.advance(timedelta(minutes=5))
    box.restart()
    box.guard.admit(CMD, box.stop(box.new))
    with pytest.raises(Rejected, match="retired"):
        box.guard.admit(CMD, box.stop(box.old.signer))


def test_the_retained_copy_is_ignored_during_and_after_the_overlap(box: Box) -> None:
    payload = box.rotation(overlap=timedelta(minutes=5))
    box.admit_rotation(payload)
    with pytest.raises(Ignored, match="already applied"):
        box.guard.admit(KEY, payload)
    box.clock.advance(timedelta(minutes=10))  # the old key, which signed it, is retired
    box.restart()
    with pytest.raises(Ignored, match="already applied"):
        box.guard.admit(KEY, payload)


def test_a_box_installed_with_the_new_key_ignores_the_rotation(box: Box) -> None:
    box.restart(pinned=box.new)
    with pytest.raises(Ignored, match="trusts already"):
        box.guard.admit(KEY, box.rotation())
    box.guard.admit(CMD, box.stop(box.new))
    with pytest.raises(Rejected):
        box.guard.admit(CMD, box.stop(box.old.signer))


def test_a_box_that_missed_the_whole_overlap_still_moves_to_the_new_key(box: Box) -> None:
    payload = box.rotation(overlap=timedelta(days=7))
    box.clock.advance(timedelta(days=30))  # off for a month; the rotation is retained
    box.admit_rotation(payload)
    box.guard.admit(CMD, box.stop(box.new))
    with pytest.raises(Rejected, match="retired"):
        box.guard.admit(CMD, box.stop(box.old.signer))


@pytest.mark.parametrize("how", ["signed by the new key", "signed by a stranger",
                                 "for another cluster", "on the command topic"])
def test_forged_rotations_change_nothing(box: Box, how: str) -> None:
    stranger = Signer(Ed25519PrivateKey.generate())
    if how == "signed by the new key":  # claims the old key retires; the new signs it
        payload, topic = box.rotation(signer=box.new), KEY
    elif how == "signed by a stranger":
        payload, topic = box.rotation(signer=stranger, old=stranger), KEY
    elif how == "for another cluster":
        payload, topic = box.rotation(to="xa-b-01"), KEY
    else:
        payload, topic = box.rotation(), CMD
    with pytest.raises(Rejected) as refused:
        box.guard.admit(topic, payload)
    assert not isinstance(refused.value, Ignored)
    with pytest.raises(Rejected, match="bad signature"):
        box.guard.admit(CMD, box.stop(box.new))


def test_a_rotation_must_be_signed_by_the_key_it_retires(box: Box) -> None:
    box.admit_rotation(box.rotation())
    third = Signer(Ed25519PrivateKey.generate())
    body = KeyRotationBody(
        old_key=key_text(box.old.signer.public_key), new_key=key_text(third.public_key),
        retire_at=box.clock.now(),
    )
    sneaky = command(box.new, body, box.clock.now(), clusters=[ME]).to_json()  # trusted signer
    with pytest.raises(Rejected, match="signed by the key it retires"):
        box.guard.admit(KEY, sneaky)


def test_only_a_rotation_comes_on_the_key_topic(box: Box) -> None:
    with pytest.raises(Rejected, match="key rotations come on this cluster's own key topic"):
        box.guard.admit(KEY, box.stop(box.old.signer))


def test_a_key_pinned_by_hand_replaces_what_rotations_taught(box: Box) -> None:
    box.admit_rotation(box.rotation())
    third = Signer(Ed25519PrivateKey.generate())
    box.restart(pinned=third)  # the technician installed a new controller.pub
    box.guard.admit(CMD, box.stop(third))
    with pytest.raises(Rejected):
        box.guard.admit(CMD, box.stop(box.new))
    box.restart(pinned=box.new)  # the key it learned, now pinned: nothing to forget
    box.guard.admit(CMD, box.stop(box.new))


def test_the_controller_signs_one_rotation_per_cluster(tmp_path: Path) -> None:
    old = Ed25519PrivateKey.generate()
    new = Ed25519PrivateKey.generate().public_key()
    rotation = make_rotation(old, new, ["b", "a"], T0, timedelta(days=3))
    assert list(rotation.commands) == ["a", "b"]
    cmd = Verifier(old.public_key()).verify(rotation.commands["a"])
    assert cmd.to.clusters == ["a"]
    assert isinstance(cmd.body, KeyRotationBody)
    assert cmd.body.retire_at == T0 + timedelta(days=3)
    assert cmd.body.new_key == key_text(new)
    assert cmd.expires_at >= T0 + timedelta(days=400)
    with pytest.raises(ValueError, match="out of range"):
        make_rotation(old, new, ["a"], T0, timedelta(days=400))


# --- loa-controller keys -------------------------------------------------------------------


def loa_controller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_keys_rotate_replaces_the_key_and_keeps_the_signed_rotation(tmp_path: Path) -> None:
    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    private = tmp_path / "keys" / "controller.key"
    private.chmod(0o644)  # left readable by someone: the new key is 0600 all the same
    old = load_private_key(private)

    result = loa_controller("keys", "rotate", "--overlap", "3d", "--config", str(config))

    assert result.returncode == 0, result.stderr
    new = load_private_key(private)
    assert key_text(new.public_key()) != key_text(old.public_key())
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_pem(load_public_key(tmp_path / "keys" / "controller.pub")) == public_pem(
        new.public_key()
    )
    rotation = load_rotation(rotation_path(private))
    assert rotation is not None
    assert sorted(rotation.commands) == ["a-01", "a-02", "b-01"]
    assert key_text(rotation.old_key) == key_text(old.public_key())
    assert key_text(rotation.new_key) == key_text(new.public_key())
    out = result.stdout
    ids = f"{key_id(old.public_key())} -> {key_id(new.public_key())}"
    assert f"controller key rotated: {ids}" in out
    assert "restart the controller now" in out
    assert "the old private key is not kept" in out
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []
    json.loads(rotation_path(private).read_text())  # public, readable JSON

    status = loa_controller("keys", "status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "under way: both keys accepted until" in status.stdout

    again = loa_controller("keys", "rotate", "--config", str(config))
    assert again.returncode == 1
    assert "under way until" in again.stderr
    assert load_private_key(private).private_bytes_raw() == new.private_bytes_raw()
    forced = loa_controller("keys", "rotate", "--force", "--overlap", "90m", "--config",
                            str(config))
    assert forced.returncode == 0, forced.stderr
    assert loa_controller("keys", "rotate", "--overlap", "7 weeks", "--config",
                          str(config)).returncode == 1


def test_keygen_force_drops_a_rotation_to_a_key_that_is_gone(tmp_path: Path) -> None:
    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    assert loa_controller("keys", "rotate", "--config", str(config)).returncode == 0
    assert rotation_path(tmp_path / "keys" / "controller.key").exists()
    result = loa_controller("keygen", "--out", str(tmp_path / "keys"), "--force")
    assert result.returncode == 0, result.stderr
    assert "a new key is not a rotation" in result.stdout
    assert not rotation_path(tmp_path / "keys" / "controller.key").exists()


# --- end to end: a real broker, the controller, a real agent process ------------------------

E2E_FLEET = """\
province:
  id: tinh-r
  name: Tỉnh Xoay
  communes:
    - id: xa-r
      name: Xã R
      clusters:
        - {id: r-01, name: Cụm R1}
"""
OVERLAP_S = 40


class RotationRig:
    def __init__(self, tmp: Path, broker: MosquittoBroker) -> None:
        self.tmp = tmp
        self.config = controller_folder(tmp, broker.url, fleet=E2E_FLEET)
        tone(tmp / "urgent.wav", 0.5, freq=880)
        agent_dir = tmp / "agent"
        agent_dir.mkdir()
        # The box's own copy of the key it was installed with; the controller's file changes.
        shutil.copy(tmp / "keys" / "controller.pub", agent_dir / "controller.pub")
        self.agent_config = agent_dir / "agent.yaml"
        self.agent_config.write_text(
            f"cluster_id: r-01\nbroker_url: {broker.url}\n"
            "controller_public_key: controller.pub\ndata_dir: data\ngroups: [xa-r, tinh-r]\n"
            "enrolment_token_file: enrolment.token\n"
            "keepalive: 5\noutput:\n  kind: file\n  out_dir: played\n",
            encoding="utf-8",
        )
        # The box enrols with a token that approves itself.
        token_file(f"sqlite:///{tmp / 'controller.db'}", "r-01", agent_dir / "enrolment.token")
        self.wav_dir = agent_dir / "played"
        self.log_file = tmp / "agent.log"
        self.agent: subprocess.Popen[bytes] | None = None
        self.controller = self._controller()

    def _controller(self) -> Controller:
        return Controller(Settings.from_config(load_controller_config(self.config)))

    def restart_controller(self) -> None:
        self.controller.stop()
        self.controller = self._controller()
        self.controller.start()

    def start_agent(self) -> None:
        with self.log_file.open("ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "device_agent.cli", "run", "--config",
                 str(self.agent_config)],
                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self.log().count("connected to the broker") > self.connects, 20,
                   "the agent to connect")
        self.connects = self.log().count("connected to the broker")

    connects = 0

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(10)

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if (
            self.log_file.exists()) else ""

    def wavs(self) -> int:
        return len(list(self.wav_dir.glob("*.wav"))) if self.wav_dir.exists() else 0

    def urgent(self) -> PlaySpec:
        """An announcement through the controller (signed with the key it loaded)."""
        before = self.wavs()
        [spec] = self.controller.send_urgent(["r-01"], [self.tmp / "urgent.wav"], title="Thử")
        wait_until(lambda: self.wavs() > before, 30, "the announcement to play")
        return spec

    def signed_by(self, signer: Signer, spec: PlaySpec, play_id: str) -> bytes:
        now = datetime.now(UTC)
        body = PlayBody(
            play_id=play_id, bulletin="Thử", level="emergency", start_at=now,
            latest_start=now + timedelta(minutes=5),
            items=[item.content_ref() for item in spec.items], urgent=True,
        )
        return signer.command(body, Address(clusters=["r-01"]), now,
                              timedelta(minutes=10)).to_json()

    def stop(self) -> None:
        self.stop_agent()
        self.controller.stop()


def test_a_rotated_key_reaches_a_running_agent_and_the_old_one_retires(
    tmp_path: Path, mosquitto_broker: MosquittoBroker,
) -> None:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    rig = RotationRig(tmp_path, mosquitto_broker)
    rig.controller.start()
    rig.start_agent()
    try:
        first = rig.urgent()  # with the key it was installed with
        old = rig.controller.signer  # the key about to be rotated out
        topic = topics.cluster_topic("r-01", "command")

        rotated = loa_controller("keys", "rotate", "--overlap", f"{OVERLAP_S}s", "--config",
                                 str(rig.config))
        assert rotated.returncode == 0, rotated.stderr
        rotation = load_rotation(rotation_path(tmp_path / "keys" / "controller.key"))
        assert rotation is not None
        rig.restart_controller()  # signs with the new key; publishes the rotation first
        new_id = key_id(rotation.new_key)
        wait_until(lambda: f"controller key rotated: now trusting {new_id}" in rig.log(), 20,
                   "the agent to take the rotation")
        assert "refused command" not in rig.log()  # the membership came after the rotation

        # The overlap: the new key's announcements and the old key's commands both play.
        rig.urgent()
        before = rig.wavs()
        rig.controller.link.publish(topic, rig.signed_by(old, first, "old-key-in-overlap"))
        wait_until(lambda: rig.wavs() > before, 30, "the old key's play during the overlap")
        assert datetime.now(UTC) < rotation.retire_at, "the overlap ran out before its checks"

        # After it: only the new key.
        wait_until(lambda: datetime.now(UTC) > rotation.retire_at + timedelta(seconds=1),
                   OVERLAP_S + 5, "the old key's retirement")
        rejected = rig.controller.store.events.count("rejected")
        rig.controller.link.publish(topic, rig.signed_by(old, first, "old-key-after"))
        wait_until(lambda: rig.controller.store.events.count("rejected") > rejected, 20,
                   "the old key's command refused")
        rows = {r.id: r for r in rig.controller.store.clusters.fleet_rows()}
        assert "retired at" in (rows["r-01"].last_rejection or "")
        assert "old-key-after" not in "".join(p.name for p in rig.wav_dir.glob("*.wav"))

        # The agent restarted, its config still pinning the old key: it trusts the new one.
        rig.stop_agent()
        rig.start_agent()
        before = rig.wavs()
        rig.controller.link.publish(
            topic, rig.signed_by(rig.controller.signer, first, "new-key-after-restart")
        )
        wait_until(lambda: rig.wavs() > before, 30, "the new key's play after a restart")
        pinned = load_public_key(tmp_path / "agent" / "controller.pub")
        assert key_text(pinned) == key_text(rotation.old_key)
    finally:
        rig.stop()
