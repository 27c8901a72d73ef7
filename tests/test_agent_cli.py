"""`loa-agent` as a field technician runs it: the config file, errors, signals, Last Will."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from agent_support import Keys
from conftest import MosquittoBroker, wait_until
from identity_support import body_of

from device_agent.config import load_agent_config
from device_agent.main import single_instance
from protocol import topics
from protocol.config_errors import ConfigError
from protocol.messages import State, parse
from protocol.mqtt import MqttLink
from protocol.signing import public_pem

ROOT = Path(__file__).resolve().parent.parent


def loa_agent(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def write_config(tmp_path: Path, broker_url: str, extra: str = "") -> Path:
    key = tmp_path / "controller.pub"
    key.write_bytes(public_pem(Keys().private.public_key()))
    path = tmp_path / "agent.yaml"
    path.write_text(
        "cluster_id: c-cli-01\n"
        f"broker_url: {broker_url}\n"
        "controller_public_key: controller.pub\n"
        "data_dir: data\n"
        "keepalive: 5\n"
        "output:\n"
        "  kind: null\n" + extra
    )
    return path


def test_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = load_agent_config(write_config(tmp_path, "mqtt://127.0.0.1:1883"))
    assert config.data_dir == tmp_path / "data"
    assert config.controller_public_key == tmp_path / "controller.pub"
    assert config.output.kind == "null"  # a bare YAML null means the null output


def test_config_errors_name_file_line_and_what_to_write(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://broker", extra="groupz: [a]\n")
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:2:")
    assert "mqtt://" in lines[0]
    assert lines[1].startswith(f"{path}:8:1: unknown key 'groupz'; did you mean 'groups'?")


def test_the_broker_password_can_live_in_a_file_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "broker.password").write_text("s3cret word\n")
    path = write_config(
        tmp_path, "mqtt://127.0.0.1:1883",
        extra="username: c-cli-01\npassword_file: broker.password\n"
        "enrolment_token_file: enrolment.token\n",
    )
    config = load_agent_config(path)
    assert config.password_file == tmp_path / "broker.password"
    assert config.enrolment_token_file == tmp_path / "enrolment.token"
    address = config.broker()
    assert (address.username, address.password) == ("c-cli-01", "s3cret word")
    assert "s3cret" not in address.url()


def test_a_missing_password_file_is_a_located_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "mqtt://127.0.0.1:1883", extra="password_file: nowhere\n")
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:8:")
    assert f"cannot read {tmp_path / 'nowhere'}" in text


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "broker.password").write_text("a\n")
    path = write_config(
        tmp_path, "mqtt://127.0.0.1:1883", extra="password: b\npassword_file: broker.password\n"
    )
    with pytest.raises(ConfigError, match="keep password_file"):
        load_agent_config(path)


def test_file_output_needs_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "cluster_id: c1\nbroker_url: mqtt://h\ncontroller_public_key: k.pub\n"
        "output:\n  kind: file\n"
    )
    with pytest.raises(ConfigError, match="out_dir"):
        load_agent_config(path)


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ("  kind: opusdec\n  device: pulse:default\n", "set output.kind: ffmpeg"),
        ("  kind: ffmpeg\n  device: hw:1\n", "alsa:<device>"),
    ],
)
def test_output_devices_are_checked_where_they_are_written(
    tmp_path: Path, output: str, said: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "cluster_id: c1\nbroker_url: mqtt://h\ncontroller_public_key: k.pub\noutput:\n" + output
    )
    with pytest.raises(ConfigError, match=said) as caught:
        load_agent_config(path)
    assert str(caught.value).startswith(f"{path}:")


def test_the_default_output_is_opusdec_on_the_default_alsa_device(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("cluster_id: c1\nbroker_url: mqtt://h\ncontroller_public_key: k.pub\n")
    output = load_agent_config(path).output
    assert (output.kind, output.device, output.opusdec, output.aplay) == (
        "opusdec", None, "opusdec", "aplay",
    )


def test_heartbeats_come_every_keepalive_unless_asked_more_often(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = "cluster_id: c1\nbroker_url: mqtt://h\ncontroller_public_key: k.pub\nkeepalive: 20\n"
    path = tmp_path / "agent.yaml"
    path.write_text(base)
    assert load_agent_config(path).heartbeat_interval_s == 20  # left out: the keepalive
    path.write_text(base + "heartbeat_s: 5\n")
    assert load_agent_config(path).heartbeat_interval_s == 5
    # Longer than the keepalive: the agent still starts (a cluster must keep playing), at
    # the keepalive, and says where and what to write.
    path.write_text(base + "heartbeat_s: 60\n")
    with caplog.at_level("WARNING", logger="device_agent.config"):
        config = load_agent_config(path)
    assert config.heartbeat_interval_s == 20
    assert caplog.messages == [
        f"{path}:5:14: warning: heartbeat_s 60 is longer than keepalive 20: heartbeats are "
        "sent every 20 s instead, since the controller counts a cluster offline after "
        "1.5 × keepalive without a message; write heartbeat_s: 20 or less (or leave it out)"
    ]


def test_bad_config_exits_2_with_located_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://broker")
    proc = loa_agent("run", "--config", str(path))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"{path}:2:13: broker_url:" in err.decode()


def test_missing_key_file_exits_2_in_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "mqtt://127.0.0.1:1")
    (tmp_path / "controller.pub").unlink()
    proc = loa_agent("run", "--config", str(path))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines()[-1].startswith("loa-agent run: ")
    assert "controller public key not found" in err.decode()


def test_version(tmp_path: Path) -> None:
    proc = loa_agent("version")
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.decode().startswith("loa-agent ")


def test_two_agents_cannot_share_a_data_dir(tmp_path: Path) -> None:
    with (
        single_instance(tmp_path),
        pytest.raises(RuntimeError, match="already running"),
        single_instance(tmp_path),
    ):
        pass


@pytest.mark.slow
def test_runs_until_sigterm_and_the_last_will_says_offline(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    states: list[State] = []
    lock = threading.Lock()

    def on_state(_topic: str, payload: bytes) -> None:
        with lock:
            states.append(parse(State, body_of(payload)))

    def last() -> str | None:
        with lock:
            return states[-1].state if states else None

    watcher = MqttLink(broker.address, "test-watcher")
    watcher.subscribe(topics.cluster_topic("c-cli-01", "state"), on_state)
    watcher.start()
    try:
        config = write_config(tmp_path, broker.url)
        proc = loa_agent("run", "--config", str(config))
        wait_until(lambda: last() == "online", 20, "the agent to say online")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        wait_until(lambda: last() == "offline", 10, "offline after a clean stop")

        proc = loa_agent("run", "--config", str(config))
        wait_until(lambda: last() == "online", 20, "online again")
        proc.kill()  # no goodbye: the broker publishes the Last Will after 1.5 keepalives
        proc.wait(10)
        wait_until(lambda: last() == "offline", 20, "the Last Will")
    finally:
        watcher.stop()
