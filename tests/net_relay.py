"""A TCP relay in front of the broker, for tests that break a client's link on purpose.

`cut()` closes every connection through it, as a dropped 4G link or a dead broker would
(no MQTT DISCONNECT: the broker publishes the client's Last Will), and refuses new ones
until `restore()`. `hold_after(n)` lets n more bytes through towards the client and then
stops reading from the broker: what the broker sends after that waits in the broker and
in the kernel's buffers, as data in flight does on a slow link, until `cut()` drops it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from conftest import free_port

from protocol.mqtt import BrokerAddress


class Relay:
    def __init__(self, upstream: BrokerAddress) -> None:
        self._upstream = (upstream.host, upstream.port)
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.address = BrokerAddress(host="127.0.0.1", port=self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._blocked = False
        self._budget: int | None = None  # bytes still let through towards the client
        self._gate = threading.Event()  # set: a held pump may go on (and find its end)
        self.held = threading.Event()  # the budget is spent: the client gets nothing more
        self._accepting = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.address.host}:{self.address.port}"

    def hold_after(self, budget: int) -> None:
        """Let `budget` more bytes through towards the client, then hold the rest."""
        with self._lock:
            self._budget = budget
            self._gate.clear()
            self.held.clear()

    def cut(self) -> None:
        with self._lock:
            self._blocked = True
            self._budget = None
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)
        self._gate.set()

    def restore(self) -> None:
        with self._lock:
            self._blocked = False

    def close(self) -> None:
        self.cut()
        _close(self._listener)
        self._accepting.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                blocked = self._blocked
            if blocked:
                _close(client)
                continue
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(65536):
                hold = False
                if to_client:
                    data, hold = self._allowed(data)
                if data:
                    sink.sendall(data)
                if hold:
                    self._gate.wait()  # read nothing more from the broker until cut()
                    return
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)

    def _allowed(self, data: bytes) -> tuple[bytes, bool]:
        """What of data may go to the client, and whether to hold from now on."""
        with self._lock:
            if self._budget is None:
                return data, False
            allowed = data[: max(self._budget, 0)]
            self._budget -= len(allowed)
            if self._budget > 0:
                return allowed, False
        self.held.set()
        return allowed, True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected, or already shut
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
