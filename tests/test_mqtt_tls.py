"""MQTT over TLS with a pinned CA, on a real mosquitto with a TLS listener and
certificates made in the test (tests/tls_support.py): the link of the agent, the
controller and the demo trusts only the CA it is given, and says the real reason when
a handshake fails (unknown CA, another host's certificate, an expired one, a port that
does not speak TLS), in `loa-agent run`'s log as in `last_failure`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import Keys
from conftest import MosquittoBroker, have_mosquitto, require, wait_until
from test_mqtt_link import CONNECT_TIMEOUT, Inbox, publish_until
from tls_support import Authority, tls_mosquitto

from controller.config import load_controller_config
from controller.main import Settings
from device_agent.config import load_agent_config
from protocol import mqtt
from protocol.config_errors import ConfigError
from protocol.mqtt import BrokerAddress, ConnectFailure, MqttLink, UnreadableCa
from protocol.signing import public_pem

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TlsRig:
    broker: MosquittoBroker
    ca: Authority  # the CA that signed the broker's certificate
    other: Authority  # a CA that signed nothing the broker shows

    def address(self, ca_file: Path | None, host: str = "localhost") -> BrokerAddress:
        return BrokerAddress(host, self.broker.port, tls=True,
                             ca_file=str(ca_file) if ca_file else None)  # fmt: skip


def start_tls_broker(tmp_path: Path, ca: Authority, **issue: object) -> MosquittoBroker:
    require("mosquitto", have_mosquitto(), "apt-get install mosquitto")
    cert, key = ca.issue(tmp_path / "broker-cert", **issue)  # type: ignore[arg-type]
    broker = tls_mosquitto(tmp_path / "broker", cert, key)
    broker.start()
    return broker


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsRig]:
    ca = Authority.create(tmp_path / "pki", "Loa test CA")
    other = Authority.create(tmp_path / "pki", "Some other CA")
    broker = start_tls_broker(tmp_path, ca)
    try:
        yield TlsRig(broker, ca, other)
    finally:
        broker.kill()


def refused(link: MqttLink) -> ConnectFailure:
    """Start link, wait for its first failure; it must not have connected."""
    link.start()
    wait_until(lambda: link.last_failure is not None, CONNECT_TIMEOUT, "the link's failure")
    failure = link.last_failure
    assert failure is not None
    assert not link.connected
    return failure


def refused_by(broker: MosquittoBroker, ca: Authority, client_id: str) -> ConnectFailure:
    """A link to localhost trusting ca, refused: its failure."""
    link = MqttLink(
        BrokerAddress("localhost", broker.port, tls=True, ca_file=str(ca.cert)), client_id
    )
    try:
        return refused(link)
    finally:
        link.stop()


def test_links_trusting_the_brokers_ca_connect_and_exchange_a_message(tls: TlsRig) -> None:
    inbox = Inbox()
    sub = MqttLink(tls.address(tls.ca.cert), "tls-sub")
    pub = MqttLink(tls.address(tls.ca.cert), "tls-pub")
    sub.subscribe("loa/test/tls", inbox)
    try:
        for link in (sub, pub):
            link.start()
            assert link.wait_connected(CONNECT_TIMEOUT), f"{link.client_id} did not connect"
        publish_until(pub, "loa/test/tls", b"over TLS", lambda: inbox.payloads("loa/test/tls"))
        assert set(inbox.payloads("loa/test/tls")) == {b"over TLS"}
        assert sub.last_failure is None
    finally:
        sub.stop()
        pub.stop()


def test_a_link_pinned_to_another_ca_is_refused_and_logs_the_certificate_problem(
    tls: TlsRig, caplog: pytest.LogCaptureFixture
) -> None:
    link = MqttLink(tls.address(tls.other.cert), "tls-other-ca")
    with caplog.at_level(logging.WARNING, logger="protocol.mqtt"):
        try:
            failure = refused(link)
            wait_until(lambda: caplog.records, 5, "the warning")
        finally:
            link.stop()
    assert failure.tls
    assert failure.reason == "certificate verify failed: unable to get local issuer certificate"
    assert "not signed by the CA this client trusts" in failure.hint
    warning = caplog.records[0].getMessage()
    assert f"cannot connect to broker mqtts://localhost:{tls.broker.port}" in warning
    assert "unable to get local issuer certificate" in warning
    assert f"trusting {tls.other.cert}" in warning
    assert "lost" not in warning


def test_the_systems_cas_do_not_trust_a_private_ca(tls: TlsRig) -> None:
    link = MqttLink(tls.address(None), "tls-system-cas")
    try:
        failure = refused(link)
    finally:
        link.stop()
    assert failure.reason == "certificate verify failed: unable to get local issuer certificate"


def test_a_certificate_for_another_host_is_refused_as_a_host_mismatch(tls: TlsRig) -> None:
    """The broker's certificate names localhost; the link asks for 127.0.0.1."""
    link = MqttLink(tls.address(tls.ca.cert, host="127.0.0.1"), "tls-wrong-host")
    try:
        failure = refused(link)
    finally:
        link.stop()
    assert failure.reason.startswith("certificate verify failed: IP address mismatch")
    assert "does not name 127.0.0.1" in failure.hint


def test_a_certificate_naming_another_name_is_refused_as_a_host_mismatch(
    tmp_path: Path,
) -> None:
    ca = Authority.create(tmp_path / "pki")
    broker = start_tls_broker(tmp_path, ca, hosts=("broker.example.vn",))
    try:
        failure = refused_by(broker, ca, "tls-name")
    finally:
        broker.kill()
    assert failure.reason.startswith("certificate verify failed: Hostname mismatch")
    assert "does not name localhost" in failure.hint


def test_an_expired_certificate_is_refused_as_expired(tmp_path: Path) -> None:
    ca = Authority.create(tmp_path / "pki")
    now = datetime.now(UTC)
    broker = start_tls_broker(
        tmp_path, ca, valid_from=now - timedelta(days=30), valid_until=now - timedelta(days=1)
    )
    try:
        failure = refused_by(broker, ca, "tls-expired")
    finally:
        broker.kill()
    assert failure.reason == "certificate verify failed: certificate has expired"
    assert "validity dates" in failure.hint


def test_mqtts_to_a_plain_port_says_the_port_may_not_speak_tls(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    ca = Authority.create(tmp_path / "pki")
    address = BrokerAddress("localhost", mosquitto_broker.port, tls=True, ca_file=str(ca.cert))
    link = MqttLink(address, "tls-plain-port")
    try:
        failure = refused(link)
    finally:
        link.stop()
    assert failure.tls
    assert "TLS handshake" in failure.reason  # mosquitto resets, or answers what is not TLS
    assert "may not speak TLS" in failure.hint


def test_nothing_listening_is_a_connection_failure_not_a_tls_one(tls: TlsRig) -> None:
    tls.broker.kill()
    link = MqttLink(tls.address(tls.ca.cert), "tls-nobody")
    try:
        failure = refused(link)
    finally:
        link.stop()
    assert not failure.tls
    assert "nothing listening" in failure.reason


def test_an_unreadable_ca_file_is_refused_before_connecting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(UnreadableCa, match=f"cannot read the broker's CA certificate {missing}"):
        MqttLink(BrokerAddress("localhost", 8883, tls=True, ca_file=str(missing)), "x")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(UnreadableCa, match=r"garbage\.pem"):
        MqttLink(BrokerAddress("localhost", 8883, tls=True, ca_file=str(garbage)), "x")


def test_a_repeated_failure_is_logged_again_only_after_a_while() -> None:
    now = [1000.0]
    throttle = mqtt._Throttle(600.0, now=lambda: now[0])
    assert throttle.allow("unknown CA") == 0
    assert throttle.allow("unknown CA") is None
    now[0] += 599
    assert throttle.allow("unknown CA") is None
    assert throttle.allow("expired") == 0  # another reason: said at once
    assert throttle.allow("expired") is None
    now[0] += 600
    assert throttle.allow("expired") == 1  # said again, with how many were held back
    throttle.reset()
    assert throttle.allow("expired") == 0


# --- the agent and the controller, from their config files ----------------------------------


def agent_config(folder: Path, broker_url: str, ca_file: Path | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "controller.pub").write_bytes(public_pem(Keys().private.public_key()))
    ca_line = f"broker_ca_file: {ca_file}\n" if ca_file else ""
    config = folder / "agent.yaml"
    config.write_text(
        f"cluster_id: tls-01\nbroker_url: {broker_url}\n{ca_line}"
        "controller_public_key: controller.pub\ndata_dir: data\noutput: {kind: null}\n"
    )
    return config


def test_loa_agent_run_logs_why_the_tls_handshake_fails(tls: TlsRig, tmp_path: Path) -> None:
    url = f"mqtts://localhost:{tls.broker.port}"
    config = agent_config(tmp_path / "agent", url, tls.other.cert)
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("cannot connect to broker" in line for line in lines), 20,
                   "the agent to log why it cannot connect")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        reader.join(5)
    logged = next(line for line in lines if "cannot connect to broker" in line)
    assert url in logged
    assert "certificate verify failed: unable to get local issuer certificate" in logged
    assert f"trusting {tls.other.cert}" in logged
    assert "--ca-file" in logged or "broker_ca_file" in logged
    assert proc.returncode == 0, "".join(lines)


def test_the_agent_config_pins_its_ca(tls: TlsRig, tmp_path: Path) -> None:
    url = f"mqtts://localhost:{tls.broker.port}"
    config = load_agent_config(agent_config(tmp_path / "agent", url, tls.ca.cert))
    link = MqttLink(config.broker(), "tls-agent-config")
    link.start()
    try:
        assert link.wait_connected(CONNECT_TIMEOUT)
    finally:
        link.stop()


def controller_config(folder: Path, broker_url: str, ca_file: Path | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ca_line = f"broker_ca_file: {ca_file}\n" if ca_file else ""
    config = folder / "controller.yaml"
    config.write_text(
        f"broker_url: {broker_url}\n{ca_line}fleet: fleet.yaml\nplaylists: [playlists]\n"
        "private_key: keys/controller.key\ncontent_dir: content\n"
    )
    return config


def test_the_controller_connects_with_the_ca_of_its_config(tls: TlsRig, tmp_path: Path) -> None:
    """`loa-controller run` builds its link from Settings.from_config: the CA of the
    config is the one trusted (it used to be dropped, leaving the system's CAs)."""
    url = f"mqtts://localhost:{tls.broker.port}"
    settings = Settings.from_config(load_controller_config(
        controller_config(tmp_path / "controller", url, tls.ca.cert)
    ))  # fmt: skip
    assert settings.broker == tls.address(tls.ca.cert)
    link = MqttLink(settings.broker, "tls-controller")
    link.start()
    try:
        assert link.wait_connected(CONNECT_TIMEOUT)
    finally:
        link.stop()


def test_a_ca_file_with_a_plain_broker_url_is_a_config_error(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match="broker_ca_file is set but broker_url"):
        load_controller_config(controller_config(tmp_path / "c", "mqtt://localhost:1883", ca))
    with pytest.raises(ConfigError, match="broker_ca_file is set but broker_url"):
        load_agent_config(agent_config(tmp_path / "a", "mqtt://localhost:1883", ca))
