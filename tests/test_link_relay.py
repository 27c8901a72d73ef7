"""The emulated 4G link of the benches (scripts/link_relay.py), in front of a TCP echo
server: its delays, its order, its losses, its bandwidth per connection and direction,
and its window. Real sockets through the relay's own process; each check waits on what
arrives, with a deadline."""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from link_relay import Counts, Direction, LinkParams, LinkRelay  # scripts/: pytest's pythonpath

from protocol.mqtt import BrokerAddress

pytestmark = pytest.mark.slow


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[BrokerAddress]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield BrokerAddress(host="127.0.0.1", port=int(server.server_address[1]))
    server.shutdown()
    server.server_close()


@pytest.fixture
def relay_for(echo_server: BrokerAddress) -> Iterator[Any]:
    relays: list[LinkRelay] = []

    def start(params: LinkParams) -> LinkRelay:
        relay = LinkRelay(params, echo_server)
        relays.append(relay)
        relay.start()
        return relay

    yield start
    for relay in relays:
        relay.stop()


def _connect(relay: LinkRelay) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read(sock: socket.socket, size: int, deadline: float, at: list[tuple[int, float]]
          ) -> bytes:  # fmt: skip
    """size bytes from sock by the deadline, noting (bytes so far, time) as they come."""
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(data)} of {size} bytes came back in time"
        sock.settimeout(left)
        piece = sock.recv(65536)
        assert piece, "the relay closed the connection"
        data += piece
        at.append((len(data), time.monotonic()))
    return data


def test_link_model_delays_in_bounds_keeps_order_and_loses_whole_packets() -> None:
    params = LinkParams(delay_s=0.1, jitter_s=0.05, loss=0.0, seed=3)
    counts = Counts()
    model = Direction(params, random.Random(3), counts)
    previous = 0.0
    for k in range(200):
        now = 10.0 + 0.001 * k  # pieces read a millisecond apart: the draws overlap
        segments = model.plan(now, 100)
        assert len(segments) == 1
        at, size = segments[0]
        assert size == 100
        assert now + 0.05 <= at <= now + 0.15
        assert at >= previous  # never before the piece read before it
        previous = at
    # Pieces read a second apart: each its own draw, spread over the whole range.
    delays = [model.plan(20.0 + k, 1)[0][0] - (20.0 + k) for k in range(20)]
    assert min(delays) < 0.1 < max(delays)
    assert counts == Counts(bytes=200 * 100 + 20, packets=220, lost=0)

    lossy = Direction(LinkParams(loss=1.0), random.Random(1), lossy_counts := Counts())
    segments = lossy.plan(0.0, 3000)  # three packets: 1448, 1448, 104 bytes
    assert sum(size for _at, size in segments) == 3000
    assert all(0.05 + 0.2 + 0.05 <= at <= 0.15 + 0.2 + 0.15 for at, _size in segments)
    assert [at for at, _size in segments] == sorted(at for at, _size in segments)
    assert lossy_counts == Counts(bytes=3000, packets=3, lost=3)


def test_relay_delays_each_direction_and_keeps_the_order(relay_for: Any) -> None:
    relay = relay_for(LinkParams(delay_s=0.1, jitter_s=0.05, loss=0.0, seed=7))
    records = 60
    sent_at: list[float] = []
    arrivals: list[tuple[int, float]] = []
    with _connect(relay) as sock:

        def send() -> None:
            for i in range(records):
                sent_at.append(time.monotonic())
                sock.sendall(i.to_bytes(4, "big"))
                # Pieces a few milliseconds apart, so that the relay reads them apart and
                # draws each its own delay (this paces the load; it waits for nothing).
                time.sleep(0.004)

        sender = threading.Thread(target=send)
        sender.start()
        data = _read(sock, 4 * records, time.monotonic() + 10, arrivals)
        sender.join(10)
    assert [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)] == list(
        range(records)
    )  # in the order sent, whatever each piece drew
    for i, sent in enumerate(sent_at):
        back = next(at for size, at in arrivals if size >= 4 * (i + 1))
        # up 50-150 ms, then down 50-150 ms; the slack is for a busy machine
        assert 0.1 - 0.002 <= back - sent <= 0.3 + 0.2, (i, back - sent)
    stats = relay.stats()
    assert stats["connections"] == 1
    assert stats["up"]["bytes"] == stats["down"]["bytes"] == 4 * records
    assert stats["up"]["packets"] >= records // 3  # the relay did read the pieces apart
    assert stats["up"]["lost"] == stats["down"]["lost"] == 0


def test_relay_with_every_packet_lost_still_delivers_everything_an_rto_late(
    relay_for: Any,
) -> None:
    relay = relay_for(LinkParams(delay_s=0.1, jitter_s=0.05, loss=1.0, seed=1))
    payload = bytes(range(256)) * 12  # 3072 bytes: three packets
    at: list[tuple[int, float]] = []
    with _connect(relay) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        data = _read(sock, len(payload), started + 10, at)
    assert data == payload
    # Each way: a one-way delay, the RTO, and another one-way delay (at least 50 ms each).
    first = at[0][1] - started
    assert first >= 2 * (0.05 + 0.2 + 0.05) - 0.002
    stats = relay.stats()
    assert stats["up"] == {"bytes": 3072, "packets": 3, "lost": 3}
    assert stats["down"]["bytes"] == 3072
    assert stats["down"]["lost"] == stats["down"]["packets"] >= 3


# --- bandwidth ------------------------------------------------------------------------------


def test_link_model_paces_packets_through_a_token_bucket() -> None:
    # 8 Mbit/s: 1,000,000 bytes a second; the bucket starts full (burst_bytes).
    params = LinkParams(delay_s=0.05, jitter_s=0.0, loss=0.0, down_kbit=8000)
    model = Direction(params, random.Random(1), counts := Counts(), params.down_kbit)
    rate = 1_000_000
    size = 400_000
    segments = model.plan(0.0, size)
    assert sum(n for _at, n in segments) == size
    times = [at for at, _n in segments]
    assert times == sorted(times)
    # The last byte leaves once the rate has paid for what the full bucket did not.
    assert times[-1] == pytest.approx((size - params.burst_bytes) / rate + 0.05, abs=1e-6)
    # Written in slices about a quantum apart (50 ms: 34 packets), not one per packet.
    assert 0.9 * size / rate / params.quantum_s <= len(segments) <= 2 + size / rate / 0.02
    assert all(n % params.mss == 0 for _at, n in segments[:-1])
    gaps = [b - a for a, b in itertools.pairwise(times[1:-1])]  # full slices
    assert all(0.8 * params.quantum_s <= gap <= params.quantum_s + 1e-9 for gap in gaps), gaps
    # Read again later, after the link went idle: the bucket refilled, up to its depth.
    [(at, size_again)] = model.plan(10.0, params.burst_bytes)
    assert at == pytest.approx(10.05)
    assert size_again == params.burst_bytes
    assert counts.lost == 0
    # The other way, unlimited, delivers a read at once (after the delay).
    up = Direction(params, random.Random(1), Counts(), params.up_kbit)
    assert up.plan(0.0, size) == [(0.05, size)]


def test_link_model_retransmissions_spend_the_bandwidth_again() -> None:
    paced = LinkParams(delay_s=0.05, jitter_s=0.0, loss=0.0, down_kbit=800)
    lossy = LinkParams(delay_s=0.05, jitter_s=0.0, loss=0.5, down_kbit=800)
    size = 100 * lossy.mss
    clean = Direction(paced, random.Random(2), Counts(), 800).plan(0.0, size)
    counts = Counts()
    lost = Direction(lossy, random.Random(2), counts, 800).plan(0.0, size)
    assert [at for at, _n in lost] == sorted(at for at, _n in lost)
    assert sum(n for _at, n in lost) == size
    assert 30 <= counts.lost <= 70
    # Every lost packet crossed twice: the rest waited for its second crossing.
    assert lost[-1][0] >= clean[-1][0] + counts.lost * lossy.mss / 100_000 - 1e-6


def _transfer(relay: LinkRelay, size: int, deadline_s: float
              ) -> tuple[float, list[tuple[int, float]]]:  # fmt: skip
    """size bytes sent through the relay to the echo server and back: seconds from the
    first byte sent to the last one back, and (bytes so far, time) as they came."""
    payload = random.Random(size).randbytes(size)
    at: list[tuple[int, float]] = []
    with _connect(relay) as sock:
        started = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        data = _read(sock, size, started + deadline_s, at)
        sender.join(deadline_s)
    assert data == payload
    return at[-1][1] - started, at


@pytest.mark.parametrize("way", ["down", "up"])
def test_relay_carries_no_faster_than_the_bandwidth_of_each_direction(
    relay_for: Any, way: str
) -> None:
    kbit = 800.0  # 100,000 bytes a second, the other direction not limited
    rate = kbit * 1000 / 8
    params = LinkParams(
        delay_s=0.01, jitter_s=0.0, loss=0.0,
        down_kbit=kbit if way == "down" else 0.0, up_kbit=kbit if way == "up" else 0.0,
    )  # fmt: skip
    relay = relay_for(params)
    size = 150_000
    expected = (size - params.burst_bytes) / rate + 2 * params.delay_s
    elapsed, at = _transfer(relay, size, deadline_s=10 * expected)
    # Never faster than the rate; slower only by what a busy machine adds.
    assert expected - 0.005 <= elapsed <= 1.25 * expected + 0.2, (elapsed, expected)
    # The bytes came at the rate, not in a burst at the end: the middle half of them took
    # half the time at the rate.
    half = next(t for n, t in at if n >= size // 4), next(t for n, t in at if n >= 3 * size // 4)
    assert 0.4 * size / rate <= half[1] - half[0] <= 0.7 * size / rate
    stats = relay.stats()
    assert stats["up"]["bytes"] == stats["down"]["bytes"] == size


def test_relay_bandwidth_is_per_connection(relay_for: Any) -> None:
    """Two connections at once each get the whole rate: the box on each pole has its own
    radio."""
    kbit = 800.0
    params = LinkParams(delay_s=0.01, jitter_s=0.0, loss=0.0, down_kbit=kbit)
    relay = relay_for(params)
    size = 150_000
    expected = (size - params.burst_bytes) / (kbit * 1000 / 8) + 2 * params.delay_s
    results: list[float] = []
    threads = [
        threading.Thread(target=lambda: results.append(_transfer(relay, size, 10 * expected)[0]))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20 * expected)
    assert len(results) == 2
    assert all(expected - 0.005 <= r <= 1.25 * expected + 0.2 for r in results), results


def test_relay_stops_reading_a_sender_when_its_window_is_full(relay_for: Any) -> None:
    # 8 kbit/s up: 1,000 bytes a second leave; a window of 32 KB.
    params = LinkParams(delay_s=0.01, jitter_s=0.0, loss=0.0, up_kbit=8, window_bytes=32_768)
    relay = relay_for(params)
    payload = bytes(4 * 1024 * 1024)
    with _connect(relay) as sock:
        sender = threading.Thread(target=_send_until_closed, args=(sock, payload), daemon=True)
        sender.start()
        started = time.monotonic()
        # What the relay has read stops growing once its window is full (within a read of
        # up to 256 KB past it); without a window it would take the whole 4 MB.
        deadline = started + 10
        read, steady_since = -1, time.monotonic()
        while time.monotonic() - steady_since < 0.5:
            assert time.monotonic() < deadline, "the relay kept reading"
            now = relay.stats()["up"]["bytes"]
            if now > read + 2_000:  # more than the link lets through in the meantime
                read, steady_since = now, time.monotonic()
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert params.window_bytes <= read <= params.window_bytes + 256 * 1024 + 1_000 * elapsed
        sock.shutdown(socket.SHUT_RDWR)
        sender.join(5)


def _send_until_closed(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(payload)
