"""`loa-controller broker-config`: a real mosquitto (and nats-server) started with the
generated files lets in only the fleet's logins, and each only where it belongs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from access_support import (
    FLEET,
    Client,
    ConfiguredBroker,
    broker_folder,
    controller_folder,
    give_to_mosquitto,
)
from conftest import free_port, require, wait_until

from controller.broker_config import nats_subject
from controller.credentials import BrokerCredentials, mosquitto_hash

ROOT = Path(__file__).resolve().parent.parent


def loa_controller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )


def passwords(config_dir: Path) -> dict[str, str]:
    store = BrokerCredentials(config_dir / "keys" / "broker-credentials.yaml")
    return {name: account.password for name, account in store.load().items()}


# --- the password hash ---------------------------------------------------------------------


def test_password_hash_is_mosquitto_passwds_own(tmp_path: Path) -> None:
    """The same salt and password give the line mosquitto_passwd writes."""
    require("mosquitto_passwd", shutil.which("mosquitto_passwd") is not None,
            "apt-get install mosquitto")
    file = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(file), "alice", "s3cret pass"],
                   check=True, capture_output=True)
    user, line = file.read_text().strip().split(":", 1)
    salt = base64.b64decode(line.split("$")[3])
    assert user == "alice"
    assert mosquitto_hash("s3cret pass", salt) == line


def test_nats_subjects_follow_the_servers_mapping() -> None:
    assert nats_subject("loa/v1/cluster/a-01/event") == "loa.v1.cluster.a-01.event"
    assert nats_subject("loa/v1/cluster/+/event") == "loa.v1.cluster.*.event"
    assert nats_subject("loa/v1/cluster/ap.3/command") == "loa.v1.cluster.ap//3.command"
    assert nats_subject("loa/v1/#") == "loa.v1.>"


# --- mosquitto -----------------------------------------------------------------------------


class MosquittoRig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.config = controller_folder(tmp, f"mqtt://127.0.0.1:{self.port}")
        self.out = broker_folder() / "mosquitto"
        self.broker: ConfiguredBroker | None = None
        self.clients: list[Client] = []

    def write(self, *, hand_over: bool = True) -> subprocess.CompletedProcess[str]:
        result = loa_controller("broker-config", "mosquitto", "--config", str(self.config),
                                "--out", str(self.out), "--port", str(self.port),
                                "--listen", "127.0.0.1")
        assert result.returncode == 0, result.stderr
        if hand_over:  # the first time; written again, they keep their owner
            give_to_mosquitto(self.out / "mosquitto.passwd", self.out / "mosquitto.acl")
        return result

    def start(self) -> None:
        self.broker = ConfiguredBroker(
            ["mosquitto", "-c", str(self.out / "mosquitto.conf")], self.port, self.tmp,
            "mosquitto",
        )

    def login(self, name: str | None, password: str | None = None, **kw: object) -> Client:
        if name is not None and password is None:
            password = passwords(self.tmp)[name]
        client = Client(self.port, name, password, **kw)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.out.parent, ignore_errors=True)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[MosquittoRig]:
    require("mosquitto", shutil.which("mosquitto") is not None, "apt-get install mosquitto")
    r = MosquittoRig(tmp_path)
    r.write()
    r.start()
    try:
        yield r
    finally:
        r.stop()


def test_the_generated_files(rig: MosquittoRig) -> None:
    conf = (rig.out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert f"password_file {rig.out.resolve() / 'mosquitto.passwd'}" in conf
    assert f"acl_file {rig.out.resolve() / 'mosquitto.acl'}" in conf
    assert oct((rig.out / "mosquitto.passwd").stat().st_mode & 0o777) == "0o600"
    users = [line.split(":")[0] for line in (rig.out / "mosquitto.passwd").read_text().split()]
    assert users == ["a-01", "a-02", "b-01", "loa-controller"]
    assert oct((rig.tmp / "keys" / "broker-credentials.yaml").stat().st_mode & 0o777) == "0o600"


def test_anonymous_and_wrong_passwords_are_refused(rig: MosquittoRig) -> None:
    assert not rig.login(None).accepted
    assert not rig.login("a-01", "not-its-password").accepted
    assert not rig.login("stranger", "whatever-it-says").accepted
    assert rig.login("a-01").accepted
    assert rig.login("loa-controller").accepted


def test_a_cluster_cannot_publish_for_another_or_as_the_controller(rig: MosquittoRig) -> None:
    controller = rig.login("loa-controller")
    victim = rig.login("b-01")
    neighbour = rig.login("a-02")
    attacker = rig.login("a-01")
    controller.subscribe("loa/v1/cluster/+/event", "loa/v1/cluster/+/state",
                         "loa/v1/cluster/+/request", "loa/v1/cluster/+/heartbeat")
    victim.subscribe("loa/v1/cluster/b-01/#", "loa/v1/group/xa-b/#", "loa/v1/group/tinh-t/#")
    neighbour.subscribe("loa/v1/cluster/a-02/#", "loa/v1/group/xa-a/#")

    forged = b'{"forged": true}'
    for topic in [
        "loa/v1/cluster/b-01/event", "loa/v1/cluster/b-01/state", "loa/v1/cluster/b-01/request",
        "loa/v1/cluster/b-01/heartbeat",
    ]:
        attacker.publish(topic, forged)
    for topic in [
        "loa/v1/cluster/b-01/command", "loa/v1/cluster/b-01/content",
        "loa/v1/cluster/b-01/membership", "loa/v1/cluster/b-01/key",
        "loa/v1/group/xa-b/command", "loa/v1/group/tinh-t/content",
        "loa/v1/cluster/a-02/command", "loa/v1/group/xa-a/command",
        # not even its own: only the controller speaks on these
        "loa/v1/cluster/a-01/command", "loa/v1/cluster/a-01/membership",
    ]:
        attacker.publish(topic, forged, retain=True)
    # Its own agent topics pass; published after the forgeries on the same connection, so
    # the controller receives them after anything the broker had let through.
    attacker.publish("loa/v1/cluster/a-01/event", b"own event")
    wait_until(lambda: controller.got("loa/v1/cluster/a-01/event", b"own event"), 10,
               "the attacker's own event at the controller")
    assert [t for t in controller.topics() if "b-01" in t] == []
    # The controller's commands come after the forgeries (their PUBACKs came first).
    controller.publish("loa/v1/cluster/b-01/command", b"signed")
    controller.publish("loa/v1/cluster/a-02/command", b"signed")
    wait_until(lambda: victim.got("loa/v1/cluster/b-01/command", b"signed"), 10,
               "the controller's command at b-01")
    wait_until(lambda: neighbour.got("loa/v1/cluster/a-02/command", b"signed"), 10,
               "the controller's command at a-02")
    assert not any(p == forged for _, p in victim.received), victim.received
    assert not any(p == forged for _, p in neighbour.received), neighbour.received
    # Nothing forged was kept as a retained message either.
    late = rig.login("b-01", client_id="late-b-01")
    late.subscribe("loa/v1/cluster/b-01/#")
    controller.publish("loa/v1/cluster/b-01/content", b"barrier")
    wait_until(lambda: late.got("loa/v1/cluster/b-01/content", b"barrier"), 10, "barrier")
    assert not any(p == forged for _, p in late.received), late.received


def test_a_cluster_reads_only_its_own_and_its_groups_topics(rig: MosquittoRig) -> None:
    controller = rig.login("loa-controller")
    a01 = rig.login("a-01")
    codes = a01.subscribe("loa/v1/cluster/b-01/command", "loa/v1/#", "loa/v1/cluster/+/event")
    assert codes[0] in (1, 128)  # mosquitto may grant it; it still delivers nothing
    controller.publish("loa/v1/cluster/b-01/command", b"for b-01")
    controller.publish("loa/v1/group/xa-b/command", b"for xa-b")
    controller.publish("loa/v1/cluster/a-02/membership", b"for a-02")
    b01 = rig.login("b-01")
    b01.publish("loa/v1/cluster/b-01/event", b"b-01's event")
    # then what a-01 may read: its own command, its commune's and its province's
    controller.publish("loa/v1/cluster/a-01/command", b"own")
    controller.publish("loa/v1/group/xa-a/content", b"commune")
    controller.publish("loa/v1/group/tinh-t/command", b"province")
    wait_until(lambda: a01.got("loa/v1/group/tinh-t/command", b"province"), 10,
               "the province's command at a-01")
    assert sorted(set(a01.topics())) == [
        "loa/v1/cluster/a-01/command", "loa/v1/group/tinh-t/command", "loa/v1/group/xa-a/content",
    ]


def test_the_controller_publishes_commands_and_reads_events(rig: MosquittoRig) -> None:
    controller = rig.login("loa-controller")
    b01 = rig.login("b-01", will=("loa/v1/cluster/b-01/state", b"offline"))
    b01.subscribe("loa/v1/cluster/b-01/+", "loa/v1/group/xa-b/+")
    controller.subscribe("loa/v1/cluster/+/event", "loa/v1/cluster/+/state",
                         "loa/v1/cluster/+/request", "loa/v1/cluster/+/heartbeat",
                         "loa/v1/cluster/+/enrol")
    sent = [
        "loa/v1/cluster/b-01/command", "loa/v1/cluster/b-01/content",
        "loa/v1/cluster/b-01/membership", "loa/v1/cluster/b-01/key",
        "loa/v1/group/xa-b/command", "loa/v1/group/xa-b/content",
    ]
    for topic in sent:
        controller.publish(topic, b"from the controller")
    wait_until(lambda: all(b01.got(t, b"from the controller") for t in sent), 10,
               "every controller topic at b-01")
    own = [f"loa/v1/cluster/b-01/{c}" for c in ("event", "state", "request", "heartbeat",
                                                 "enrol")]
    for topic in own:
        b01.publish(topic, b"from b-01")
    wait_until(lambda: all(controller.got(t, b"from b-01") for t in own), 10,
               "every agent topic of b-01 at the controller")
    # The controller's own canary (controller/reconnect.py): its alone to write and read.
    canary = "loa/v1/controller/loa-controller/canary"
    controller.subscribe("loa/v1/controller/+/canary")
    b01.subscribe("loa/v1/controller/+/canary")
    b01.publish(canary, b"forged canary")  # acknowledged, and dropped
    controller.publish(canary, b"canary")
    controller.publish("loa/v1/cluster/b-01/command", b"after the canary")
    wait_until(lambda: controller.got(canary, b"canary"), 10, "the canary at the controller")
    assert not controller.got(canary, b"forged canary")
    wait_until(lambda: b01.got("loa/v1/cluster/b-01/command", b"after the canary"), 10,
               "the command after the canary at b-01")
    assert not b01.got(canary, b"canary")  # not the cluster's to read either
    b01.drop()  # its Last Will, on its own state topic, goes through
    wait_until(lambda: controller.got("loa/v1/cluster/b-01/state", b"offline"), 10,
               "b-01's Last Will")


def test_a_forged_last_will_for_another_cluster_is_not_published(rig: MosquittoRig) -> None:
    controller = rig.login("loa-controller")
    controller.subscribe("loa/v1/cluster/+/state", "loa/v1/cluster/+/event")
    attacker = rig.login("a-01", will=("loa/v1/cluster/b-01/state", b"forged offline"))
    attacker.drop()
    again = rig.login("a-01", client_id="a-01-again")
    again.publish("loa/v1/cluster/a-01/event", b"barrier")
    wait_until(lambda: controller.got("loa/v1/cluster/a-01/event", b"barrier"), 10, "barrier")
    assert not controller.got("loa/v1/cluster/b-01/state", b"forged offline")


def test_a_new_cluster_logs_in_after_the_files_are_written_again_and_reloaded(
    rig: MosquittoRig,
) -> None:
    grown = FLEET.replace(
        "        - {id: b-01, name: Cụm B1}\n",
        "        - {id: b-01, name: Cụm B1}\n        - {id: b-02, name: Cụm B2}\n",
    )
    (rig.tmp / "fleet.yaml").write_text(grown, encoding="utf-8")
    before = passwords(rig.tmp)
    result = rig.write(hand_over=False)
    assert "new logins made: b-02" in result.stdout
    assert "systemctl reload mosquitto" in result.stdout
    after = passwords(rig.tmp)
    assert {k: after[k] for k in before} == before  # the others keep their passwords
    assert not rig.login("b-02", after["b-02"], client_id="b-02-early").accepted
    assert rig.broker is not None
    rig.broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: Client(rig.port, "b-02", after["b-02"], client_id="b-02-try").accepted,
               10, "b-02 let in after the reload")
    controller = rig.login("loa-controller")
    b02 = rig.login("b-02", client_id="b-02")
    b02.subscribe("loa/v1/group/xa-b/command")
    controller.publish("loa/v1/group/xa-b/command", b"hello b-02")
    wait_until(lambda: b02.got("loa/v1/group/xa-b/command", b"hello b-02"), 10,
               "its commune's command at b-02")


def test_a_cluster_named_like_the_controller_is_refused(tmp_path: Path) -> None:
    fleet = FLEET.replace("{id: a-02,", "{id: loa-controller,")
    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883", fleet=fleet)
    result = loa_controller("broker-config", "mosquitto", "--config", str(config),
                            "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "cluster 'loa-controller' has the controller's broker user name" in result.stderr
    assert not (tmp_path / "out").exists()
    vi = loa_controller("broker-config", "mosquitto", "--config", str(config),
                        "--out", str(tmp_path / "out"), "--lang", "vi")
    assert "cụm loa 'loa-controller' trùng tên đăng nhập broker" in vi.stderr


# --- NATS ----------------------------------------------------------------------------------

NATS = "/usr/sbin/nats-server"


def nats_server() -> str | None:
    return shutil.which("nats-server") or (NATS if Path(NATS).exists() else None)


def test_nats_server_loads_the_generated_config_and_enforces_it(tmp_path: Path) -> None:
    binary = nats_server()
    require("nats-server", binary is not None, "apt-get install nats-server")
    assert binary is not None
    port, client_port = free_port(), free_port()
    config = controller_folder(tmp_path, f"mqtt://127.0.0.1:{port}")
    out = tmp_path / "nats"
    result = loa_controller("broker-config", "nats", "--config", str(config), "--out", str(out),
                            "--port", str(port), "--listen", "127.0.0.1",
                            "--nats-port", str(client_port))
    assert result.returncode == 0, result.stderr
    conf = out / "nats-server.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    check = subprocess.run([binary, "-c", str(conf), "-t"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    broker = ConfiguredBroker([binary, "-c", str(conf)], port, tmp_path, "nats-server")
    clients: list[Client] = []
    try:
        secret = passwords(tmp_path)

        def login(name: str | None, password: str | None = None, **kw: object) -> Client:
            client = Client(port, name, password if password or name is None else secret[name],
                            **kw)  # type: ignore[arg-type]
            clients.append(client)
            return client

        assert not login(None).accepted
        assert not login("a-01", "wrong-password-here").accepted
        controller = login("loa-controller")
        controller.subscribe("loa/v1/cluster/+/event")
        b01 = login("b-01")
        b01.subscribe("loa/v1/cluster/b-01/command", "loa/v1/group/xa-b/command")
        attacker = login("a-01")
        assert attacker.subscribe("loa/v1/cluster/b-01/command", "$MQTT/sub/#") == [128, 128]
        attacker.publish("loa/v1/cluster/b-01/event", b"forged")  # dropped: Publish Violation
        attacker.publish("loa/v1/cluster/b-01/command", b"forged")
        attacker.publish("loa/v1/cluster/a-01/event", b"own event")  # after them, same link
        wait_until(lambda: controller.got("loa/v1/cluster/a-01/event", b"own event"), 15,
                   "a-01's own event through nats-server")
        controller.publish("loa/v1/group/xa-b/command", b"signed")
        wait_until(lambda: b01.got("loa/v1/group/xa-b/command", b"signed"), 15,
                   "the controller's group command at b-01")
        assert not controller.got("loa/v1/cluster/b-01/event", b"forged")
        assert not b01.got("loa/v1/cluster/b-01/command", b"forged")
    finally:
        for client in clients:
            client.close()
        broker.stop()


def test_provisioned_json_lists_every_login(tmp_path: Path) -> None:
    config = controller_folder(tmp_path, "mqtt://127.0.0.1:1883")
    result = loa_controller("provision", "--all", "--out", str(tmp_path / "b"), "--json",
                            "--config", str(config))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["cluster"] for r in rows] == ["a-01", "a-02", "b-01"]
    assert all(r["username"] == r["cluster"] for r in rows)
    assert {r["cluster"]: r["password"] for r in rows} == {
        k: v for k, v in passwords(tmp_path).items() if k != "loa-controller"
    }
