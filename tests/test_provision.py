"""`loa-controller provision`: the bundle a technician installs on a box, and the logins
the controller keeps for it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from access_support import (
    Client,
    ConfiguredBroker,
    broker_folder,
    controller_folder,
    give_to_mosquitto,
)
from conftest import free_port, require

from controller.config import load_controller_config
from controller.credentials import BrokerCredentials
from controller.fleet import load_fleet
from controller.provision import provision
from device_agent.config import load_agent_config
from device_agent.identity import AgentIdentity
from protocol.signing import load_private_key, load_public_key, public_pem

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def loa_controller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_bundle_is_a_complete_agent_install(tmp_path: Path) -> None:
    config = controller_folder(tmp_path, "mqtt://loa:pw@10.0.0.5:1883")
    result = loa_controller("provision", "a-01", "--out", str(tmp_path / "bundles"),
                            "--config", str(config))
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "bundles" / "a-01"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "agent.yaml", "broker.password", "controller.pub", "enrolment.token",
    ]
    assert mode(bundle) == 0o700
    assert mode(bundle / "broker.password") == 0o600
    assert mode(bundle / "enrolment.token") == 0o600
    assert "sudo install -o root -g loa -m 0640 * /etc/loa/" in result.stdout
    assert "loa-controller broker-config mosquitto" in result.stdout

    agent = load_agent_config(bundle / "agent.yaml")  # paths resolve inside the bundle
    assert agent.cluster_id == "a-01"
    assert agent.broker_url == "mqtt://10.0.0.5:1883"  # the controller's, without its login
    assert agent.groups == ["xa-a", "tinh-t"]
    assert agent.password is None
    assert agent.password_file == bundle / "broker.password"
    assert agent.enrolment_token_file == bundle / "enrolment.token"
    assert agent.broker_ca_file is None
    address = agent.broker()
    kept = BrokerCredentials(tmp_path / "keys" / "broker-credentials.yaml").load()
    assert (address.username, address.password) == ("a-01", kept["a-01"].password)
    assert "password" not in agent.broker_url
    assert kept["a-01"].password not in (
        bundle / "agent.yaml"
    ).read_text()
    key = load_private_key(tmp_path / "keys" / "controller.key")
    assert public_pem(load_public_key(agent.controller_public_key)) == public_pem(
        key.public_key()
    )
    assert len((bundle / "enrolment.token").read_text().strip()) >= 40


def test_logins_are_kept_across_bundles_until_rotated(tmp_path: Path) -> None:
    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    out = tmp_path / "bundles"
    assert loa_controller("provision", "--all", "--out", str(out), "--config",
                          str(config)).returncode == 0
    first = {c: (out / c / "broker.password").read_text() for c in ("a-01", "a-02", "b-01")}
    assert len(set(first.values())) == 3
    again = loa_controller("provision", "a-01", "b-01", "--out", str(tmp_path / "again"),
                           "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert "login unchanged" in again.stdout
    assert "new login" not in again.stdout
    assert (tmp_path / "again" / "a-01" / "broker.password").read_text() == first["a-01"]
    rotated = loa_controller("provision", "b-01", "--rotate", "--out", str(out), "--config",
                             str(config))
    assert rotated.returncode == 0, rotated.stderr
    assert "new login" in rotated.stdout
    assert "install its new bundle" in rotated.stdout
    assert (out / "b-01" / "broker.password").read_text() != first["b-01"]
    assert (out / "a-01" / "broker.password").read_text() == first["a-01"]
    assert mode(tmp_path / "keys" / "broker-credentials.yaml") == 0o600


def test_unknown_clusters_are_named_with_a_suggestion(tmp_path: Path) -> None:
    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    result = loa_controller("provision", "a-01", "b-0l", "--out", str(tmp_path / "b"),
                            "--config", str(config))
    assert result.returncode == 1
    assert "no cluster 'b-0l' (did you mean 'b-01'?)" in result.stderr
    assert not (tmp_path / "b").exists()  # nothing half-done
    assert loa_controller("provision", "--out", str(tmp_path / "b"), "--config",
                          str(config)).returncode == 1


def test_over_tls_the_bundle_carries_the_brokers_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n")
    config = controller_folder(
        tmp_path, "mqtt://127.0.0.1:1883",
        extra="provisioning:\n  agent_broker_url: mqtts://broker.example.vn:8883\n"
        "  ca_file: ca.pem\n",
    )
    result = loa_controller("provision", "b-01", "--out", str(tmp_path / "b"), "--config",
                            str(config))
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "b" / "b-01"
    assert (bundle / "broker-ca.pem").read_bytes() == ca.read_bytes()
    agent = load_agent_config(bundle / "agent.yaml")
    assert agent.broker_url == "mqtts://broker.example.vn:8883"
    assert agent.broker_ca_file == bundle / "broker-ca.pem"
    assert agent.broker().tls


def test_a_missing_ca_file_stops_before_anything_is_written(tmp_path: Path) -> None:
    config = controller_folder(
        tmp_path, "mqtts://127.0.0.1:8883", extra="broker_ca_file: nowhere.pem\n"
    )
    result = loa_controller("provision", "b-01", "--out", str(tmp_path / "b"), "--config",
                            str(config))
    assert result.returncode == 1
    assert "nowhere.pem: the broker's CA certificate" in result.stderr
    assert not (tmp_path / "b").exists()


def test_a_login_in_the_agents_broker_url_is_refused(tmp_path: Path) -> None:
    config = controller_folder(
        tmp_path, "mqtt://127.0.0.1:1883",
        extra="provisioning:\n  agent_broker_url: mqtt://a-01:secret@broker:1883\n",
    )
    result = loa_controller("provision", "b-01", "--out", str(tmp_path / "b"), "--config",
                            str(config))
    assert result.returncode == 1
    assert f"{config}:8:21: " in result.stderr
    assert "every cluster gets its own login in its bundle" in result.stderr


def test_the_enrolment_token_comes_from_the_callable_given(tmp_path: Path) -> None:
    config_file = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    config = load_controller_config(config_file)
    asked: list[str] = []

    def token(cluster: str) -> str:
        asked.append(cluster)
        return f"token-for-{cluster}"

    bundles = provision(config, load_fleet(config.fleet), ["a-02", "b-01"], tmp_path / "b",
                        NOW, enrolment_token=token)
    assert asked == ["a-02", "b-01"]
    assert [b.cluster for b in bundles] == ["a-02", "b-01"]
    assert (tmp_path / "b" / "b-01" / "enrolment.token").read_text() == "token-for-b-01\n"
    assert load_agent_config(tmp_path / "b" / "a-02" / "agent.yaml").enrolment_token_file == (
        tmp_path / "b" / "a-02" / "enrolment.token"
    )


@pytest.fixture
def mosquitto_port() -> Iterator[tuple[int, Path]]:
    require("mosquitto", shutil.which("mosquitto") is not None, "apt-get install mosquitto")
    folder = broker_folder()
    try:
        yield free_port(), folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_provisioned_agent_and_the_controller_log_in_to_the_generated_broker(
    tmp_path: Path, mosquitto_port: tuple[int, Path],
) -> None:
    """Bundle, broker files and controller agree: the agent's own config logs it in, and
    the controller logs in with its own account from the credentials file."""
    from controller.main import Settings
    from device_agent.main import build_link

    port, folder = mosquitto_port
    config_file = controller_folder(tmp_path, f"mqtt://127.0.0.1:{port}")
    assert loa_controller("provision", "a-01", "--out", str(tmp_path / "b"), "--config",
                          str(config_file)).returncode == 0
    out = folder / "mosquitto"
    result = loa_controller("broker-config", "mosquitto", "--config", str(config_file),
                            "--out", str(out), "--port", str(port), "--listen", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    give_to_mosquitto(out / "mosquitto.passwd", out / "mosquitto.acl")
    broker = ConfiguredBroker(["mosquitto", "-c", str(out / "mosquitto.conf")], port, tmp_path,
                              "mosquitto")
    try:
        agent = load_agent_config(tmp_path / "b" / "a-01" / "agent.yaml")
        link = build_link(agent, AgentIdentity.load_or_create(tmp_path / "box"), NOW)
        link.start()
        try:
            assert link.wait_connected(10), link.last_refusal
        finally:
            link.stop()
        settings = Settings.from_config(load_controller_config(config_file))
        assert settings.broker.username == "loa-controller"
        assert settings.broker.password is not None
        controller = Client(port, settings.broker.username, settings.broker.password)
        try:
            assert controller.accepted
        finally:
            controller.close()
    finally:
        broker.stop()


def test_over_tls_a_bundle_logs_in_to_the_generated_tls_listener(
    tmp_path: Path, mosquitto_port: tuple[int, Path],
) -> None:
    """The broker's TLS listener from broker-config, the bundle's CA and password: the
    agent built from the bundle alone logs in over mqtts://."""
    from tls_support import Authority

    from device_agent.main import build_link

    port, folder = mosquitto_port
    certs = folder / "certs"
    authority = Authority.create(certs)
    cert, key = authority.issue(certs)
    config_file = controller_folder(
        tmp_path, f"mqtts://localhost:{port}", extra=f"broker_ca_file: {authority.cert}\n"
    )
    assert loa_controller("provision", "b-01", "--out", str(tmp_path / "b"), "--config",
                          str(config_file)).returncode == 0
    out = folder / "mosquitto"
    result = loa_controller("broker-config", "mosquitto", "--config", str(config_file),
                            "--out", str(out), "--port", str(port), "--listen", "127.0.0.1",
                            "--tls-cert", str(cert), "--tls-key", str(key))
    assert result.returncode == 0, result.stderr
    assert f"certfile {cert}" in (out / "mosquitto.conf").read_text()
    give_to_mosquitto(out / "mosquitto.passwd", out / "mosquitto.acl", key)
    broker = ConfiguredBroker(["mosquitto", "-c", str(out / "mosquitto.conf")], port, tmp_path,
                              "mosquitto")
    try:
        agent = load_agent_config(tmp_path / "b" / "b-01" / "agent.yaml")
        assert agent.broker_url == f"mqtts://localhost:{port}"
        assert agent.broker_ca_file == tmp_path / "b" / "b-01" / "broker-ca.pem"
        assert agent.broker_ca_file.read_bytes() == authority.cert.read_bytes()
        link = build_link(agent, AgentIdentity.load_or_create(tmp_path / "box"), NOW)
        link.start()
        try:
            assert link.wait_connected(10), link.last_refusal
        finally:
            link.stop()
    finally:
        broker.stop()


def test_a_bundle_token_is_the_clusters_enrolment_token_and_a_registered_cluster_gets_none(
    tmp_path: Path,
) -> None:
    """The token is issued as `enrol token` issues it (stored hashed): a box joining with
    it is registered (--auto-approve). Provisioning again a cluster whose key is
    registered gives no token, unless for a box replacing it (--replace)."""
    from controller.identities import Identities
    from controller.store import Store

    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    result = loa_controller("provision", "a-01", "--auto-approve", "--out",
                            str(tmp_path / "b"), "--config", str(config))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "valid for 14d; the boxes' keys register at once" in result.stdout
    token = (tmp_path / "b" / "a-01" / "enrolment.token").read_text().strip()
    box = AgentIdentity.load_or_create(tmp_path / "box")
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    try:
        identities = Identities(store)
        assert token not in (tmp_path / "controller.db").read_bytes().decode(errors="replace")
        outcome = identities.join("a-01", box.key_id, box.public_key, token, datetime.now(UTC))
        assert outcome.status == "registered"
    finally:
        store.close()
    again = loa_controller("provision", "a-01", "--out", str(tmp_path / "again"),
                           "--config", str(config))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "again" / "a-01" / "enrolment.token").exists()
    rewritten = load_agent_config(tmp_path / "again" / "a-01" / "agent.yaml")
    assert rewritten.enrolment_token_file is None
    assert "a-01: a key is registered, so no enrolment token" in again.stdout
    replaced = loa_controller("provision", "a-01", "--replace", "--out", str(tmp_path / "new"),
                              "--config", str(config))  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    assert (tmp_path / "new" / "a-01" / "enrolment.token").exists()
    store = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    try:
        assert [t.purpose for t in Identities(store).tokens("a-01")] == ["enrol", "replace"]
    finally:
        store.close()

