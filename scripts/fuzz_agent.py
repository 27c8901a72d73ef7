"""`fuzz.py agent` and `fuzz.py flood`: hostile payloads at one real agent process.

The agent is `loa-agent run --config FILE` (as `python -m device_agent.cli`), its own
process, with the `null` output and its amplifier relay an LCUS board on a pty
(fuzz_rig.PtyRelay), against a private mosquitto. This script plays the controller (it
holds the key the agent trusts: it publishes the signed membership and acknowledges the
agent's events) and the attacker, who can publish anything on every topic the agent
reads but does not hold the key.

- agent: N payloads, drawn with a seeded generator from the kinds below, on the
  cluster's command, membership and content topics and its groups' command and content
  topics; then, once the agent has gone quiet, a valid signed emergency.
- flood: N tiny forged chunks on the commune's content topic at a steady pace over
  --flood-s seconds (30,000 in 4 s by default), and a valid signed emergency sent half
  way through it.

Measured: `sent`; `crashes` (the agent process exited); `plays_unsigned` (plays of any
id the fuzzer made up that got as far as `received` or `playing`); `relay_switches`
(the amplifier switched on before the valid emergency was sent); `rss_growth_mb`
(resident memory once quiet after the run and the emergency, less before the run);
`valid_after_s` (from publishing the emergency to its `playing` event).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fuzz_rig import PtyRelay, Watched, fuzz_broker, say

from protocol import chunks, topics
from protocol.messages import (
    AckBody,
    Address,
    ContentRef,
    Level,
    MembershipBody,
    PlayBody,
    StopBody,
    parse_events,
)
from protocol.mqtt import MqttLink
from protocol.signing import Signer, generate_keypair, load_private_key, unseal

CLUSTER = "fuzz-01"
OTHER = "fuzz-02"
GROUP = "xa-fuzz"
PROVINCE = "tinh-fuzz"
FAKE_PREFIX = "fz-"  # every play id the fuzzer makes up starts with this

# What one payload is, and how often (weights).
KINDS: dict[str, int] = {
    "chunk-forged": 25,  # well-formed chunk of a content nobody announced
    "chunk-malformed": 10,  # bad magic, short header, index past count, count 0
    "command-garbage": 8,  # not JSON, not an object, nested deep, huge numbers
    "command-unsigned": 10,  # a plausible emergency without a signature
    "command-stranger": 10,  # signed with a key the agent does not trust
    "command-tampered": 15,  # signed with the right key, then changed
    "command-expired": 5,  # the right key, expired
    "command-misaddressed": 5,  # the right key, for another cluster or group
    "command-replayed": 4,  # a real command the agent already took, sent again
    "membership-forged": 8,  # unsigned, another key, tampered, misaddressed
}


@dataclass
class Seen:
    """What the agent reported (as the controller receives it)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (when, play, kind)
    online: threading.Event = field(default_factory=threading.Event)

    def first(self, play_id: str, kind: str) -> float | None:
        with self.lock:
            return next((t for t, p, k in self.events if p == play_id and k == kind), None)

    def made_up(self) -> set[str]:
        """Plays the fuzzer made up that the agent received or played."""
        with self.lock:
            return {p for _t, p, k in self.events
                    if p.startswith(FAKE_PREFIX) and k in ("received", "playing")}


class AgentRig:
    """Broker, keys, the relay on a pty, the agent process, and the controller's side."""

    def __init__(self, work: Path, verbose: bool) -> None:
        self.work = work
        self.stack = contextlib.ExitStack()
        self.broker = fuzz_broker(work)
        self.stack.callback(self.broker.stop)
        generate_keypair(work / "controller.key", work / "controller.pub")
        self.signer = Signer(load_private_key(work / "controller.key"))
        stranger = work / "stranger"
        generate_keypair(stranger / "key", stranger / "pub")
        self.stranger = Signer(load_private_key(stranger / "key"))
        self.relay = PtyRelay(work / "ttyRELAY")
        self.stack.callback(self.relay.close)
        self.seen = Seen()
        self.real_commands: list[bytes] = []  # signed commands sent, to replay
        self.parts_before = (0.0, 0.0)  # private and file-backed memory at the baseline
        self.client = MqttLink(self.broker.address, "fuzz-controller")
        self.client.subscribe(topics.cluster_topic(CLUSTER, "event"), self._on_events)
        self.client.subscribe(topics.cluster_topic(CLUSTER, "state"), self._on_state)
        self.client.start()
        self.stack.callback(self.client.stop)
        if not self.client.wait_connected(10):
            raise RuntimeError("the fuzzer could not connect to its broker")
        self.attacker = MqttLink(self.broker.address, "fuzz-attacker", max_inflight=1000)
        self.attacker.start()
        self.stack.callback(self.attacker.stop)
        if not self.attacker.wait_connected(10):
            raise RuntimeError("the fuzzer could not connect to its broker")
        self.publish_membership()
        config = work / "agent.yaml"
        config.write_text(
            f"cluster_id: {CLUSTER}\nbroker_url: mqtt://127.0.0.1:{self.broker.port}\n"
            "controller_public_key: controller.pub\ndata_dir: agent-data\n"
            "keepalive: 30\noutput: {kind: null}\n"
            f"relay:\n  driver: lcus\n  url: {self.relay.url}\n  warm_up: 0s\n",
            encoding="utf-8",
        )
        self.agent = Watched("device_agent.cli", config, work / "agent.log", verbose=verbose)
        self.stack.callback(self.agent.stop)
        if not self.seen.online.wait(30):
            raise RuntimeError(f"the agent did not come online in 30 s; see {work}/agent.log")

    def close(self) -> None:
        self.stack.close()

    # --- the controller's side -----------------------------------------------------------

    def publish_membership(self) -> None:
        now = datetime.now(UTC)
        body = MembershipBody(cluster=CLUSTER, commune=GROUP, groups=[GROUP, PROVINCE],
                              version=int(now.timestamp() * 1000))  # fmt: skip
        cmd = self.signer.command(body, Address(clusters=[CLUSTER]), now, timedelta(days=400))
        self.client.publish(topics.cluster_topic(CLUSTER, "membership"), cmd.to_json(),
                            retain=True)  # fmt: skip

    def _on_state(self, _topic: str, payload: bytes) -> None:
        if b'"online"' in payload:
            self.seen.online.set()

    def _on_events(self, _topic: str, payload: bytes) -> None:
        sealed = unseal(payload)  # the agent signs its events; read, as the controller would
        events, _problems = parse_events(sealed.body)
        now = time.monotonic()
        with self.seen.lock:
            self.seen.events += [(now, e.play_id or "", e.kind) for e in events]
        by_outbox: dict[str, list[int]] = {}
        for event in events:
            by_outbox.setdefault(event.outbox, []).append(event.seq)
        for outbox, seqs in by_outbox.items():  # acknowledged, as the controller does
            cmd = self.signer.command(AckBody(outbox=outbox, seqs=seqs),
                                      Address(clusters=[CLUSTER]), datetime.now(UTC),
                                      timedelta(hours=6))  # fmt: skip
            payload_out = cmd.to_json()
            self.client.publish(topics.cluster_topic(CLUSTER, "command"), payload_out)
            if len(self.real_commands) < 200:
                self.real_commands.append(payload_out)

    def emergency(self, play_id: str) -> float:
        """Publish a valid signed emergency (command, then its audio) to the commune, as
        the controller does; the monotonic time it was published."""
        data = os.urandom(3000)
        ref = ContentRef(sha256=chunks.sha256_hex(data), size=len(data), duration_s=0.5,
                         chunk_size=1024, chunks=chunks.chunk_count(len(data), 1024))  # fmt: skip
        now = datetime.now(UTC)
        body = PlayBody(play_id=play_id, bulletin="Cảnh báo thật", level="emergency",
                        start_at=now, latest_start=now + timedelta(minutes=5), items=[ref],
                        urgent=True)  # fmt: skip
        cmd = self.signer.command(body, Address(groups=[GROUP]), now, timedelta(minutes=10))
        sent = time.monotonic()
        self.client.publish(topics.group_topic(GROUP, "command"), cmd.to_json())
        for frame in chunks.split(data, 1024):
            self.client.publish(topics.group_topic(GROUP, "content"), frame)
        return sent

    def wait_playing(self, play_id: str, timeout_s: float = 120.0) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.agent.alive():
            at = self.seen.first(play_id, "playing")
            if at is not None:
                return at
            time.sleep(0.005)
        return None


# --- payloads ----------------------------------------------------------------------------


class Payloads:
    """Hostile payloads, reproducible from a seed."""

    def __init__(self, rig: AgentRig, seed: int) -> None:
        self.rig = rig
        self.rng = random.Random(seed)
        self.kinds = list(KINDS)
        self.weights = list(KINDS.values())
        self.counter = 0

    def next(self) -> tuple[str, str, bytes, bool]:
        """(kind, topic, payload, retain)."""
        kind = self.rng.choices(self.kinds, self.weights)[0]
        make: Callable[[], tuple[str, bytes]] = getattr(self, "_" + kind.replace("-", "_"))
        topic, payload = make()
        retain = kind == "membership-forged" and self.rng.random() < 0.2
        return kind, topic, payload, retain

    def _fake_id(self) -> str:
        self.counter += 1
        return f"{FAKE_PREFIX}{self.counter}"

    def _content_topic(self) -> str:
        return self.rng.choice([topics.cluster_topic(CLUSTER, "content"),
                                topics.group_topic(GROUP, "content"),
                                topics.group_topic(PROVINCE, "content")])  # fmt: skip

    def _command_topic(self) -> str:
        return self.rng.choice([topics.cluster_topic(CLUSTER, "command"),
                                topics.group_topic(GROUP, "command"),
                                topics.group_topic(PROVINCE, "command")])  # fmt: skip

    def _chunk_forged(self) -> tuple[str, bytes]:
        count = self.rng.randint(1, 50)
        data = self.rng.randbytes(self.rng.randint(0, 64))
        sha = self.rng.randbytes(32).hex()
        return self._content_topic(), chunks.encode(sha, self.rng.randrange(count), count, data)

    def _chunk_malformed(self) -> tuple[str, bytes]:
        sha = self.rng.randbytes(32).hex()
        pick = self.rng.randrange(5)
        if pick == 0:
            payload = self.rng.randbytes(self.rng.randint(0, 43))
        elif pick == 1:
            payload = b"LOA2" + self.rng.randbytes(60)
        elif pick == 2:
            payload = chunks.HEADER.pack(chunks.MAGIC, bytes.fromhex(sha), 7, 3) + b"x"
        elif pick == 3:
            payload = chunks.HEADER.pack(chunks.MAGIC, bytes.fromhex(sha), 0, 0)
        else:
            payload = chunks.HEADER.pack(chunks.MAGIC, bytes.fromhex(sha), 2**32 - 2,
                                         2**32 - 1) + b"y" * 10  # fmt: skip
        return self._content_topic(), payload

    def _play(self, *, level: Level = "emergency", shift_s: float = 0.0) -> PlayBody:
        now = datetime.now(UTC) + timedelta(seconds=shift_s)
        data_sha = self.rng.randbytes(32).hex()
        ref = ContentRef(sha256=data_sha, size=1000, duration_s=1.0, chunk_size=1024, chunks=1)
        return PlayBody(play_id=self._fake_id(), bulletin="Giả mạo", level=level,
                        start_at=now, latest_start=now + timedelta(minutes=5),
                        items=[ref])  # fmt: skip

    def _command_dict(self, body: Any, to: Address | None = None) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "v": 1, "id": self.rng.randbytes(16).hex(), "issued_at": now.isoformat(),
            "expires_at": (now + timedelta(hours=1)).isoformat(),
            "to": (to or Address(clusters=[CLUSTER])).model_dump(mode="json"),
            "body": body.model_dump(mode="json"),
        }  # fmt: skip

    def _command_garbage(self) -> tuple[str, bytes]:
        pick = self.rng.randrange(7)
        if pick == 0:
            payload = self.rng.randbytes(self.rng.randint(0, 300))
        elif pick == 1:
            payload = b"[" * 5000 + b"]" * 5000
        elif pick == 2:
            payload = b'{"v":1,"id":"' + b"9" * 20 + b'","issued_at":' + b"9" * 6000 + b"}"
        elif pick == 3:
            payload = json.dumps(self.rng.choice([[], 1, "play", None, 1e308])).encode()
        elif pick == 4:
            payload = b'{"v": 1, "sig": 12345, "body": {"kind": "play"}}'
        elif pick == 5:
            payload = b"\xff\xfe" + "thông báo".encode("utf-16")
        else:
            obj = self._command_dict(self._play())
            obj["sig"] = "A" * self.rng.choice([0, 3, 88, 10_000])
            payload = json.dumps(obj).encode()
        return self._command_topic(), payload

    def _command_unsigned(self) -> tuple[str, bytes]:
        body = self._play() if self.rng.random() < 0.8 else StopBody()
        return self._command_topic(), json.dumps(self._command_dict(body)).encode()

    def _command_stranger(self) -> tuple[str, bytes]:
        cmd = self.rig.stranger.command(self._play(), Address(clusters=[CLUSTER]),
                                        datetime.now(UTC), timedelta(hours=1))  # fmt: skip
        return self._command_topic(), cmd.to_json()

    def _command_tampered(self) -> tuple[str, bytes]:
        cmd = self.rig.signer.command(self._play(level="normal", shift_s=3600),
                                      Address(clusters=[OTHER]), datetime.now(UTC),
                                      timedelta(hours=1))  # fmt: skip
        obj = json.loads(cmd.to_json())
        pick = self.rng.randrange(5)
        if pick == 0:
            obj["body"]["level"] = "emergency"
        elif pick == 1:
            obj["to"] = {"clusters": [CLUSTER]}
        elif pick == 2:
            obj["body"]["start_at"] = datetime.now(UTC).isoformat()
        elif pick == 3:
            obj["body"]["play_id"] = self._fake_id()
        else:
            raw = bytearray(cmd.to_json())
            at = self.rng.randrange(len(raw))
            raw[at] ^= 1 << self.rng.randrange(8)
            return self._command_topic(), bytes(raw)
        return self._command_topic(), json.dumps(obj).encode()

    def _command_expired(self) -> tuple[str, bytes]:
        issued = datetime.now(UTC) - timedelta(hours=3)
        cmd = self.rig.signer.command(self._play(shift_s=-3 * 3600), Address(clusters=[CLUSTER]),
                                      issued, timedelta(hours=1))  # fmt: skip
        return topics.cluster_topic(CLUSTER, "command"), cmd.to_json()

    def _command_misaddressed(self) -> tuple[str, bytes]:
        to = self.rng.choice([Address(clusters=[OTHER]), Address(groups=["xa-khac"])])
        cmd = self.rig.signer.command(self._play(), to, datetime.now(UTC), timedelta(hours=1))
        return self._command_topic(), cmd.to_json()

    def _command_replayed(self) -> tuple[str, bytes]:
        if not self.rig.real_commands:
            return self._command_unsigned()
        return (topics.cluster_topic(CLUSTER, "command"),
                self.rng.choice(self.rig.real_commands))  # fmt: skip

    def _membership_forged(self) -> tuple[str, bytes]:
        body = MembershipBody(cluster=CLUSTER, groups=["xa-gia"], version=2**62)
        topic = topics.cluster_topic(CLUSTER, "membership")
        pick = self.rng.randrange(4)
        if pick == 0:
            return topic, json.dumps(self._command_dict(body)).encode()
        if pick == 1:
            cmd = self.rig.stranger.command(body, Address(clusters=[CLUSTER]), datetime.now(UTC),
                                            timedelta(days=1))  # fmt: skip
            return topic, cmd.to_json()
        if pick == 2:
            other = MembershipBody(cluster=OTHER, groups=["xa-gia"], version=2**62)
            cmd = self.rig.signer.command(other, Address(clusters=[OTHER]), datetime.now(UTC),
                                          timedelta(days=1))  # fmt: skip
            return topic, cmd.to_json()
        cmd = self.rig.signer.command(body, Address(clusters=[CLUSTER]), datetime.now(UTC),
                                      timedelta(days=1))  # fmt: skip
        obj = json.loads(cmd.to_json())
        obj["body"]["groups"] = ["xa-gia", "tinh-gia"]
        return topic, json.dumps(obj).encode()


# --- the modes ---------------------------------------------------------------------------


@contextlib.contextmanager
def agent_rig(work: Path, verbose: bool) -> Iterator[AgentRig]:
    rig = AgentRig(work, verbose)
    try:
        yield rig
    finally:
        rig.close()


def _baseline(rig: AgentRig) -> float:
    rig.agent.wait_quiet(timeout_s=60)
    baseline = rig.agent.settled_rss_mb()
    rig.parts_before = rig.agent.rss_parts_mb()
    return baseline


def _outcome(rig: AgentRig, mode: str, sent: int, baseline_mb: float, switches: int,
             valid_sent: float, elapsed_s: float) -> dict[str, Any]:  # fmt: skip
    playing = rig.wait_playing("valid-emergency")
    valid_after = playing - valid_sent if playing is not None else None
    rig.agent.wait_quiet(timeout_s=120)
    final_mb = rig.agent.settled_rss_mb() if rig.agent.alive() else None
    parts = rig.agent.rss_parts_mb() if rig.agent.alive() else (0.0, 0.0)
    made_up = rig.seen.made_up()
    return {
        "fuzz": mode,
        "sent": sent,
        "crashes": 0 if rig.agent.alive() else 1,
        "plays_unsigned": len(made_up),
        "relay_switches": switches,
        "rss_growth_mb": round(final_mb - baseline_mb, 1) if final_mb is not None else None,
        "valid_after_s": round(valid_after, 3) if valid_after is not None else None,
        "send_s": round(elapsed_s, 1),
        "rss_before_mb": round(baseline_mb, 1),
        "rss_after_mb": round(final_mb, 1) if final_mb is not None else None,
        "private_growth_mb": round(parts[0] - rig.parts_before[0], 1),
        "file_pages_growth_mb": round(parts[1] - rig.parts_before[1], 1),
        "tracebacks": rig.agent.tracebacks(),
        "log_kb": rig.agent.log_bytes() // 1024,
        "emergency_relay_on": rig.relay.switched_on() > switches,
        "made_up_plays_seen": sorted(made_up)[:10],
    }


def run_agent(work: Path, count: int, seed: int, verbose: bool) -> dict[str, Any]:
    with agent_rig(work, verbose) as rig:
        baseline = _baseline(rig)
        say(f"agent online (pid {rig.agent.pid}), {baseline:.1f} MB; sending {count} payloads")
        payloads = Payloads(rig, seed)
        by_kind: dict[str, int] = {}
        started = time.monotonic()
        for n in range(count):
            kind, topic, payload, retain = payloads.next()
            by_kind[kind] = by_kind.get(kind, 0) + 1
            rig.attacker.publish(topic, payload, qos=1, retain=retain)
            if n % 5000 == 4999:
                if not rig.agent.alive():
                    break
                say(f"{n + 1} sent")
                time.sleep(0)  # let the network thread write
        # Acknowledged by the broker after everything before it: all of it was sent.
        if not rig.attacker.wait_published("fuzz/done", b"", qos=1, timeout=600):
            raise RuntimeError("the broker did not take the fuzz payloads within 600 s")
        sent_s = time.monotonic() - started
        drained = rig.agent.wait_quiet(timeout_s=600)
        switches = rig.relay.switched_on()
        say(f"sent in {sent_s:.1f} s; agent quiet {drained:.1f} s later; the valid emergency")
        valid_sent = rig.emergency("valid-emergency")
        result = _outcome(rig, "agent", count, baseline, switches, valid_sent, sent_s)
        result["quiet_after_s"] = round(drained, 1)
        result["by_kind"] = by_kind
        result["seed"] = seed
        return result


def run_flood(work: Path, count: int, flood_s: float, verbose: bool) -> dict[str, Any]:
    with agent_rig(work, verbose) as rig:
        baseline = _baseline(rig)
        say(f"agent online (pid {rig.agent.pid}), {baseline:.1f} MB; {count} forged chunks "
            f"in {flood_s:g} s, the valid emergency half way")
        topic = topics.group_topic(GROUP, "content")
        frames = [chunks.encode(os.urandom(32).hex(), 0, 1, os.urandom(8)) for _ in range(count)]
        cpu_before = rig.agent.cpu_s()
        started = time.monotonic()
        valid_sent = 0.0
        switches = 0
        for n, frame in enumerate(frames):
            due = started + flood_s * n / count
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            rig.attacker.publish(topic, frame, qos=0)
            if n == count // 2:
                switches = rig.relay.switched_on()
                valid_sent = rig.emergency("valid-emergency")
        sent_s = time.monotonic() - started
        drained = rig.agent.wait_quiet(timeout_s=600)
        result = _outcome(rig, "flood", count, baseline, switches, valid_sent, sent_s)
        result["flood_s"] = flood_s
        result["quiet_after_s"] = round(drained, 1)
        result["agent_cpu_s"] = round(rig.agent.cpu_s() - cpu_before, 1)
        return result
