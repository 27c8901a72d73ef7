"""An emulated 4G link for the benches: a TCP relay in front of the broker, in user space.

Linux netem is not on every kernel (and needs privileges), so the link is emulated by a
relay: the simulated agents (and the raw subscribers) connect to it, and it connects each
of them to the broker, delaying and "losing" what it forwards, per connection and in
both directions (towards the broker, "up", and towards the agent, "down"):

- delay: each piece of data the relay reads is delivered after a ONE-WAY delay drawn
  uniformly in [delay - jitter, delay + jitter] (4G: 100 ms ± 50 ms each way, so a
  round trip of 100 to 300 ms);
- order: as TCP delivers, a piece is never delivered before the one read before it on
  the same connection and direction (a late piece holds back those behind it);
- loss, as TCP sees it: what was read is cut into MSS-sized packets (1448 bytes), each
  lost with probability `loss`; a lost packet arrives one retransmission timeout later
  (Linux's minimum RTO, 200 ms) plus a fresh one-way delay, and, TCP delivering in order,
  everything after it on the connection waits for it. A retransmission is not lost again
  (at 1 % that would be one packet in 10,000). Which packets are lost is drawn as the
  gap to the next lost one (geometric), not packet by packet: the same odds, and a
  megabyte planned in a handful of steps;
- bandwidth, if asked for (`down_kbit`, `up_kbit`: each connection's own, as each box
  on a pole has its own radio): packets leave through a token bucket per connection and
  direction, filled at the rate and `burst_bytes` deep, and arrive a one-way delay after
  they left; a lost packet spends its size again when it is retransmitted. Packets
  leaving within `quantum_s` (50 ms) of each other are written in one go, when the last
  of them is due, so that the relay makes tens of writes a second per busy connection
  rather than one per packet;
- a window: one direction of a connection holds at most `window_bytes` (256 KB) read and
  not yet delivered; past that the relay stops reading from the sender until half is
  out, as a full TCP window would stop it, so the sender (the broker) keeps what it has
  not sent, and the relay's memory stays bounded;
- connecting is not delayed (the benches time what happens once every agent is
  connected).

The random draws are seeded (per connection and direction, from `seed` and the order the
connections arrived in), so a run given the same reads draws the same delays and losses.
The relay counts what it did: bytes, packets and losses per direction.

It runs in its own process (asyncio, started with "spawn"), so that it takes neither the
controller's interpreter nor its GIL, and its CPU can be read from /proc like the other
parts'. `LinkRelay` is the parent's side: start it, point clients at `address`, read
`stats()`, stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import random
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from protocol.mqtt import BrokerAddress

MSS = 1448  # bytes of TCP payload per packet (1500-byte MTU less IP and TCP headers)
MIN_RTO_S = 0.2  # Linux's minimum retransmission timeout (TCP_RTO_MIN)
READ_SIZE = 256 * 1024
LISTEN_BACKLOG = 4096
# With a bandwidth limit: the token bucket's depth (ten packets may leave at once after
# a pause), and how close in time packets must leave to be delivered in one write (at
# 2 Mbit/s, 50 ms is 8 packets: measured, 20 ms cost the relay a quarter more CPU).
BURST_BYTES = 10 * MSS
QUANTUM_S = 0.05
# Bytes one direction of a connection holds, read but not yet delivered, before the
# relay stops reading from the sender (as a full TCP window would stop it) until half
# of them are delivered.
WINDOW_BYTES = 256 * 1024


@dataclass(frozen=True)
class LinkParams:
    """A link's character. delay_s and jitter_s are one way, applied in each direction;
    down_kbit and up_kbit are each connection's bandwidth towards the client and towards
    the broker, in kbit/s (1000 bits a second; 0: not limited)."""

    delay_s: float = 0.100
    jitter_s: float = 0.050
    loss: float = 0.01
    rto_s: float = MIN_RTO_S
    mss: int = MSS
    seed: int = 1
    down_kbit: float = 0.0
    up_kbit: float = 0.0
    burst_bytes: int = BURST_BYTES
    window_bytes: int = WINDOW_BYTES
    quantum_s: float = QUANTUM_S

    def __post_init__(self) -> None:
        if not 0 <= self.jitter_s <= self.delay_s:
            raise ValueError("link jitter: 0 to the delay")
        if not 0 <= self.loss <= 1:
            raise ValueError("link loss: a probability, 0 to 1")
        if self.rto_s < 0 or self.mss < 1:
            raise ValueError("link RTO must be at least 0 and MSS at least 1")
        if self.down_kbit < 0 or self.up_kbit < 0:
            raise ValueError("link bandwidth: kbit/s, 0 (not limited) or more")
        if self.burst_bytes < self.mss or self.window_bytes < self.mss:
            raise ValueError("link burst and window: at least one packet (MSS) each")
        if not 0 <= self.quantum_s <= 1:
            raise ValueError("link quantum: 0 to 1 s")

    @property
    def limited(self) -> bool:
        return self.down_kbit > 0 or self.up_kbit > 0

    def describe(self) -> str:
        text = (
            f"{1000 * self.delay_s:.0f} ms ± {1000 * self.jitter_s:.0f} ms one way in each "
            f"direction, {100 * self.loss:g} % of {self.mss}-byte packets lost "
            f"(RTO {1000 * self.rto_s:.0f} ms)"
        )
        if self.limited:
            text += (
                f", {kbit_text(self.down_kbit)} down and {kbit_text(self.up_kbit)} up per "
                f"connection"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kbit_text(kbit: float) -> str:
    """A bandwidth as people write it: '2 Mbit/s', '500 kbit/s', 'unlimited'."""
    if kbit <= 0:
        return "unlimited"
    if kbit >= 1000:
        return f"{kbit / 1000:g} Mbit/s"
    return f"{kbit:g} kbit/s"


FOUR_G = LinkParams()


# --- the model ------------------------------------------------------------------------------


@dataclass
class Counts:
    """What one direction of the link carried, over every connection."""

    bytes: int = 0
    packets: int = 0
    lost: int = 0


@dataclass
class LinkCounts:
    connections: int = 0
    up: Counts = field(default_factory=Counts)  # towards the broker
    down: Counts = field(default_factory=Counts)  # towards the clients

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def counts_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the link carried between two readings of LinkRelay.stats()."""
    return {
        "connections": after["connections"] - before["connections"],
        **{
            way: {key: after[way][key] - before[way][key] for key in after[way]}
            for way in ("up", "down")
        },
    }


class Direction:
    """One direction of one connection: when each byte read is delivered.

    With a bandwidth (kbit > 0), packets leave through a token bucket: it fills at the
    rate, holds at most `burst_bytes`, and a packet leaves once the bucket holds its size
    (then spends it). A lost packet crosses the link twice: its retransmission spends its
    size again, which delays what follows. Packets leaving within `quantum_s` of each
    other are delivered together, when the last of them is due (never early)."""

    def __init__(self, params: LinkParams, rng: random.Random, counts: Counts,
                 kbit: float = 0.0) -> None:  # fmt: skip
        self.params = params
        self.rng = rng
        self.counts = counts
        self.rate = kbit * 1000 / 8  # bytes a second; 0: not limited
        self.last = 0.0  # when the latest piece planned is delivered
        self.tokens = float(params.burst_bytes)  # the bucket, full at the start...
        self.tokens_at = -math.inf  # ...as of this time
        self.until_loss = self._draw_gap()  # packets that pass before the next one lost

    def _one_way(self) -> float:
        p = self.params
        return self.rng.uniform(p.delay_s - p.jitter_s, p.delay_s + p.jitter_s)

    def _draw_gap(self) -> float:
        """Packets until the next lost one (geometric: each lost with probability loss)."""
        loss = self.params.loss
        if loss <= 0:
            return math.inf
        if loss >= 1:
            return 0
        return math.floor(math.log(1.0 - self.rng.random()) / math.log(1.0 - loss))

    def _leave(self, now: float, size: int) -> float:
        """size bytes enter the bucket's queue at now: when the last of them has left."""
        if self.rate <= 0:
            return now
        burst = self.params.burst_bytes
        start = max(now, self.tokens_at)
        tokens = min(burst, self.tokens + (start - self.tokens_at) * self.rate)
        wait = max(0.0, size - tokens) / self.rate
        self.tokens_at = start + wait
        self.tokens = tokens + wait * self.rate - size
        return self.tokens_at

    def _group(self) -> int:
        """Bytes of whole packets that leave together, within one quantum."""
        p = self.params
        if self.rate <= 0:
            return 1 << 62
        return max(1, int((self.rate * p.quantum_s) // p.mss)) * p.mss

    def plan(self, now: float, size: int) -> list[tuple[float, int]]:
        """size bytes read at now: (deliver at, bytes) segments, in order, times rising."""
        p = self.params
        delay = self._one_way()
        segments: list[tuple[float, int]] = []

        def deliver(at: float, nbytes: int) -> None:
            if nbytes <= 0:
                return
            at = max(at, self.last)  # in order: never before what was read earlier
            self.last = at
            if segments and segments[-1][0] == at:
                segments[-1] = (at, segments[-1][1] + nbytes)
            else:
                segments.append((at, nbytes))

        group = self._group()
        start = 0
        while start < size:
            nbytes = min(group, size - start)
            packets = -(-nbytes // p.mss)
            left = self._leave(now, nbytes)
            arrives = left + delay
            done = 0  # packets of this group planned
            while self.until_loss < packets - done:
                lost = done + int(self.until_loss)  # this packet is lost
                deliver(arrives, min(lost * p.mss, nbytes) - min(done * p.mss, nbytes))
                packet = min(p.mss, nbytes - lost * p.mss)
                self.counts.lost += 1
                if self.rate > 0:  # its retransmission crosses the link again
                    self.tokens -= packet
                deliver(arrives + p.rto_s + self._one_way(), packet)
                done = lost + 1
                self.until_loss = self._draw_gap()
            deliver(arrives, nbytes - min(done * p.mss, nbytes))
            self.until_loss -= packets - done
            self.counts.packets += packets
            start += nbytes
        self.counts.bytes += size
        return segments


# --- the relay (in its own process) ---------------------------------------------------------


class _Pipe:
    """One direction of one relayed connection: the data in flight, written when due.

    It holds at most about `window_bytes` read and not yet delivered: past that, it stops
    its source reading until half of them are out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, model: Direction) -> None:
        self.loop = loop
        self.model = model
        self.queue: deque[tuple[float, memoryview | None]] = deque()  # None: close after
        self.queued = 0  # bytes in the queue
        self.timer: asyncio.TimerHandle | None = None
        self.dest: asyncio.Transport | None = None
        self.source: _Side | None = None  # the side this pipe's data is read from

    def feed(self, data: bytes) -> None:
        segments = self.model.plan(self.loop.time(), len(data))
        view = memoryview(data)
        if len(segments) == 1:
            self.queue.append((segments[0][0], view))
        else:
            offset = 0
            for at, size in segments:
                self.queue.append((at, view[offset : offset + size]))
                offset += size
        self.queued += len(data)
        if self.queued > self.model.params.window_bytes and self.source is not None:
            self.source.hold("window")
        self._arm()

    def close_after(self) -> None:
        """Close the destination once everything read before has been delivered."""
        self.queue.append((max(self.model.last, self.loop.time()), None))
        self._arm()

    def connect(self, dest: asyncio.Transport) -> None:
        self.dest = dest
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.dest is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._due)

    def _due(self) -> None:
        self.timer = None
        dest = self.dest
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _at, data = self.queue.popleft()
            if dest is None or dest.is_closing():
                self.queue.clear()
                self.queued = 0
                return
            if data is None:
                dest.close()  # after what is buffered in the transport
            else:
                dest.write(data)
                self.queued -= len(data)
        if self.queued <= self.model.params.window_bytes // 2 and self.source is not None:
            self.source.release("window")
        self._arm()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


class _Side(asyncio.Protocol):
    """A socket of a relayed connection: what it reads goes into `outgoing`."""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe, relay: _Relay) -> None:
        self.outgoing = outgoing  # what this side reads, on its way to the other side
        self.incoming = incoming  # what the other side read, to be written here
        outgoing.source = self
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.holds: set[str] = set()  # why reading is paused: "window", "peer"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.relay.transports.add(transport)
        if self.holds:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.outgoing.feed(data)

    def eof_received(self) -> bool:
        self.outgoing.close_after()
        return True  # keep this side open until the other side is closed in turn

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.relay.transports.discard(self.transport)
        self.incoming.cancel()
        self.outgoing.close_after()

    def hold(self, reason: str) -> None:
        """Stop reading from this socket (for reason) until released."""
        if not self.holds and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.holds.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self.holds:
            return
        self.holds.discard(reason)
        if not self.holds and self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    # The other side's writes pile up: stop reading here until they drain.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.hold("peer")

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release("peer")


class _Relay:
    def __init__(self, params: LinkParams, target: tuple[str, int]) -> None:
        self.params = params
        self.target = target
        self.counts = LinkCounts()
        self.transports: set[asyncio.Transport] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def _direction(self, n: int, way: str) -> Direction:
        p = self.params
        rng = random.Random(f"{p.seed}/{n}/{way}")
        if way == "up":
            return Direction(p, rng, self.counts.up, p.up_kbit)
        return Direction(p, rng, self.counts.down, p.down_kbit)

    def accept(self) -> _Side:
        """A client connected: its side, and the connection to the broker on its way."""
        loop = asyncio.get_running_loop()
        n = self.counts.connections
        self.counts.connections += 1
        up = _Pipe(loop, self._direction(n, "up"))
        down = _Pipe(loop, self._direction(n, "down"))
        client = _Side(up, down, self)
        task = loop.create_task(self._connect(client, up, down))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return client

    async def _connect(self, client: _Side, up: _Pipe, down: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.target
        try:
            transport, server = await loop.create_connection(
                lambda: _Side(down, up, self), host, port
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        assert isinstance(transport, asyncio.Transport)
        client.peer, server.peer = server, client
        up.connect(transport)
        if client.transport is not None:
            down.connect(client.transport)


def relay_main(params: LinkParams, target: tuple[str, int], conn: Connection) -> None:
    """The relay process: serve until the parent says stop (or goes away)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(params, target, conn))


async def _serve(params: LinkParams, target: tuple[str, int], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    relay = _Relay(params, target)
    server = await loop.create_server(
        relay.accept, "127.0.0.1", 0, backlog=LISTEN_BACKLOG, reuse_address=True
    )
    port = int(server.sockets[0].getsockname()[1])
    stopped: asyncio.Future[None] = loop.create_future()

    def on_request() -> None:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            request = ("stop",)
        if request[0] == "stats":
            conn.send(("stats", relay.counts.as_dict()))
        elif not stopped.done():
            loop.remove_reader(conn.fileno())
            stopped.set_result(None)

    loop.add_reader(conn.fileno(), on_request)
    conn.send(("ready", port))
    await stopped
    server.close()
    for transport in list(relay.transports):
        transport.abort()
    for task in list(relay.tasks):
        task.cancel()
    conn.send(("stopped", relay.counts.as_dict()))


# --- the parent's side ----------------------------------------------------------------------


class LinkRelay:
    """The relay process, from the bench's side."""

    def __init__(self, params: LinkParams, target: BrokerAddress) -> None:
        self.params = params
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None  # multiprocessing.process.BaseProcess (spawn context)
        self.final: dict[str, Any] | None = None

    @property
    def address(self) -> BrokerAddress:
        """Where clients connect to reach the broker over the emulated link."""
        return BrokerAddress(host="127.0.0.1", port=self.port)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 20.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        self._process = ctx.Process(
            target=relay_main, args=(self.params, (self.target.host, self.target.port),
                                     child_end),
            name="bench-link-relay", daemon=True,
        )  # fmt: skip
        self._process.start()
        child_end.close()
        self._conn = parent_end
        reply = self._receive("ready", timeout)
        self.port = int(reply[1])

    def _receive(self, kind: str, timeout: float) -> tuple[Any, ...]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the link relay is not running")
        if not conn.poll(timeout):
            raise RuntimeError(f"the link relay did not answer {kind!r} within {timeout} s")
        try:
            reply: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"the link relay went away ({exc or 'EOF'})") from exc
        if reply[0] != kind:
            raise RuntimeError(f"the link relay answered {reply[0]!r}, not {kind!r}")
        return reply

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """Connections so far, and bytes, packets and losses per direction ("up": towards
        the broker; "down": towards the clients)."""
        with self._lock:
            if self.final is not None:
                return self.final
            if self._conn is None:
                raise RuntimeError("the link relay is not running")
            self._conn.send(("stats",))
            counts: dict[str, Any] = self._receive("stats", timeout)[1]
            return counts

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            process, self._process = self._process, None
        if conn is not None:
            with contextlib.suppress(EOFError, OSError, ValueError):
                conn.send(("stop",))
                if conn.poll(timeout):
                    reply = conn.recv()
                    if reply[0] == "stopped":
                        self.final = reply[1]
            conn.close()
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
