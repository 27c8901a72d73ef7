"""A fleet, its controller config, and bare MQTT clients that log in as a cluster, the
controller or nobody: for the tests of provisioning and of the generated broker files.

`Client` is paho itself (no Loa code between the test and the broker): it says whether
the broker let it in, collects what it receives, and publishes at QoS 1, waiting for the
broker's PUBACK, so a later publish from another client is known to come after it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from conftest import wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol.signing import generate_keypair

FLEET = """\
province:
  id: tinh-t
  name: Tỉnh Thử
  communes:
    - id: xa-a
      name: Xã A
      clusters:
        - {id: a-01, name: Cụm A1}
        - {id: a-02, name: Cụm A2}
    - id: xa-b
      name: Xã B
      clusters:
        - {id: b-01, name: Cụm B1}
"""


def controller_folder(tmp: Path, broker_url: str, extra: str = "", fleet: str = FLEET) -> Path:
    """A controller config (fleet, key, empty playlists) in tmp; returns the config file."""
    (tmp / "fleet.yaml").write_text(fleet, encoding="utf-8")
    (tmp / "playlists").mkdir(exist_ok=True)
    if not (tmp / "keys" / "controller.key").exists():
        generate_keypair(tmp / "keys" / "controller.key", tmp / "keys" / "controller.pub")
    config = tmp / "controller.yaml"
    config.write_text(
        f"broker_url: {broker_url}\n"
        "fleet: fleet.yaml\n"
        "playlists: [playlists]\n"
        "store_url: sqlite:///controller.db\n"
        "private_key: keys/controller.key\n"
        "content_dir: content\n" + extra,
        encoding="utf-8",
    )
    return config


class Client:
    """One MQTT connection with a login (or none)."""

    def __init__(self, port: int, username: str | None, password: str | None = None,
                 *, client_id: str | None = None, will: tuple[str, bytes] | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._answer = threading.Event()
        self.refused: str | None = None
        self._subacks: dict[int, list[int]] = {}
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{username}-{id(self)}",
            protocol=paho.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()
        if not self._answer.wait(10):
            raise AssertionError(f"no CONNACK for {username!r} within 10 s")

    def _on_connect(self, _c: paho.Client, _u: object, _f: object, reason: object,
                    _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = str(reason)
            self._client.disconnect()
        self._answer.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, _c: paho.Client, _u: object, mid: int, codes: list[ReasonCode],
                      _p: Properties) -> None:
        with self._lock:
            self._subacks[mid] = [int(c.value) for c in codes]

    @property
    def accepted(self) -> bool:
        return self.refused is None

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK codes (128: refused by the broker)."""
        _rc, mid = self._client.subscribe([(f, 1) for f in filters])
        assert mid is not None
        wait_until(lambda: mid in self._subacks, 10, f"SUBACK for {filters}")
        with self._lock:
            return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1; returns once the broker acknowledged (or dropped the connection)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 10
        while not info.is_published() and time.monotonic() < deadline:
            if not self._client.is_connected():
                return  # the broker closed the connection (NATS does, for a refused topic)
            time.sleep(0.005)

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.received]

    def got(self, topic: str, payload: bytes) -> bool:
        with self._lock:
            return (topic, payload) in self.received

    def drop(self) -> None:
        """Close the socket without DISCONNECT: the broker publishes the Last Will."""
        sock = self._client.socket()
        self._client.loop_stop()
        if isinstance(sock, socket.socket):
            sock.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class ConfiguredBroker:
    """A broker process started with a configuration file the test did not write."""

    def __init__(self, argv: list[str], port: int, cwd: Path, name: str) -> None:
        self.port = port
        self.log = cwd / f"{name}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{name} did not listen on {port} within 15 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def broker_folder() -> Path:
    """A folder for the broker's files that the `mosquitto` user can reach (pytest's own
    temporary folders are private to the user running the tests); remove it after."""
    folder = Path(tempfile.mkdtemp(prefix="loa-broker-"))
    folder.chmod(0o755)
    return folder


def give_to_mosquitto(*paths: Path) -> None:
    """As root, mosquitto reads its password file and ACL as the `mosquitto` user: hand
    them over, as docs/operations.md tells the operator to."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for path in paths:
        shutil.chown(path, user.pw_uid, user.pw_gid)

