"""`bench.py intake`: status events one real controller process stores and acknowledges.

The controller is `loa-controller run --config FILE` (as `python -m controller.cli`), its
own process, as in the field: a fleet of --clusters clusters (communes of 100), every
cluster's key registered, a SQLite store (or the PostgreSQL server named by --store,
in a database of its own made for the run and dropped after it), a private mosquitto.

The bench plays the fleet: for each cluster a key of its own (device_agent.identity,
the agent's own sealing), and event messages made and signed before the clock starts,
as agents send them: one event per message (a `playing` alone), or three (`received`,
`delivered` and `playing` of one play, committed together). They are published at QoS 1
round-robin over the clusters, as fast as one paho client can, keeping at most WINDOW
events published but not yet stored: an agent whose events the controller cannot take
yet sends them again 10 s later (the intake drops what would overflow its queue), so a
bench that outran the store would measure resends, not the intake.

Measured per trial: `events_per_s`, the events stored (read from the store: its newest
row id) over the time from the first publication to the last one stored; the
controller's CPU seconds over the same time (user + system, from /proc), and so
`events_per_cpu_s`, what one core of the controller takes in; `p99_ack_s`, from a
message's publication to the signed ack command naming its last event on the cluster's
command topic (acks wait up to controller.intake.ACK_DELAY_S so that one ack covers a
burst: that second is in the figure by design). The raw broker, in the same run: the
same signed payloads published the same way (on other topics) to one bare paho
subscriber in a process of its own, until it has them all: messages per second.
Target: ≥ 5,000 events stored per CPU-second of the controller, for one event per
message (the hardest shape: a signature checked per event).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pwd
import shutil
import statistics
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as paho
from bench_broker import PrivateMosquitto
from bench_report import pass_fail, percentile, rounded, table, target
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_rig import Watched
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from controller.identities import Identities
from controller.intake import ACK_DELAY_S
from controller.store import Store
from device_agent.identity import AgentIdentity
from protocol import topics
from protocol.messages import Event, EventKind, events_body
from protocol.signing import generate_keypair

#: Events published but not yet stored, at most: about 2.6 MB of one-event messages
#: waiting in the controller, under its queue's bound (controller.intake.MAX_QUEUED_BYTES).
WINDOW = 4000
#: Where a PostgreSQL store's server runs on this machine, its CPU is read from /proc.
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


#: The intake's target: events stored per CPU-second of the controller.
TARGET_EVENTS_PER_CPU_S = 5000.0
COMMUNE_SIZE = 100
#: The events of one play an agent commits together, in order.
BURST: tuple[str, ...] = ("received", "delivered", "playing")


def say(message: str) -> None:
    from bench_rig import say as bench_say

    bench_say(message)


def cluster_ids(count: int) -> list[str]:
    return [f"in-{n // COMMUNE_SIZE + 1:03d}-{n % COMMUNE_SIZE + 1:03d}" for n in range(count)]


def fleet_yaml(ids: list[str]) -> str:
    lines = ["province:", "  id: tinh-bench", "  name: Tỉnh Đo", "  communes:"]
    for start in range(0, len(ids), COMMUNE_SIZE):
        commune = start // COMMUNE_SIZE + 1
        lines += [f"    - id: xa-{commune:03d}", f"      name: Xã {commune}", "      clusters:"]
        members = ids[start : start + COMMUNE_SIZE]
        lines += [f"        - {{id: {c}, name: Cụm {c}}}" for c in members]
    return "\n".join(lines) + "\n"


@dataclass
class Message:
    cluster: str
    topic: str
    payload: bytes
    last_seq: int  # the seq of its last event: the ack that names it covers the message
    events: int


def make_messages(
    keys: dict[str, AgentIdentity], outbox: str, total: int, per_message: int
) -> list[Message]:
    """total events (rounded up to whole messages), round-robin over the clusters, each
    message signed with its cluster's key."""
    now = datetime.now(UTC)
    seqs = dict.fromkeys(keys, 0)
    order = list(keys)
    messages: list[Message] = []
    made = 0
    while made < total:
        cluster = order[len(messages) % len(order)]
        play = f"bench-{outbox}-{seqs[cluster] // per_message}"
        evs = []
        for index in range(per_message):
            seqs[cluster] += 1
            kind = BURST[index - per_message] if per_message <= len(BURST) else "playing"
            evs.append(Event(cluster=cluster, outbox=outbox, seq=seqs[cluster], at=now,
                             kind=cast(EventKind, kind), play_id=play, bulletin="Bản tin đo",
                             level="normal"))  # fmt: skip
        payload = keys[cluster].seal("event", events_body(evs))
        messages.append(Message(cluster, topics.cluster_topic(cluster, "event"), payload,
                                seqs[cluster], per_message))  # fmt: skip
        made += per_message
    return messages


class StoreWatch:
    """How many events the store holds beyond a starting point (its newest row id)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url)
        self.start = self._newest()

    def _newest(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM events")).scalar_one())

    def stored(self) -> int:
        return self._newest() - self.start

    def rebase(self) -> None:
        self.start = self._newest()

    def close(self) -> None:
        self.engine.dispose()


class Acks:
    """The ack commands the controller publishes, by (cluster, outbox): the highest seq
    each named, and when it arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[tuple[str, str], list[tuple[float, int]]] = {}

    def on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        at = time.monotonic()
        try:
            body = json.loads(msg.payload)["body"]
        except (ValueError, KeyError, TypeError):
            return
        if body.get("kind") != "ack":
            return
        parsed = topics.parse(msg.topic)
        if parsed is None:
            return
        with self.lock:
            self.arrivals.setdefault((parsed.name, body["outbox"]), []).append(
                (at, max(body["seqs"]))
            )

    def acked_at(self, cluster: str, outbox: str, seq: int) -> float | None:
        """When an ack first covered this seq (acks name every seq; the highest stands
        for the ones before it in one outbox, since the intake acks in batches)."""
        with self.lock:
            for at, highest in self.arrivals.get((cluster, outbox), []):
                if highest >= seq:
                    return at
        return None


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: could not connect to the bench's broker")
        time.sleep(0.01)
    return client


def raw_subscriber(port: int, expected: int, conn: Connection) -> None:
    """A bare paho subscriber on the raw topics: it says when it has `expected` messages."""
    got = 0
    done = threading.Event()

    def on_message(_client: Any, _userdata: Any, _msg: paho.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got == expected:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-sub")
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe("raw/cluster/+/event", qos=1)
    client.loop_start()
    subscribed.wait(10)
    conn.send("ready")
    finished = done.wait(300)
    conn.send(time.monotonic() if finished else None)
    client.loop_stop()
    client.disconnect()


def raw_round(port: int, messages: list[Message]) -> float:
    """Seconds the raw broker takes to carry these payloads to one bare subscriber."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(target=raw_subscriber, args=(port, len(messages), child), daemon=True)
    proc.start()
    try:
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError("the raw subscriber did not start")
        client = _client(port, "bench-raw-pub")
        try:
            started = time.monotonic()
            for message in messages:
                client.publish("raw/" + message.topic.split("/", 2)[2], message.payload, qos=1)
            if not parent.poll(300):
                raise RuntimeError("the raw subscriber did not get every message in 300 s")
            finished = parent.recv()
        finally:
            client.loop_stop()
            client.disconnect()
        if finished is None:
            raise RuntimeError("the raw subscriber did not get every message")
        return float(finished) - started
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


@contextlib.contextmanager
def bench_database(url: str | None, work: Path) -> Iterator[str]:
    """The store's URL: a SQLite file in work, or a new database on the PostgreSQL server
    of url, dropped afterwards."""
    if url is None:
        yield f"sqlite:///{work / 'controller.db'}"
        return
    server = make_url(url)
    name = f"loa_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class IntakeRig:
    """Broker, fleet, keys, the controller process, the bench's publisher and ack reader."""

    def __init__(self, work: Path, clusters: int, store_url: str, verbose: bool) -> None:
        self.store_url = store_url
        self.stack = contextlib.ExitStack()
        try:
            self._start(work, clusters, store_url, verbose)
        except BaseException:
            self.stack.close()
            raise

    def _start(self, work: Path, clusters: int, store_url: str, verbose: bool) -> None:
        self.broker = PrivateMosquitto(work / "broker")
        self.broker.start()
        self.stack.callback(self.broker.stop)
        generate_keypair(work / "controller.key", work / "controller.pub")
        ids = cluster_ids(clusters)
        (work / "fleet.yaml").write_text(fleet_yaml(ids), encoding="utf-8")
        (work / "playlists").mkdir()
        (work / "controller.yaml").write_text(
            f"broker_url: mqtt://127.0.0.1:{self.broker.port}\nfleet: fleet.yaml\n"
            f"playlists: [playlists]\nstore_url: {json.dumps(store_url)}\n"
            "private_key: controller.key\ncontent_dir: content\n",
            encoding="utf-8",
        )
        say(f"{clusters} clusters: making and registering their keys")
        self.keys = {c: AgentIdentity(Ed25519PrivateKey.generate()) for c in ids}
        store = Store(store_url)
        try:
            Identities(store).register_keys(
                [(c, k.public_key, k.key_id) for c, k in self.keys.items()], by="bench",
                now=datetime.now(UTC),
            )
        finally:
            store.close()
        self.watch = StoreWatch(store_url)
        self.stack.callback(self.watch.close)
        self.acks = Acks()
        ready = threading.Event()
        self.client = _client(self.broker.port, "bench-fleet")
        self.stack.callback(self.client.disconnect)
        self.stack.callback(self.client.loop_stop)

        def on_message(client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
            if msg.topic.endswith("/membership"):
                if msg.payload:
                    ready.set()
            else:
                self.acks.on_message(client, userdata, msg)

        self.client.on_message = on_message
        self.client.subscribe([(topics.all_clusters("command"), 1),
                               (topics.all_clusters("membership"), 1)])  # fmt: skip
        self.controller = Watched("controller.cli", work / "controller.yaml",
                                  work / "controller.log", verbose=verbose)  # fmt: skip
        self.stack.callback(self.controller.stop)
        if not ready.wait(60):
            raise RuntimeError(
                f"the controller did not publish its memberships in 60 s; see "
                f"{work / 'controller.log'}"
            )
        self.controller.wait_quiet(timeout_s=60)

    def close(self) -> None:
        self.stack.close()


def database_server_cpu_s(store_url: str) -> float | None:
    """CPU seconds (user + system, with its exited children's) of every process of the
    PostgreSQL server's user on this machine, when the store is a PostgreSQL server on
    this machine; None otherwise (SQLite works in the controller's own process, and a
    server elsewhere cannot be read from here)."""
    url = make_url(store_url)
    if url.get_backend_name() != "postgresql" or (url.host or "localhost") not in LOCAL_HOSTS:
        return None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.parent.stat().st_uid != uid:
                continue
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def one_trial(rig: IntakeRig, messages: list[Message], outbox: str) -> dict[str, Any]:
    """Publish the messages within WINDOW; the figures of the trial."""
    total = sum(m.events for m in messages)
    rig.watch.rebase()
    cpu_before = rig.controller.cpu_s()
    db_before = database_server_cpu_s(rig.store_url)
    sent_at: list[float] = []
    stored = 0
    started = time.monotonic()
    published = 0
    for message in messages:
        while published - stored > WINDOW:
            stored = rig.watch.stored()
            if published - stored > WINDOW:
                time.sleep(0.002)
        sent_at.append(time.monotonic())
        rig.client.publish(message.topic, message.payload, qos=1)
        published += message.events
    deadline = time.monotonic() + 120
    while stored < total:
        if time.monotonic() > deadline or not rig.controller.alive():
            raise RuntimeError(f"the controller stored {stored} of {total} events")
        time.sleep(0.002)
        stored = rig.watch.stored()
    finished = time.monotonic()
    cpu = rig.controller.cpu_s() - cpu_before
    db_after = database_server_cpu_s(rig.store_url)
    db_cpu = db_after - db_before if db_after is not None and db_before is not None else None
    # Every message's ack (they come within ACK_DELAY_S of the batch that stored it).
    ack_deadline = time.monotonic() + ACK_DELAY_S + 30
    latencies: list[float] = []
    for message, at in zip(messages, sent_at, strict=True):
        acked = rig.acks.acked_at(message.cluster, outbox, message.last_seq)
        while acked is None and time.monotonic() < ack_deadline:
            time.sleep(0.01)
            acked = rig.acks.acked_at(message.cluster, outbox, message.last_seq)
        if acked is not None:
            latencies.append(acked - at)
    wall = finished - started
    return {
        "events": total,
        "messages": len(messages),
        "wall_s": rounded(wall),
        "events_per_s": rounded(total / wall, 0),
        "controller_cpu_s": rounded(cpu),
        "events_per_cpu_s": rounded(total / cpu, 0) if cpu > 0 else None,
        "db_cpu_s": rounded(db_cpu) if db_cpu is not None else None,
        "events_per_db_cpu_s": rounded(total / db_cpu, 0) if db_cpu else None,
        "acked": len(latencies),
        "p50_ack_s": rounded(percentile(latencies, 50)) if latencies else None,
        "p99_ack_s": rounded(percentile(latencies, 99)) if latencies else None,
    }


def run(clusters: int, events: int, shapes: tuple[int, ...], trials: int,
        store: str | None, verbose: bool, keep: bool) -> dict[str, Any]:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="loa-bench-intake-"))
    try:
        with bench_database(store, work) as store_url:
            rig = IntakeRig(work, clusters, store_url, verbose)
            try:
                return _measure(rig, clusters, events, shapes, trials, store_url)
            finally:
                rig.close()
    finally:
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _measure(rig: IntakeRig, clusters: int, events: int, shapes: tuple[int, ...],
             trials: int, store_url: str) -> dict[str, Any]:  # fmt: skip
    by_shape: dict[str, Any] = {}
    for per_message in shapes:
        runs: list[dict[str, Any]] = []
        raws: list[float] = []
        for trial in range(1, trials + 1):
            outbox = f"t{trial}-{per_message}x-{uuid.uuid4().hex[:6]}"
            messages = make_messages(rig.keys, outbox, events, per_message)
            result = one_trial(rig, messages, outbox)
            raw_s = raw_round(rig.broker.port, messages)
            result["raw_messages_per_s"] = rounded(len(messages) / raw_s, 0)
            raws.append(len(messages) / raw_s)
            runs.append(result)
            say(f"{per_message} event(s) per message, trial {trial}/{trials}: "
                f"{result['events']} events stored in {result['wall_s']:.2f} s "
                f"({result['events_per_s']:.0f}/s, {result['events_per_cpu_s']:.0f} per "
                f"controller CPU-second), ack p99 {result['p99_ack_s']} s; raw broker "
                f"{result['raw_messages_per_s']:.0f} messages/s")  # fmt: skip
            rig.controller.wait_quiet(timeout_s=60)

        def med(key: str, rows: list[dict[str, Any]] = runs) -> float | None:
            values = [r[key] for r in rows if r[key] is not None]
            return rounded(statistics.median(values), 3) if values else None

        by_shape[str(per_message)] = {
            "events_per_message": per_message,
            "events_per_s": med("events_per_s"),
            "events_per_cpu_s": med("events_per_cpu_s"),
            "controller_cpu_s": med("controller_cpu_s"),
            "db_cpu_s": med("db_cpu_s"),
            "events_per_db_cpu_s": med("events_per_db_cpu_s"),
            "p50_ack_s": med("p50_ack_s"),
            "p99_ack_s": med("p99_ack_s"),
            "raw_messages_per_s": rounded(statistics.median(raws), 0),
            "trials": runs,
        }
    headline = by_shape[str(shapes[0])]
    engine = make_url(store_url).get_backend_name()
    target_ok = (headline["events_per_cpu_s"] or 0) >= TARGET_EVENTS_PER_CPU_S
    return {
        "bench": "intake",
        "store": engine,
        "clusters": clusters,
        "events_per_trial": events,
        "window": WINDOW,
        "ack_delay_s": ACK_DELAY_S,
        "events_per_s": headline["events_per_s"],
        "events_per_cpu_s": headline["events_per_cpu_s"],
        "p99_ack_s": headline["p99_ack_s"],
        "events_per_db_cpu_s": headline["events_per_db_cpu_s"],
        "shapes": by_shape,
        "targets": [target(
            f"events stored per controller CPU-second, {shapes[0]} event(s) per message",
            headline["events_per_cpu_s"], TARGET_EVENTS_PER_CPU_S,
            f"≥ {TARGET_EVENTS_PER_CPU_S:,.0f}", at_most=False,
        )],
        "pass": target_ok,
    }


SHAPE_HEADER = [
    "events per message", "events/s", "events per controller CPU-second", "controller CPU",
    "ack p50", "ack p99", "raw broker, messages/s", "Loa ÷ raw (messages)",
]


def markdown(result: dict[str, Any], run_line: str, broker_line: str) -> str:
    r = result
    trials = len(next(iter(r["shapes"].values()))["trials"])
    rows = []
    for shape in r["shapes"].values():
        messages_ratio = (shape["events_per_s"] / shape["events_per_message"]
                          / shape["raw_messages_per_s"])  # fmt: skip
        rows.append([
            str(shape["events_per_message"]), f"{shape['events_per_s']:,.0f}",
            f"{shape['events_per_cpu_s']:,.0f}", f"{shape['controller_cpu_s']:.2f} s",
            f"{shape['p50_ack_s']:.3f} s", f"{shape['p99_ack_s']:.3f} s",
            f"{shape['raw_messages_per_s']:,.0f}", f"{messages_ratio:.2f} ×",
        ])  # fmt: skip
    per_trial = []
    for shape in r["shapes"].values():
        for n, t in enumerate(shape["trials"], 1):
            per_trial.append([
                str(shape["events_per_message"]), str(n), str(t["events"]), f"{t['wall_s']:.2f} s",
                f"{t['events_per_s']:,.0f}", f"{t['controller_cpu_s']:.2f} s",
                f"{t['events_per_cpu_s']:,.0f}", f"{t['p99_ack_s']:.3f} s",
                f"{t['raw_messages_per_s']:,.0f}", f"{t['acked']} of {t['messages']}",
            ])  # fmt: skip
    checks = [[t["what"], t["target"], f"{t['value']:,.0f}", pass_fail(t["pass"])]
              for t in r["targets"]]  # fmt: skip
    server = ""
    if any(shape.get("events_per_db_cpu_s") for shape in r["shapes"].values()):
        server = "\n" + wrap(
            "The database server's own CPU (every process of its `postgres` user on this "
            "machine, user + system, from /proc), over the same time, medians: " + "; ".join(
                f"{shape['events_per_message']} event(s) per message, "
                f"{shape['db_cpu_s']:.2f} s, {shape['events_per_db_cpu_s']:,.0f} events per "
                "server CPU-second"
                for shape in r["shapes"].values() if shape.get("events_per_db_cpu_s")
            ) + ": what one core of the server takes in for one controller (an upper bound: "
            "it includes the bench's own reads of the newest event id, one primary-key "
            "lookup every 2 ms at most).") + "\n"
    store = {"sqlite": "SQLite (a file on the bench's disk)",
             "postgresql": "PostgreSQL (a database made for the run on the server given)"}
    return f"""## Status intake: events one controller process stores and acknowledges

{run_line}
One real controller process (`loa-controller run`) with a fleet of {r['clusters']} clusters,
each cluster's key registered, its store {store.get(r['store'], r['store'])}. The bench
plays the fleet: event messages signed with each cluster's own key (as the agent seals
them), made before the clock starts and published at QoS 1 round-robin over the
clusters by one paho client, with at most {r['window']:,} events published and not yet
stored (what waits beyond the intake's queue bound is dropped and sent again by the
agents 10 s later: a bench that outran the store would time resends).
{r['events_per_trial']:,} events a trial; median of {trials} trials. `events/s`: events
stored (read from the store) over the time from the first publication to the last one
stored. Per CPU-second: the same events over the controller
process's CPU time (user + system) in that time: what one core of the controller takes
in, whatever else the machine is doing. Ack: from a message's publication to the signed
ack command naming its last event; acks wait up to {r['ack_delay_s']:.1f} s so that one ack
covers a cluster's burst, by design. Raw broker: the same payloads (on other topics) to
one bare paho subscriber in a process of its own, in the same run; the last column is
Loa's messages stored per second over the raw broker's messages carried per second.
{broker_line}

{table(SHAPE_HEADER, rows)}
{server}
{table(["target", "limit", "measured", "result"], checks)}

Overall: {pass_fail(r["pass"])}.

Per trial:

{table(["events per message", "trial", "events", "wall", "events/s", "controller CPU",
        "per CPU-second", "ack p99", "raw messages/s", "acked"], per_trial)}
"""
