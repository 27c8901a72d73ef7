"""`loa-agent check` and `loa-agent test-tone` as a technician runs them: a good setup
passes every line (a real mosquitto holding the controller's signed membership, a
simulated relay board on a real pty, the file output with the real ffmpeg), and each
broken part fails its own line with what to try."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import Keys
from conftest import MosquittoBroker, free_port, require
from l10n_support import english_fragments_in
from relay_sim import SimulatedBoard
from tls_support import Authority, tls_mosquitto

from device_agent.check import NAMES, CheckResult, run_checks
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.l10n import LOCALE_VARIABLES, catalog
from protocol.messages import Address, KeyRotationBody, MembershipBody
from protocol.signing import key_id, key_text, public_pem

ROOT = Path(__file__).resolve().parent.parent
ME = "chk-01"
GROUPS = ["xa-tan-binh", "tinh-hau-giang"]


def loa_agent(
    *args: str, timeout: float = 60, locale: str = "C.UTF-8"
) -> subprocess.CompletedProcess[str]:
    """loa-agent in a process of its own, under this locale (LANG; the others unset)."""
    env = {k: v for k, v in os.environ.items() if k not in LOCALE_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "device_agent.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT), "LANG": locale},
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def mosquitto_pub(port: int, topic: str, payload: bytes) -> None:
    require("mosquitto_pub", shutil.which("mosquitto_pub") is not None,
            "apt-get install mosquitto-clients")
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-r", "-t", topic,
         "-s"],
        input=payload, check=True, timeout=10,
    )


@dataclass
class Setup:
    tmp: Path
    broker: MosquittoBroker
    keys: Keys
    board: SimulatedBoard
    config: Path

    def write(self, **changes: str) -> Path:
        """The good config with some keys replaced (a value of "" removes the key)."""
        values = {
            "cluster_id": ME,
            "broker_url": self.broker.url,
            "controller_public_key": "controller.pub",
            "data_dir": "data",
            "output": "\n  kind: file\n  out_dir: played",
            "relay": f"\n  driver: ascii\n  url: {self.board.url}\n  warm_up: 0s\n"
                     "  reply_timeout_s: 0.5",
        }
        values.update(changes)
        text = "".join(f"{k}: {v}\n" for k, v in values.items() if v != "")
        self.config.write_text(text, encoding="utf-8")
        return self.config

    def check(self, **changes: str) -> dict[str, CheckResult]:
        results = run_checks(self.write(**changes), timeout_s=3, report=lambda _r: None)
        return {r.name: r for r in results}


@pytest.fixture
def setup(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[Setup]:
    require("ffmpeg", shutil.which("ffmpeg") is not None, "apt-get install ffmpeg")
    keys = Keys()
    (tmp_path / "controller.pub").write_bytes(public_pem(keys.private.public_key()))
    (tmp_path / "data").mkdir()
    # A box whose key the controller has registered (what the agent keeps once told).
    AgentIdentity.load_or_create(tmp_path / "data").record("registered", datetime.now(UTC))
    membership = keys.signer.command(
        MembershipBody(cluster=ME, groups=GROUPS), Address(clusters=[ME]),
        datetime.now(UTC), timedelta(days=400),
    )
    mosquitto_pub(mosquitto_broker.port, topics.cluster_topic(ME, "membership"),
                  membership.to_json())
    board = SimulatedBoard("ascii", tmp_path / "ttyRELAY").start()
    try:
        yield Setup(tmp_path, mosquitto_broker, keys, board, tmp_path / "agent.yaml")
    finally:
        board.close()


def test_a_good_setup_passes_every_line_and_click_switches_the_relay(setup: Setup) -> None:
    config = setup.write()
    result = loa_agent("check", "--config", str(config), "--click")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    by_name = {line.split(":")[0].split("  ", 1)[1]: line for line in lines if "  " in line}
    assert list(by_name) == [
        "config", "controller key", "data_dir", "identity", "disk space", "broker",
        "membership", "clock", "relay", "output",
    ], lines
    for name, line in by_name.items():
        if name == "clock" and line.startswith("WARN"):
            # This machine's kernel may not be kept by NTP; the line must say so.
            assert "not synchronised" in line or "cannot ask the kernel" in line, line
            continue
        assert line.startswith("PASS"), line
    assert "groups xa-tan-binh, tinh-hau-giang" in by_name["membership"]
    assert "switched on, then off" in by_name["relay"]
    assert [r.data for r in setup.board.received()].count(b"RELAY ON\r\n") == 1
    assert setup.board.relay(0) is False  # left off
    wav = setup.tmp / "played" / "loa-check-tone.wav"
    assert str(wav) in by_name["output"]
    with wave.open(str(wav), "rb") as audio:
        assert abs(audio.getnframes() / audio.getframerate() - 1.0) < 0.05
    assert "is registered with the controller" in by_name["identity"]
    assert lines[-1].startswith("10 checks: ")
    assert lines[-1].endswith("ready")
    assert result.stderr == ""  # no log noise around the report


def test_the_report_speaks_vietnamese_under_a_vietnamese_locale(setup: Setup) -> None:
    config = setup.write(relay="\n  driver: none")
    result = loa_agent("check", "--config", str(config), locale="vi_VN.UTF-8")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    vi = catalog("vi")
    heads = [line.split(": ")[0] for line in lines[:-1] if not line.startswith(" ")]
    assert [h.split("  ", 1)[1] for h in heads] == [vi[name] for name in NAMES], lines
    assert {h.split("  ", 1)[0] for h in heads} <= {"ĐẠT", "CHÚ Ý"}, lines
    assert heads[0] == "ĐẠT  cấu hình"
    assert lines[-1].startswith("10 mục kiểm tra: "), lines[-1]
    assert lines[-1].endswith("sẵn sàng"), lines[-1]
    assert "đã ghi tiếng thử vào" in result.stdout
    assert english_fragments_in(result.stdout) == []
    # --lang wins over the locale, either side of the command.
    for args in (("--lang", "en", "check"), ("check", "--lang", "en")):
        again = loa_agent(*args, "--config", str(config), locale="vi_VN.UTF-8")
        assert again.stdout.splitlines()[0].startswith("PASS  config: "), again.stdout
    failed = loa_agent("check", "--config", str(setup.write(keepalive="fast")), "--lang", "vi")
    assert failed.stdout.startswith(f"LỖI  cấu hình: {config} có 1 lỗi. Cách xử lý: sửa từng")


def test_a_bad_config_line_fails_with_file_line_and_exit_1(setup: Setup) -> None:
    config = setup.write(keepalive="fast")
    result = loa_agent("check", "--config", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"FAIL  config: {config} has 1 error(s). Try: correct each line")
    assert lines[1].strip().startswith(f"{config}:13:12: keepalive: expected a whole number")
    assert lines[-1].endswith("not ready: fix the FAIL lines")


def test_an_unreachable_broker_fails_the_broker_line(setup: Setup) -> None:
    results = setup.check(broker_url=f"mqtt://127.0.0.1:{free_port()}")
    broker = results["broker"]
    assert broker.status == "FAIL"
    assert "refused the connection" in broker.message
    assert "port" in (broker.fix or "")
    assert results["membership"].status == "WARN"  # not checked without a broker
    assert results["output"].status == "PASS"  # the rest is still checked


def test_an_unknown_broker_host_is_a_dns_failure(setup: Setup) -> None:
    broker = setup.check(broker_url="mqtt://no-such-broker.invalid:1883")["broker"]
    assert broker.status == "FAIL"
    assert "cannot resolve" in broker.message or "no DNS answer" in broker.message
    assert "broker_url" in (broker.fix or "")


def test_a_missing_or_damaged_key_file_fails_with_where_to_get_it(setup: Setup) -> None:
    missing = setup.check(controller_public_key="nowhere.pub")["controller key"]
    assert missing.status == "FAIL"
    assert "copy controller.pub from the controller" in (missing.fix or "")
    (setup.tmp / "garbage.pub").write_text("not a key\n")
    damaged = setup.check(controller_public_key="garbage.pub")["controller key"]
    assert damaged.status == "FAIL"
    assert "not a PEM public key" in damaged.message


def test_another_controllers_key_fails_the_membership_line(setup: Setup) -> None:
    (setup.tmp / "other.pub").write_bytes(public_pem(Keys().private.public_key()))
    results = setup.check(controller_public_key="other.pub")
    assert results["controller key"].status == "PASS"  # a key, but not the right one
    membership = results["membership"]
    assert membership.status == "FAIL"
    assert "not signed with" in membership.message
    assert "refuse every command" in (membership.fix or "")


def test_a_membership_signed_with_the_key_rotated_to_passes(setup: Setup) -> None:
    """The box still pins the key it was installed with; the controller rotated its key
    and signs the membership with the new one: the retained rotation links the two."""
    new = Keys()
    now = datetime.now(UTC)
    rotation = setup.keys.signer.command(
        KeyRotationBody(old_key=key_text(setup.keys.signer.public_key),
                        new_key=key_text(new.signer.public_key), retire_at=now),
        Address(clusters=[ME]), now, timedelta(days=400),
    )
    membership = new.signer.command(
        MembershipBody(cluster=ME, groups=GROUPS), Address(clusters=[ME]), now,
        timedelta(days=400),
    )
    port = setup.broker.port
    mosquitto_pub(port, topics.cluster_topic(ME, "membership"), membership.to_json())
    no_rotation = setup.check()["membership"]
    assert no_rotation.status == "FAIL"
    mosquitto_pub(port, topics.cluster_topic(ME, "key"), rotation.to_json())
    result = setup.check()["membership"]
    assert result.status == "PASS", result
    assert f"which the controller rotated to from {key_id(setup.keys.signer.public_key)}" in (
        result.message
    )
    # The old key is retired by now: a membership still signed with it is a failure.
    old = setup.keys.signer.command(
        MembershipBody(cluster=ME, groups=GROUPS), Address(clusters=[ME]), now,
        timedelta(days=400),
    )
    mosquitto_pub(port, topics.cluster_topic(ME, "membership"), old.to_json())
    stale = setup.check()["membership"]
    assert stale.status == "FAIL"
    assert "restart the controller" in (stale.fix or "")


def test_a_misspelt_cluster_id_finds_no_membership(setup: Setup) -> None:
    membership = setup.check(cluster_id="chk-10")["membership"]
    assert membership.status == "WARN"
    assert "spelt exactly as in the controller's fleet.yaml" in (membership.fix or "")


def test_an_unwritable_data_dir_fails(setup: Setup) -> None:
    if os.geteuid() == 0:
        # root writes through file modes: a read-only file system it cannot write to.
        folder = Path("/sys")
    else:
        folder = setup.tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
    line = setup.check(data_dir=str(folder))["data_dir"]
    assert line.status == "FAIL"
    assert "is not writable" in line.message
    assert "chown -R loa:loa" in (line.fix or "")
    gone = setup.check(data_dir="no-such-folder")["data_dir"]
    assert gone.status == "FAIL"
    assert "does not exist" in gone.message


def test_a_missing_ffmpeg_fails_the_output_line(setup: Setup) -> None:
    output = setup.check(output="\n  kind: file\n  out_dir: played\n  ffmpeg: /nonexistent/ffmpeg")
    line = output["output"]
    assert line.status == "FAIL"
    assert "ffmpeg not found" in line.message
    assert "set output.ffmpeg in the agent config to its full path" in line.message


def test_a_relay_board_that_is_not_there_fails_the_relay_line(setup: Setup) -> None:
    relay = setup.check(relay="\n  driver: lcus\n  url: /dev/ttyNOTHERE")["relay"]
    assert relay.status == "FAIL"
    assert "/dev/ttyNOTHERE" in relay.message


def test_a_relay_that_does_not_answer_fails(setup: Setup) -> None:
    setup.board.fault = "silent"
    relay = setup.check()["relay"]
    assert relay.status == "FAIL"


def test_bad_credentials_are_told_apart(tmp_path: Path) -> None:
    require("mosquitto_passwd", shutil.which("mosquitto_passwd") is not None,
            "apt-get install mosquitto")
    broker = MosquittoBroker(tmp_path / "auth")
    passwords = tmp_path / "auth" / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), ME, "right"], check=True,
                   timeout=10)
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwords}\n"
    )
    broker.start()
    try:
        keys = Keys()
        (tmp_path / "controller.pub").write_bytes(public_pem(keys.private.public_key()))
        config = tmp_path / "agent.yaml"
        base = (f"cluster_id: {ME}\nbroker_url: {broker.url}\ncontroller_public_key: "
                "controller.pub\ndata_dir: .\noutput: {kind: null}\n")

        def broker_line(extra: str) -> CheckResult:
            config.write_text(base + extra)
            results = run_checks(config, timeout_s=3, report=lambda _r: None)
            return {r.name: r for r in results}["broker"]

        wrong = broker_line(f"username: {ME}\npassword: wrong\n")
        assert wrong.status == "FAIL"
        assert f"refused the login of user '{ME}'" in wrong.message
        assert "username and password" in (wrong.fix or "")
        anonymous = broker_line("")
        assert "refused the login of an anonymous client" in anonymous.message
        right = broker_line(f"username: {ME}\npassword: right\n")
        assert right.status == "PASS", right
    finally:
        broker.kill()


def test_a_tls_failure_names_the_certificate_problem(tmp_path: Path) -> None:
    ca = Authority.create(tmp_path / "pki", "Loa test CA")
    other = Authority.create(tmp_path / "pki", "Some other CA")
    cert, key = ca.issue(tmp_path / "tls")
    broker = tls_mosquitto(tmp_path / "tls", cert, key)
    broker.start()
    try:
        (tmp_path / "controller.pub").write_bytes(public_pem(Keys().private.public_key()))
        config = tmp_path / "agent.yaml"
        base = (f"cluster_id: {ME}\ncontroller_public_key: controller.pub\ndata_dir: .\n"
                "output: {kind: null}\n")
        url = f"broker_url: mqtts://localhost:{broker.port}\n"

        def broker_line(extra: str) -> CheckResult:
            config.write_text(base + extra)
            results = run_checks(config, timeout_s=3, report=lambda _r: None)
            return {r.name: r for r in results}["broker"]

        for ca_line, trusting in [("", "the system CAs"),
                                  (f"broker_ca_file: {other.cert}\n", str(other.cert))]:
            untrusted = broker_line(url + ca_line)
            assert untrusted.status == "FAIL"
            assert untrusted.message == (
                "TLS with localhost: certificate verify failed: unable to get local issuer "
                f"certificate (trusting {trusting})"
            )
            assert "not signed by the CA this client trusts" in (untrusted.fix or "")
            assert "broker_ca_file" in (untrusted.fix or "")
        wrong_host = broker_line(
            f"broker_url: mqtts://127.0.0.1:{broker.port}\nbroker_ca_file: {ca.cert}\n"
        )
        assert wrong_host.status == "FAIL"
        assert "IP address mismatch" in wrong_host.message
        unreadable = broker_line(url + f"broker_ca_file: {tmp_path / 'missing.pem'}\n")
        assert unreadable.status == "FAIL"
        assert "cannot read broker_ca_file" in unreadable.message
        trusted = broker_line(url + f"broker_ca_file: {ca.cert}\n")
        assert trusted.status == "PASS", trusted
        plain = broker_line(f"broker_url: mqtt://localhost:{broker.port}\n")
        assert plain.status == "FAIL"
        assert "mqtts://" in (plain.fix or "")
    finally:
        broker.kill()


def test_test_tone_powers_the_amplifier_and_plays(setup: Setup) -> None:
    config = setup.write()
    result = loa_agent("test-tone", "--config", str(config), "--seconds", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    wav = setup.tmp / "played" / "loa-test-tone.wav"
    assert f"through file: {wav}" in result.stdout
    with wave.open(str(wav), "rb") as audio:
        assert abs(audio.getnframes() / audio.getframerate() - 0.5) < 0.05
    sent = [r.data for r in setup.board.received()]
    assert sent.index(b"RELAY ON\r\n") < sent.index(b"RELAY OFF\r\n")  # on, then off after
    assert setup.board.relay(0) is False


def test_test_tone_without_ffmpeg_exits_1_saying_why(setup: Setup) -> None:
    config = setup.write(
        output="\n  kind: file\n  out_dir: played\n  ffmpeg: /nonexistent/ffmpeg", relay=""
    )
    result = loa_agent("test-tone", "--config", str(config), "--seconds", "0.2")
    assert result.returncode == 1
    assert "ffmpeg not found" in result.stderr
