"""Simulated fleets for the benchmarks: worker processes of real agents, or of bare paho.

A fleet is spread over worker processes (started with "spawn": nothing of the parent's
threads or sockets is inherited), by default one per core so that every core works and
no more (`default_per_process`), at most MAX_PER_PROCESS members each. Measured on the
2-core machine, urgent bench, 1000 agents: 8 processes of 125 agents used 1.19-1.21 ms
of CPU per agent, 4 of 250 0.96-1.03 ms, 2 of 500 0.79-0.84 ms; the difference is the
cost of switching between more interpreters than there are cores, which a real fleet of
one box per cluster does not pay. In each process the members' connections share one
`NetworkLoop` (one network thread, one epoll selector: scripts/sim_network.py), as a
thousand boxes on poles would each have their own network stack rather than a thread
fighting hundreds of others for one interpreter.

- An *agent worker* runs real `device_agent.agent.Agent`s with the `null` output, their
  workers on one `WorkerPool` (scripts/sim_workers.py), each on its own `FleetLink` (an
  `MqttLink` on the shared loop) wrapped in a `MeteredLink`, which counts the bytes of
  every MQTT PUBLISH the agent receives and notes, with `time.time()`, each status event
  the agent sends (received, delivered, playing, ...). The notes go to the parent in
  batches.
- A *raw worker* runs bare paho clients on the same kind of loop, subscribed to the same
  number of topics, the baseline: it notes when each subscriber has received every
  message of a round.

The parent side (`Workers`) starts the processes, gathers the notes into `Sightings`,
asks the workers for their byte counters and stops them. `RawBaseline` publishes a
round with a bare paho client and times it until the last subscriber has it all.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import queue
import re
import resource
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sim_live import SharedLiveRunner
from sim_network import FleetLink, NetworkLoop

from protocol.mqtt import BrokerAddress, ConnectionListener, Handler, MqttLink

# Most members one worker process runs (an agent holds a few descriptors: its socket, its
# SQLite file and WAL, a download's file; see allow_open_files).
MAX_PER_PROCESS = 500
# Descriptors one worker may hold per member, and for the process itself.
FILES_PER_MEMBER = 4
FILES_PER_PROCESS = 64
# Threads of each agent worker's pool; 0: the steps run on the network loop's thread.
POOL_THREADS = 0
REPORT_EVERY_S = 0.02

log = logging.getLogger("bench")

# --- counting what an agent receives --------------------------------------------------------


def publish_packet_bytes(topic: str, payload_len: int, qos: int = 1) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH packet: fixed header, topic, packet id, payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


METER_FIELDS = (
    "play_msgs", "play_bytes", "content_msgs", "content_bytes", "control_msgs",
    "control_bytes", "requests",
)  # fmt: skip


@dataclass
class Meter:
    """What one agent received: play commands (they carry the audio's manifest), audio
    chunks, and everything else (acks, membership, stops); and chunk requests it sent."""

    play_msgs: int = 0
    play_bytes: int = 0
    content_msgs: int = 0
    content_bytes: int = 0
    control_msgs: int = 0
    control_bytes: int = 0
    requests: int = 0

    def snapshot(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in METER_FIELDS)


# Commands are compact JSON (pydantic), events canonical JSON in their signed envelope
# (keys sorted): the fields the meter needs are found without parsing the whole payload,
# which would cost the agents' processes as much as a good part of what is measured.
_PLAY_KIND = b'"kind":"play"'
_EVENT_KIND = re.compile(rb'"kind":"([a-z_]+)"')
_EVENT_PLAY = re.compile(rb'"play_id":"([^"\\]+)"')
# Where each event object starts: "at" is the first of an event's keys, sorted.
_EVENT_SPLIT = re.compile(rb'(?=\{"at":)')


EventNote = Callable[[str, str, str, float], None]  # (play_id, kind, cluster, time)


class MeteredLink:
    """A Link that counts what its agent receives and notes the events it sends."""

    def __init__(self, inner: MqttLink, cluster: str, note: EventNote) -> None:
        self._inner = inner
        self._cluster = cluster
        self._note = note
        self.meter = Meter()

    def _count(self, topic: str, payload: bytes) -> None:
        size = publish_packet_bytes(topic, len(payload))
        meter = self.meter
        if topic.endswith("/content"):
            meter.content_msgs += 1
            meter.content_bytes += size
        elif topic.endswith("/command") and _PLAY_KIND in payload:
            meter.play_msgs += 1
            meter.play_bytes += size
        else:
            meter.control_msgs += 1
            meter.control_bytes += size

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        def counted(topic: str, payload: bytes) -> None:
            self._count(topic, payload)
            handler(topic, payload)

        self._inner.subscribe(topic_filter, counted, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if topic.endswith("/event"):  # one event, or an array of several
            at = time.time()
            for one in _EVENT_SPLIT.split(payload):
                kind = _EVENT_KIND.search(one)
                if kind is not None:
                    play = _EVENT_PLAY.search(one)
                    play_id = play.group(1).decode() if play else "None"
                    self._note(play_id, kind.group(1).decode(), self._cluster, at)
        elif topic.endswith("/request"):
            self.meter.requests += 1
        self._inner.publish(topic, payload, qos, retain)

    def unsubscribe(self, topic_filter: str) -> None:
        self._inner.unsubscribe(topic_filter)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._inner.add_connection_listener(listener)

    def start(self) -> None:
        self._inner.start()

    def stop(self) -> None:
        self._inner.stop()

    def wait_connected(self, timeout: float) -> bool:
        return self._inner.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        return self._inner.connected

    @property
    def session_present(self) -> bool:
        return self._inner.session_present


# --- the worker processes -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    kind: Literal["agents", "raw"]
    index: int
    broker: BrokerAddress
    # agents: (cluster id, its groups); raw: (subscriber id, the topic filters it takes)
    members: list[tuple[str, list[str]]]
    data_dir: str = ""
    public_key: str = ""
    shared_cache: bool = False
    verbose: bool = False
    ready_timeout_s: float = 60.0
    # agents: each on a worker thread of its own (`OwnThread`, the pole's timer path)
    # instead of the process's shared pool
    own_threads: bool = False


class _Outgoing:
    """The worker's side of its pipe: replies at once, notes in batches.

    note() is called on the agents' own threads, in the middle of what is measured, so
    it only appends to a deque (no lock); a flusher thread sends the batches."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._notes: deque[tuple[str, str, str, float]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name="notes", daemon=True)
        self._thread.start()

    def note(self, key: str, kind: str, who: str, at: float) -> None:
        self._notes.append((key, kind, who, at))

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _flush(self) -> None:
        notes = []
        while self._notes:
            notes.append(self._notes.popleft())
        if notes:
            self.send(("notes", notes))

    def _flush_loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            with contextlib.suppress(OSError):
                self._flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        with contextlib.suppress(OSError):
            self._flush()


def _setup_worker_logging(spec: WorkerSpec) -> None:
    logging.basicConfig(
        level=logging.INFO if spec.verbose else logging.WARNING,
        format=f"%(asctime)s {spec.kind}-{spec.index} %(levelname)s %(name)s: %(message)s",
    )


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def agent_worker(spec: WorkerSpec, conn: Connection) -> None:
    """Run spec.members as real agents until the parent says stop (or goes away)."""
    from sim_workers import WorkerPool

    from device_agent.agent import Agent
    from device_agent.cache import Cache
    from device_agent.identity import AgentIdentity
    from protocol.clock import SystemClock
    from protocol.signing import Verifier, load_public_key

    _setup_worker_logging(spec)
    out = _Outgoing(conn)
    verifier = Verifier(load_public_key(Path(spec.public_key)))
    data = Path(spec.data_dir)
    shared = Cache(data / "shared-cache", durable=False) if spec.shared_cache else None
    clock = SystemClock()
    # The agents' steps run on the network loop's thread, right after it has read what
    # arrived: no thread switch between a socket and its agent (POOL_THREADS = 0).
    pool = WorkerPool(POOL_THREADS, f"agents-{spec.index}")
    network = NetworkLoop(
        f"mqtt-{spec.index}", after_reads=pool.run_ready if POOL_THREADS == 0 else None
    )
    if POOL_THREADS == 0:
        pool.notify(network.wake)
    network.start()
    pool.start()
    agents: list[Agent] = []
    links: dict[str, MeteredLink] = {}
    live = LiveMeter()
    runner = SharedLiveRunner(f"live-{spec.index}")
    for cid, groups in spec.members:
        # The key the rig made in the agent's folder and registered (register_fleet_keys).
        identity = AgentIdentity.load_or_create(data / cid)
        started = clock.now()
        inner = FleetLink(
            spec.broker, f"loa-agent-{cid}", will=identity.will(cid, started),
            clean_session=True, loop=network,
        )
        link = links[cid] = MeteredLink(inner, cid, out.note)
        agents.append(Agent(
            cid, link, verifier, metered_output(live, cid, out.note), clock, data / cid,
            groups=groups,
            durable=False,  # a simulated fleet on one disk: no fsync per event
            cache=shared, pool=None if spec.own_threads else pool, identity=identity,
            live_runner=runner,
        ))  # fmt: skip
    for agent in agents:
        agent.start()
    _wait_until(lambda: all(a.ready() for a in agents), spec.ready_timeout_s)
    out.send(("ready", spec.index, sum(1 for a in agents if a.ready()), len(agents)))

    def counters() -> dict[str, tuple[int, ...]]:
        return {cid: link.meter.snapshot() for cid, link in links.items()}

    def stop(agent: Agent) -> None:
        # paho's loop_stop() can race its own thread's exit (AttributeError): not ours.
        with contextlib.suppress(Exception):
            agent.stop(2.0)

    def store(content: str, chunk_size: int, tag: str) -> tuple[float, float]:
        return store_copies(Path(content), chunk_size, data / "store" / tag,
                            [cid for cid, _groups in spec.members])  # fmt: skip

    try:
        _serve(conn, out, spec.index,
               {"counters": counters, "store": store, "live": live.report,
                "timers": lambda at: plain_timers(at, len(spec.members))})  # fmt: skip
    finally:
        with ThreadPoolExecutor(16) as stopping:
            list(stopping.map(stop, agents))
        runner.stop()
        pool.stop()
        network.stop()
        out.close()


#: The synthetic live packets of `bench.py live`: the capture time (time.time()) and the
#: packet's number, then padding to the size of a 20 ms Opus packet at 24 kb/s.
LIVE_PACKET = struct.Struct(">dI")
#: Latency histogram bins (ms) kept by the live meter.
LIVE_BINS = 20_000


class LiveMeter:
    """The live packets the agents of one worker handed to their outputs: per agent how
    many, a histogram of capture → hand-over latencies, and per packet the earliest and
    latest hand-over across these agents (the spread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handed: dict[str, int] = {}
        self.histogram = [0] * LIVE_BINS
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def take(self, cid: str, packets: Sequence[bytes]) -> None:
        at = time.time()
        count = 0
        with self.lock:
            for packet in packets:
                if len(packet) < LIVE_PACKET.size:
                    continue  # a silence packet: a gap
                captured, number = LIVE_PACKET.unpack_from(packet)
                count += 1
                ms = min(LIVE_BINS - 1, max(0, int((at - captured) * 1000)))
                self.histogram[ms] += 1
                if number not in self.first or at < self.first[number]:
                    self.first[number] = at
                if number not in self.last or at > self.last[number]:
                    self.last[number] = at
            self.handed[cid] = self.handed.get(cid, 0) + count

    def report(self) -> dict[str, Any]:
        with self.lock:
            out = {
                "handed": dict(self.handed), "histogram": list(self.histogram),
                "first": dict(self.first), "last": dict(self.last),
            }
            self.handed.clear()
            self.histogram = [0] * LIVE_BINS
            self.first.clear()
            self.last.clear()
        return out


class _MeteredSink:
    def __init__(self, meter: LiveMeter, cid: str) -> None:
        self.meter = meter
        self.cid = cid

    def write(self, packets: Sequence[bytes]) -> None:
        self.meter.take(self.cid, packets)

    def close(self) -> str | None:
        return None


def metered_output(meter: LiveMeter, cid: str, note: EventNote | None = None) -> Any:
    """The null output, its live sink metered (the agent's output in the fleet benches);
    with note, each play it is handed noted as (play id, "output", cluster, time.time())
    before it starts (the player's label ends with the play id)."""
    from device_agent.output import NullBackend, PlayOutcome

    class MeteredNull(NullBackend):
        def play(self, items: list[Path], duration_s: float, label: str,
                 stop: threading.Event, volume: int = 100) -> PlayOutcome:  # fmt: skip
            if note is not None:
                note(label.rsplit(" ", 1)[-1], "output", cid, time.time())
            return super().play(items, duration_s, label, stop, volume)

        def open_live(self, label: str, pre_skip: int, volume: int = 100) -> _MeteredSink:
            return _MeteredSink(meter, cid)

    return MeteredNull()


def plain_timers(at: float, count: int) -> list[float]:
    """The raw yardstick of `bench.py spread`: count threads, each waiting until `at`
    (time.time()) the way an agent's own worker thread waits for its next step (a
    SimpleQueue's get with a timeout: device_agent.workers.OwnThread), then noting
    time.time(). Returns when they have all woken: their wake-up times."""
    woke = [math.nan] * count

    def wait(i: int) -> None:
        with contextlib.suppress(queue.Empty):
            queue.SimpleQueue[None]().get(timeout=max(0.0, at - time.time()))
        woke[i] = time.time()

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, at - time.time()) + 60.0)
    return woke


def store_copies(content: Path, chunk_size: int, folder: Path, names: list[str]
                 ) -> tuple[float, float]:  # fmt: skip
    """Write a copy of content for each name to a new file in folder, chunk_size bytes a
    write, hashing the bytes as they go: what every agent's cache does with a bulletin,
    without the network. Seconds taken and CPU seconds this process used."""
    data = memoryview(content.read_bytes())
    folder.mkdir(parents=True)
    started, cpu = time.monotonic(), time.process_time()
    for name in names:
        digest = hashlib.sha256()
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for at in range(0, len(data), chunk_size):
                piece = data[at : at + chunk_size]
                os.pwrite(fd, piece, at)
                digest.update(piece)
        finally:
            os.close(fd)
    return time.monotonic() - started, time.process_time() - cpu


class _RawSubscriber:
    """A bare paho client counting the messages of the current round."""

    def __init__(self, broker: BrokerAddress, client_id: str, filters: list[str],
                 done: Callable[[str, str, float], None]) -> None:  # fmt: skip
        self.client_id = client_id
        self._filters = filters
        self._done = done
        self._lock = threading.Lock()
        self.round = ""
        self.expected = 0
        self.got = 0
        self.subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )  # fmt: skip
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(broker.host, broker.port, keepalive=30)
        self.client = client

    def _on_connect(self, client: paho.Client, *_args: Any) -> None:
        client.subscribe([(f, 1) for f in self._filters])

    def _on_subscribe(self, *_args: Any) -> None:
        self.subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, _msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.got += 1
            finished = self.got == self.expected
        if finished:
            self._done(self.round, self.client_id, time.time())

    def expect(self, round_id: str, messages: int) -> None:
        with self._lock:
            self.round, self.expected, self.got = round_id, messages, 0


def raw_worker(spec: WorkerSpec, conn: Connection) -> None:
    """Run spec.members as bare paho subscribers until the parent says stop."""
    _setup_worker_logging(spec)
    out = _Outgoing(conn)

    def done(round_id: str, who: str, at: float) -> None:
        out.note(round_id, "all", who, at)

    subs = [_RawSubscriber(spec.broker, sid, filters, done) for sid, filters in spec.members]
    network = NetworkLoop(f"mqtt-{spec.index}")
    network.start()
    for sub in subs:
        network.add(sub.client, lambda: False)
    _wait_until(lambda: all(s.subscribed.is_set() for s in subs), spec.ready_timeout_s)
    out.send(("ready", spec.index, sum(1 for s in subs if s.subscribed.is_set()), len(subs)))

    def expect(round_id: str, messages: int) -> int:
        for sub in subs:
            sub.expect(round_id, messages)
        return len(subs)

    try:
        _serve(conn, out, spec.index, {"expect": expect})
    finally:
        network.stop()
        out.close()


def _serve(
    conn: Connection, out: _Outgoing, index: int, handlers: dict[str, Callable[..., Any]]
) -> None:
    """Answer the parent's requests until it says stop or goes away."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind, request_id, *args = message
        if kind == "stop":
            return
        out.send(("reply", request_id, index, handlers[kind](*args)))


# --- the parent's side --------------------------------------------------------------------


class Sightings:
    """When each (key, kind) was first seen for each member: play events, raw rounds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seen: dict[tuple[str, str], dict[str, float]] = {}

    def add(self, key: str, kind: str, who: str, at: float) -> None:
        with self._cond:
            per = self._seen.setdefault((key, kind), {})
            if who not in per:
                per[who] = at
                self._cond.notify_all()

    def of(self, key: str, kind: str) -> dict[str, float]:
        with self._cond:
            return dict(self._seen.get((key, kind), {}))

    def wait(self, key: str, kinds: str | tuple[str, ...], count: int, timeout: float
             ) -> dict[str, float]:  # fmt: skip
        """Members seen with any of kinds (earliest), once count have been or at timeout."""
        wanted = (kinds,) if isinstance(kinds, str) else kinds
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                merged: dict[str, float] = {}
                for kind in wanted:
                    for who, at in self._seen.get((key, kind), {}).items():
                        merged[who] = min(at, merged.get(who, at))
                left = deadline - time.monotonic()
                if len(merged) >= count or left <= 0:
                    return merged
                self._cond.wait(min(left, 1.0))


@dataclass
class _Worker:
    spec: WorkerSpec
    process: Any  # multiprocessing.process.BaseProcess (spawn context)
    conn: Connection
    ready: tuple[int, int] | None = None
    alive: bool = True


@dataclass
class _Replies:
    cond: threading.Condition = field(default_factory=threading.Condition)
    by_request: dict[int, dict[int, Any]] = field(default_factory=dict)


def default_per_process(members: int) -> int:
    """Members per worker process when not told: one process per core this process may
    use (more would only add switches between processes, each with its own interpreter
    and caches, that a real fleet of one box per cluster does not have), within
    MAX_PER_PROCESS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_PER_PROCESS, math.ceil(members / max(1, cores or 1))))


def allow_open_files(per_process: int) -> None:
    """Raise this process's soft limit of open files (the workers inherit it) to what
    per_process members need; ValueError naming the limit if the hard one is lower."""
    need = FILES_PER_PROCESS + FILES_PER_MEMBER * per_process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ValueError(
            f"--per-process {per_process} needs about {need} open files per process; this "
            f"system allows {hard} (ulimit -Hn): use --per-process "
            f"{max(1, (hard - FILES_PER_PROCESS) // FILES_PER_MEMBER)} or less"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def check_per_process(per_process: int | None) -> None:
    """ValueError unless per_process is None (the default layout) or 1 to MAX_PER_PROCESS."""
    if per_process is not None and not 1 <= per_process <= MAX_PER_PROCESS:
        raise ValueError(f"--per-process: 1 to {MAX_PER_PROCESS}")


def split_members(members: list[tuple[str, list[str]]], per_process: int
                  ) -> list[list[tuple[str, list[str]]]]:  # fmt: skip
    """members in ceil(n / per_process) processes of nearly equal size."""
    check_per_process(per_process)
    parts = max(1, math.ceil(len(members) / per_process))
    return [members[i::parts] for i in range(parts)]


class Workers:
    """Worker processes of one kind, their notes gathered into sightings."""

    def __init__(self, sightings: Sightings, what: str) -> None:
        self.sightings = sightings
        self.what = what
        self._workers: list[_Worker] = []
        self._replies = _Replies()
        self._requests = 0
        self._stopping = threading.Event()
        self._collector: threading.Thread | None = None

    @property
    def processes(self) -> int:
        return len(self._workers)

    def pids(self) -> list[int]:
        return [int(w.process.pid) for w in self._workers if w.process.pid is not None]

    def start(self, specs: list[WorkerSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        for spec in specs:
            target = agent_worker if spec.kind == "agents" else raw_worker
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(
                target=target, args=(spec, child_end), name=f"bench-{spec.kind}-{spec.index}",
                daemon=True,
            )  # fmt: skip
            process.start()
            child_end.close()
            self._workers.append(_Worker(spec, process, parent_end))
        self._collector = threading.Thread(target=self._collect, name="collector", daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        while not self._stopping.is_set():
            conns = [w.conn for w in self._workers if w.alive]
            if not conns:
                return
            for conn in wait(conns, timeout=0.2):
                assert isinstance(conn, Connection)
                worker = next(w for w in self._workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    worker.alive = False
                    continue
                self._dispatch(worker, message)

    def _dispatch(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "notes":
            for key, note_kind, who, at in message[1]:
                self.sightings.add(key, note_kind, who, at)
        elif kind in ("ready", "reply"):
            with self._replies.cond:
                if kind == "ready":
                    worker.ready = (int(message[2]), int(message[3]))
                else:
                    self._replies.by_request.setdefault(message[1], {})[message[2]] = message[3]
                self._replies.cond.notify_all()

    def wait_ready(self, timeout: float) -> None:
        """Every worker has connected and subscribed all its members; else RuntimeError."""
        deadline = time.monotonic() + timeout
        with self._replies.cond:
            while not all(w.ready or not w.process.is_alive() for w in self._workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._replies.cond.wait(min(left, 0.5))
            states = [w.ready for w in self._workers]
        ready = sum(r[0] for r in states if r)
        total = sum(len(w.spec.members) for w in self._workers)
        if ready < total:
            raise RuntimeError(
                f"only {ready} of {total} {self.what} connected and subscribed within "
                f"{timeout:.0f} s (dead workers: "
                f"{sum(1 for w in self._workers if not w.process.is_alive())})"
            )

    def ask(self, kind: str, *args: Any, timeout: float = 30.0) -> list[Any]:
        """Send a request to every worker; their replies in worker order."""
        with self._replies.cond:
            self._requests += 1
            request = self._requests
        for w in self._workers:
            w.conn.send((kind, request, *args))
        deadline = time.monotonic() + timeout
        with self._replies.cond:
            while len(self._replies.by_request.get(request, {})) < len(self._workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.what}: no answer to {kind!r} within {timeout} s")
                self._replies.cond.wait(min(left, 0.5))
            replies = self._replies.by_request.pop(request)
        return [replies[i] for i in sorted(replies)]

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every worker to stop its members; end what has not exited by the timeout."""
        for w in self._workers:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(("stop", 0))
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
        for w in self._workers:
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
        self._stopping.set()
        if self._collector is not None:
            self._collector.join(2)
        for w in self._workers:
            w.conn.close()


class RawBaseline:
    """The broker alone: bare paho publishing rounds to bare paho subscribers."""

    def __init__(self, broker: BrokerAddress, workers: Workers, subscribers: int) -> None:
        self.workers = workers
        self.subscribers = subscribers
        self._rounds = 0
        self._connected = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-raw-publisher", clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )  # fmt: skip
        client.max_inflight_messages_set(200)  # as the controller's MqttLink
        client.max_queued_messages_set(0)
        client.on_connect = lambda *_a: self._connected.set()
        client.connect_async(broker.host, broker.port, keepalive=30)
        client.loop_start()
        self._client = client
        if not self._connected.wait(10):
            raise RuntimeError("the raw publisher could not connect")

    def round(self, messages: list[tuple[str, bytes]], timeout: float) -> list[float]:
        """Publish messages (QoS 1); each subscriber's seconds until it had them all."""
        self._rounds += 1
        round_id = f"raw-{self._rounds}"
        self.workers.ask("expect", round_id, len(messages))
        started = time.time()
        for topic, payload in messages:
            self._client.publish(topic, payload, qos=1)
        seen = self.workers.sightings.wait(round_id, "all", self.subscribers, timeout)
        return [at - started for at in seen.values()]

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def raw_filters(agent_groups: list[str]) -> list[str]:
    """What a raw subscriber takes: the same number of filters as an agent, under raw/."""
    filters = [f"raw/cluster/{{id}}/{channel}" for channel in ("command", "content", "membership")]
    for group in agent_groups:
        filters += [f"raw/group/{group}/command", f"raw/group/{group}/content"]
    return filters


def register_fleet_keys(specs: list[WorkerSpec], controller: Any) -> list[WorkerSpec]:
    """Make each simulated agent's key in its folder, as the agent would at its first
    start, and register them all with the controller (controller.main.Controller), as a
    manager approving them would: the agents then sign what the controller takes. The
    specs, to start the workers with."""
    from device_agent.identity import AgentIdentity

    keys = []
    now = controller.clock.now()
    for spec in specs:
        for cid, _groups in spec.members:
            identity = AgentIdentity.load_or_create(Path(spec.data_dir) / cid)
            keys.append((cid, identity.public_key, identity.key_id))
            # What the controller's answer to a join request would leave in the folder.
            identity.record("registered", now)
    controller.identities.register_keys(keys, by="bench", now=now)
    controller.enrolment.refresh()
    return specs


def fleet_specs(
    broker: BrokerAddress,
    groups: dict[str, list[str]],
    per_process: int | None,
    *,
    data_dir: Path,
    public_key: Path,
    shared_cache: bool,
    verbose: bool,
    own_threads: bool = False,
) -> tuple[list[WorkerSpec], list[WorkerSpec]]:
    """Agent workers for every cluster, and raw workers laid out the same way."""
    members = [(cid, groups[cid]) for cid in sorted(groups)]
    parts = split_members(members, per_process or default_per_process(len(members)))
    allow_open_files(max(len(part) for part in parts))
    ready_s = 30.0 + 0.05 * len(members)
    agent_specs = [
        WorkerSpec(
            kind="agents", index=i, broker=broker, members=part,
            data_dir=str(data_dir / f"worker-{i}"), public_key=str(public_key),
            shared_cache=shared_cache, verbose=verbose, ready_timeout_s=ready_s,
            own_threads=own_threads,
        )
        for i, part in enumerate(parts)
    ]  # fmt: skip
    raw_specs = [
        WorkerSpec(
            kind="raw", index=i, broker=broker, verbose=verbose, ready_timeout_s=ready_s,
            members=[
                (f"raw-{cid}", [f.format(id=f"raw-{cid}") for f in raw_filters(g)])
                for cid, g in part
            ],
        )
        for i, part in enumerate(parts)
    ]  # fmt: skip
    return agent_specs, raw_specs
