"""`fuzz.py intake`: hostile payloads at one real controller process.

The controller is `loa-controller run --config FILE` (as `python -m controller.cli`), its
own process, on a fleet of ten clusters, a SQLite store, and one prepared bulletin
(so that chunk requests for it can be answered), against a private mosquitto. The
fuzzer can publish anything on every topic the controller reads (events, states,
heartbeats and chunk requests of every cluster, known or not) but holds no key: neither
the controller's nor any cluster's. The clusters' own keys are registered before the
controller starts, and sign the warm-up and the valid event, as their agents would.

First --warm-up valid events (WARM_UP_EVENTS by default) are stored: the baseline is the
memory of a controller that has stored events before. Then N payloads are drawn with a
seeded generator from the kinds below; then, once the controller has gone quiet, one
valid event of a known cluster, whose time to be stored
(read from the store's file) is `valid_after_s`.

Measured: `sent`; `crashes` (the controller process exited); `rss_growth_mb` (resident
memory once quiet after the run, less before it); `valid_after_s`; and what the store
holds afterwards: rows of clusters the fleet does not name (`unknown_rows`), events out
of range (`out_of_range_stored`); the chunks resent and the resend amplification
(bytes resent / bytes of requests sent). `plays_unsigned` and `relay_switches` are an
agent's figures: null here.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_rig import Watched, fuzz_broker, say

from controller.audio import AudioLibrary, AudioSettings
from controller.identities import Identities
from controller.samples import tone
from controller.store import Store
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.messages import MAX_SEQ
from protocol.mqtt import MqttLink
from protocol.signing import generate_keypair

CLUSTERS = [f"fz-{n:02d}" for n in range(1, 11)]
FLEET = "province:\n  id: tinh-fuzz\n  name: Tỉnh Thử\n  communes:\n" \
        "    - id: xa-fuzz\n      name: Xã Thử\n      clusters:\n" + "".join(
            f"        - {{id: {c}, name: Cụm {c}}}\n" for c in CLUSTERS)  # fmt: skip

KINDS: dict[str, int] = {
    "event-garbage": 12,  # not JSON, not an object, nested deep, huge numbers, 1 MiB+
    "event-out-of-range": 18,  # seq 2**70 or 0, times in 9999 or 1970, strings too long
    "event-array-mixed": 10,  # arrays of up to 100 events, a few of them poisoned
    "event-unknown-cluster": 10,  # well-formed, from a cluster the fleet does not name
    "event-misplaced": 5,  # a cluster's event on another cluster's topic
    "event-plausible": 5,  # well-formed, from a known cluster, unsigned: refused
    "state-forged": 8,
    "heartbeat-forged": 12,
    "request-random": 15,  # chunk requests for content nobody holds, any cluster id
    "request-held": 5,  # chunk requests for the bulletin the controller holds
}


class Payloads:
    """Hostile payloads for the intake, reproducible from a seed."""

    def __init__(self, seed: int, held_sha: str) -> None:
        self.rng = random.Random(seed)
        self.held_sha = held_sha
        self.kinds = list(KINDS)
        self.weights = list(KINDS.values())
        self.seq = 0
        self.request_bytes = 0

    def next(self) -> tuple[str, str, bytes]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        make: Callable[[], tuple[str, bytes]] = getattr(self, "_" + kind.replace("-", "_"))
        topic, payload = make()
        if kind.startswith("request"):
            self.request_bytes += len(payload)
        return kind, topic, payload

    def _known(self) -> str:
        return self.rng.choice(CLUSTERS)

    def _unknown(self) -> str:
        return f"ghost-{self.rng.randrange(10**9)}"

    def _event(self, cluster: str, **changes: Any) -> dict[str, Any]:
        self.seq += 1
        event: dict[str, Any] = {
            "v": 1, "cluster": cluster, "outbox": "fuzz", "seq": self.seq,
            "at": datetime.now(UTC).isoformat(), "kind": "finished", "play_id": "fz-play",
        }  # fmt: skip
        event.update(changes)
        return event

    def _poisoned(self, cluster: str) -> dict[str, Any]:
        pick = self.rng.randrange(8)
        choices: list[dict[str, Any]] = [
            {"seq": 2**70}, {"seq": 0}, {"seq": MAX_SEQ + 1},
            {"at": "9999-12-31T23:59:59-23:59"}, {"at": "1970-01-01T00:00:00Z"},
            {"at": (datetime.now(UTC) + timedelta(days=30)).isoformat()},
            {"play_id": "p" * 5000}, {"reason": "r" * 100_000},
        ]  # fmt: skip
        return self._event(cluster, **choices[pick])

    def _event_garbage(self) -> tuple[str, bytes]:
        cluster = self._known()
        pick = self.rng.randrange(7)
        if pick == 0:
            payload = self.rng.randbytes(self.rng.randint(0, 400))
        elif pick == 1:
            payload = b"[" * 20_000 + b"]" * 20_000
        elif pick == 2:
            payload = (b'{"v":1,"cluster":"' + cluster.encode() + b'","outbox":"o","seq":'
                       + b"9" * self.rng.choice([25, 4301, 50_000])
                       + b',"at":"2026-01-01T00:00:00Z","kind":"finished"}')  # fmt: skip
        elif pick == 3:
            payload = json.dumps(self.rng.choice([[], {}, 1, None, "x", [1, 2]])).encode()
        elif pick == 4:
            payload = b'{"v": 1, "seq": NaN, "at": Infinity}'
        elif pick == 5 and self.rng.random() < 0.02:  # rarely: over the size limit
            payload = b'{"reason": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        else:
            payload = json.dumps([self._event(cluster)] * 101).encode()
        return topics.cluster_topic(cluster, "event"), payload

    def _event_out_of_range(self) -> tuple[str, bytes]:
        cluster = self._known()
        return topics.cluster_topic(cluster, "event"), json.dumps(self._poisoned(cluster)).encode()

    def _event_array_mixed(self) -> tuple[str, bytes]:
        cluster = self._known()
        size = self.rng.randint(2, 100)
        events = [self._poisoned(cluster) if self.rng.random() < 0.1 else self._event(cluster)
                  for _ in range(size)]  # fmt: skip
        return topics.cluster_topic(cluster, "event"), json.dumps(events).encode()

    def _event_unknown_cluster(self) -> tuple[str, bytes]:
        ghost = self._unknown()
        return topics.cluster_topic(ghost, "event"), json.dumps(self._event(ghost)).encode()

    def _event_misplaced(self) -> tuple[str, bytes]:
        return (topics.cluster_topic(self._known(), "event"),
                json.dumps(self._event(self._unknown())).encode())  # fmt: skip

    def _event_plausible(self) -> tuple[str, bytes]:
        cluster = self._known()
        return topics.cluster_topic(cluster, "event"), json.dumps(self._event(cluster)).encode()

    def _state_forged(self) -> tuple[str, bytes]:
        cluster = self._unknown() if self.rng.random() < 0.5 else self._known()
        pick = self.rng.randrange(4)
        state: Any = {"v": 1, "cluster": cluster, "state": "online",
                      "at": self.rng.choice(["9999-12-31T23:59:59-23:59",
                                             datetime.now(UTC).isoformat()])}  # fmt: skip
        if pick == 1:
            state["state"] = "maybe"
        elif pick == 2:
            state["version"] = "v" * 10_000
        elif pick == 3:
            state = self.rng.randbytes(50).hex()
        return topics.cluster_topic(cluster, "state"), json.dumps(state).encode()

    def _heartbeat_forged(self) -> tuple[str, bytes]:
        cluster = self._unknown() if self.rng.random() < 0.3 else self._known()
        beat: dict[str, Any] = {"v": 1, "cluster": cluster, "at": datetime.now(UTC).isoformat(),
                                "uptime_s": 1.0}  # fmt: skip
        pick = self.rng.randrange(6)
        if pick == 0:
            beat["disk_free_bytes"] = 2**80
        elif pick == 1:
            beat["uptime_s"] = 1e300
        elif pick == 2:
            beat["transfers"] = [{"sha256": "0" * 64, "held": 1, "chunks": 2}] * 65
        elif pick == 3:
            beat["at"] = "0001-01-01T00:00:00+23:59"
        elif pick == 4:
            beat["relay"] = "x" * 1001
        else:
            beat["cpu_temp_c"] = -273.15 * 10
        return topics.cluster_topic(cluster, "heartbeat"), json.dumps(beat).encode()

    def _request_random(self) -> tuple[str, bytes]:
        cluster = self._unknown() if self.rng.random() < 0.3 else self._known()
        request = {"v": 1, "cluster": cluster, "sha256": self.rng.randbytes(32).hex(),
                   "missing": [self.rng.randrange(100) for _ in range(self.rng.randint(1, 5))]}
        return topics.cluster_topic(cluster, "request"), json.dumps(request).encode()

    def _request_held(self) -> tuple[str, bytes]:
        cluster = self._known()
        missing = list(range(self.rng.randint(1, 50))) * self.rng.choice([1, 10])
        request = {"v": 1, "cluster": cluster, "sha256": self.held_sha, "missing": missing}
        return topics.cluster_topic(cluster, "request"), json.dumps(request).encode()


class ControllerRig:
    """Broker, the controller process, the fuzzer's client, a counter of resent chunks."""

    def __init__(self, work: Path, verbose: bool) -> None:
        self.work = work
        self.stack = contextlib.ExitStack()
        self.broker = fuzz_broker(work)
        self.stack.callback(self.broker.stop)
        generate_keypair(work / "controller.key", work / "controller.pub")
        (work / "fleet.yaml").write_text(FLEET, encoding="utf-8")
        (work / "playlists").mkdir()
        prepared = AudioLibrary(work / "content", AudioSettings()).prepare(
            [tone(work / "bulletin.wav", 20.0)]
        )
        self.held_sha = prepared.sha256
        self.db = work / "controller.db"
        config = work / "controller.yaml"
        config.write_text(
            f"broker_url: mqtt://127.0.0.1:{self.broker.port}\nfleet: fleet.yaml\n"
            "playlists: [playlists]\nstore_url: sqlite:///controller.db\n"
            "private_key: controller.key\ncontent_dir: content\n",
            encoding="utf-8",
        )
        # The clusters' keys, registered as a manager approving them would: what they
        # sign is taken, what the fuzzer writes without them is not.
        self.keys = {c: AgentIdentity(Ed25519PrivateKey.generate()) for c in CLUSTERS}
        store = Store(f"sqlite:///{self.db}")
        try:
            Identities(store).register_keys(
                [(c, k.public_key, k.key_id) for c, k in self.keys.items()], by="fuzz",
                now=datetime.now(UTC),
            )
        finally:
            store.close()
        self.lock = threading.Lock()
        self.resent_bytes = 0
        self.memberships = threading.Event()
        self.client = MqttLink(self.broker.address, "fuzz-attacker", max_inflight=1000)
        self.client.subscribe(topics.all_clusters("content"), self._on_content)
        self.client.subscribe(topics.all_clusters("membership"), self._on_membership)
        self.client.start()
        self.stack.callback(self.client.stop)
        if not self.client.wait_connected(10):
            raise RuntimeError("the fuzzer could not connect to its broker")
        self.controller = Watched("controller.cli", config, work / "controller.log",
                                  verbose=verbose)  # fmt: skip
        self.stack.callback(self.controller.stop)
        if not self.memberships.wait(60):
            raise RuntimeError(f"the controller did not start in 60 s; see {work}/controller.log")

    def _on_content(self, _topic: str, payload: bytes) -> None:
        with self.lock:
            self.resent_bytes += len(payload)

    def _on_membership(self, _topic: str, payload: bytes) -> None:
        if payload:
            self.memberships.set()

    def query(self, sql: str, *args: Any) -> Any:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True,
                                                timeout=5)) as conn:  # fmt: skip
            return conn.execute(sql, args).fetchone()[0]

    def close(self) -> None:
        self.stack.close()


@contextlib.contextmanager
def controller_rig(work: Path, verbose: bool) -> Iterator[ControllerRig]:
    rig = ControllerRig(work, verbose)
    try:
        yield rig
    finally:
        rig.close()


#: Valid events stored before the run, so that the growth counted is the fuzz's, not the
#: store's first use (its caches fill within a few tens of thousands of events).
WARM_UP_EVENTS = 20_000


def warm_up(rig: ControllerRig, count: int = WARM_UP_EVENTS) -> None:
    """Valid events of known clusters, as a busy day brings, stored before the baseline
    (a thousand at a time, as agents send them, not faster than the intake takes them)."""
    now = datetime.now(UTC).isoformat()
    for start in range(0, count, 100):
        cluster = CLUSTERS[(start // 100) % len(CLUSTERS)]
        events = [{"v": 1, "cluster": cluster, "outbox": "warm-up", "seq": seq + 1, "at": now,
                   "kind": "finished", "play_id": "warm-up"}
                  for seq in range(start, start + 100)]  # fmt: skip
        rig.client.publish(topics.cluster_topic(cluster, "event"),
                           rig.keys[cluster].seal("event", events))  # fmt: skip
        if start % 1000 == 900 or start + 100 >= count:
            _wait_stored(rig, min(start + 100, count))


def _wait_stored(rig: ControllerRig, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if rig.query("SELECT count(*) FROM events WHERE outbox = 'warm-up'") >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the controller did not store {count} warm-up events within 60 s")


def run_intake(work: Path, count: int, seed: int, verbose: bool,
               warm_up_events: int = WARM_UP_EVENTS) -> dict[str, Any]:  # fmt: skip
    with controller_rig(work, verbose) as rig:
        proc = rig.controller
        warm_up(rig, warm_up_events)
        proc.wait_quiet(timeout_s=60)
        baseline = proc.settled_rss_mb()
        parts_before = proc.rss_parts_mb()
        say(f"controller up (pid {proc.pid}), {baseline:.1f} MB; sending {count} payloads")
        payloads = Payloads(seed, rig.held_sha)
        by_kind: dict[str, int] = {}
        started = time.monotonic()
        for n in range(count):
            kind, topic, payload = payloads.next()
            by_kind[kind] = by_kind.get(kind, 0) + 1
            rig.client.publish(topic, payload, qos=1)
            if n % 5000 == 4999:
                if not proc.alive():
                    break
                say(f"{n + 1} sent")
        if not rig.client.wait_published("fuzz/done", b"", qos=1, timeout=600):
            raise RuntimeError("the broker did not take the fuzz payloads within 600 s")
        sent_s = time.monotonic() - started
        drained = proc.wait_quiet(timeout_s=600)
        say(f"sent in {sent_s:.1f} s; controller quiet {drained:.1f} s later; a valid event")
        valid = {"v": 1, "cluster": CLUSTERS[0], "outbox": "valid-after", "seq": 1,
                 "at": datetime.now(UTC).isoformat(), "kind": "received", "play_id": "valid"}
        sent_at = time.monotonic()
        rig.client.publish(topics.cluster_topic(CLUSTERS[0], "event"),
                           rig.keys[CLUSTERS[0]].seal("event", valid))  # fmt: skip
        stored_at = None
        while time.monotonic() - sent_at < 60 and proc.alive():
            if rig.query("SELECT count(*) FROM events WHERE outbox = 'valid-after'"):
                stored_at = time.monotonic()
                break
            time.sleep(0.005)
        proc.wait_quiet(timeout_s=60)
        final = proc.settled_rss_mb() if proc.alive() else None
        parts_after = proc.rss_parts_mb() if proc.alive() else (0.0, 0.0)
        known = ",".join(f"'{c}'" for c in CLUSTERS)
        request_bytes = max(payloads.request_bytes, 1)
        with rig.lock:
            resent = rig.resent_bytes
        return {
            "fuzz": "intake",
            "sent": count,
            "crashes": 0 if proc.alive() else 1,
            "plays_unsigned": None,
            "relay_switches": None,
            "rss_growth_mb": round(final - baseline, 1) if final is not None else None,
            "valid_after_s": round(stored_at - sent_at, 3) if stored_at is not None else None,
            "send_s": round(sent_s, 1),
            "quiet_after_s": round(drained, 1),
            "rss_before_mb": round(baseline, 1),
            "rss_after_mb": round(final, 1) if final is not None else None,
            "private_growth_mb": round(parts_after[0] - parts_before[0], 1),
            "file_pages_growth_mb": round(parts_after[1] - parts_before[1], 1),
            "tracebacks": proc.tracebacks(),
            "log_kb": proc.log_bytes() // 1024,
            "unknown_rows": rig.query(
                f"SELECT count(*) FROM clusters WHERE id NOT IN ({known})"  # noqa: S608 - ids made above, not input
            ),
            "out_of_range_stored": rig.query(
                "SELECT count(*) FROM events WHERE seq < 1 OR seq > ? "
                "OR at < '2020-01-01 00:00:00' OR at >= '2100-01-01 00:00:00' "
                "OR length(play_id) > 128", MAX_SEQ),
            "events_stored": rig.query("SELECT count(*) FROM events"),
            "fuzz_events_stored": rig.query(
                "SELECT count(*) FROM events WHERE outbox NOT IN ('warm-up', 'valid-after')"
            ),
            "resent_bytes": resent,
            "resend_amplification": round(resent / request_bytes, 2),
            "by_kind": by_kind,
            "seed": seed,
            "warm_up_events": warm_up_events,
        }
