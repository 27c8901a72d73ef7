"""The embedded MQTT broker: amqtt in its own thread, for the demo and for tests.

Production points the controller and the agents at a real broker (mosquitto, or a
clustered EMQX/HiveMQ/VerneMQ). When none is given, the demo starts this one: amqtt
0.12 speaking MQTT 3.1.1 on a loopback port, anonymous, without persistence, with
QoS 0/1, retained messages and Last Wills, which is all the Loa protocol uses.

The broker runs on its own asyncio loop in a daemon thread, so the rest of the
controller stays plain threaded code. We open the listening socket ourselves and hand
each connection to amqtt as an "external" listener: that lets us bind port 0 and
learn the port the kernel picked, through amqtt's public API only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from types import TracebackType
from typing import Any

from protocol.mqtt import BrokerAddress

log = logging.getLogger(__name__)

LISTENER = "default"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

# amqtt logs every connection and packet at INFO; a fleet of 73 simulated agents
# would bury the demo's own output. Its warnings and errors still come through.
QUIET_LOGGERS = ("amqtt", "transitions")


def quiet_amqtt_logging() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class BrokerStartError(RuntimeError):
    """The embedded broker could not listen (port taken, amqtt failed to start)."""


@functools.cache
def _broker_class() -> Any:
    """amqtt's Broker, corrected where it departs from MQTT 3.1.1 in ways Loa relies on.

    Retained messages go only to their subscribers. amqtt 0.12 sends a connecting client
    the retained messages matching *any* client's subscriptions, whether or not this
    client holds them (MQTT-3.3.1-6 says: on a new subscription, to that subscriber).
    With every agent's state retained and the controller subscribed to all of them, each
    agent that connects would receive every other agent's state: quadratic traffic.

    Persistent sessions are kept. amqtt drops the session (subscriptions and queued
    QoS 1 messages) of any client that logged in anonymously as soon as it disconnects,
    even with clean_session=False; agents and the controller rely on that queue to get
    what was sent while they were away.
    """
    # Imported here: amqtt is a controller extra, and importing it pulls in a lot.
    from amqtt.broker import Broker

    class LoaBroker(Broker):  # type: ignore[misc] # amqtt is untyped
        async def _authenticate(self, session: Any, listener: Any) -> bool:
            allowed: bool = await super()._authenticate(session, listener)
            session.is_anonymous = False  # keep clean_session=False sessions (see above)
            return allowed

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self.subscriptions.get(subscription[0], [])
            if any(held.client_id == session.client_id for held, _qos in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return LoaBroker


class EmbeddedBroker:
    """An amqtt broker on host:port (port 0: a free port) served from a background thread.

    `start()` returns once the broker accepts connections; `stop()` closes every client
    connection and the listening socket. A stopped broker may be started again, on the
    same port it had; retained messages and sessions do not survive a stop.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None  # amqtt.broker.Broker (untyped)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()

    # --- public interface -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port; before the first start with port 0, it is not known yet."""
        if self._port == 0:
            raise RuntimeError("the embedded broker picks its port on start(); start it first")
        return self._port

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress(host=self.host, port=self.port)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start serving; block until the broker listens. Raise BrokerStartError on failure."""
        with self._lock:
            if self.running:
                return
            quiet_amqtt_logging()
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run_loop, args=(loop,), name="loa-embedded-broker", daemon=True
            )
            self._loop, self._thread = loop, thread
            thread.start()
            future = asyncio.run_coroutine_threadsafe(self._open(), loop)
            try:
                future.result(START_TIMEOUT_S)
            except Exception as exc:  # TimeoutError, OSError, amqtt's BrokerError
                self._halt_loop()
                raise BrokerStartError(
                    f"embedded MQTT broker could not listen on {self.host}:{self._port}: {exc}"
                ) from exc
            log.info("embedded MQTT broker listening on %s", self.url)

    def stop(self) -> None:
        """Disconnect every client and stop listening. Safe to call when not running."""
        with self._lock:
            loop = self._loop
            if loop is None or not self.running:
                self._halt_loop()
                return
            future = asyncio.run_coroutine_threadsafe(self._close(), loop)
            try:
                future.result(STOP_TIMEOUT_S)
            except Exception as exc:  # a failed shutdown must still end the thread
                log.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
            finally:
                self._halt_loop()
            log.info("embedded MQTT broker on %s stopped", self.url)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the broker's own thread --------------------------------------------------------

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
        self._loop = self._thread = None
        self._broker = self._server = None

    async def _open(self) -> None:
        config: dict[str, Any] = {
            "listeners": {LISTENER: {"type": "external"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        broker = _broker_class()(config, loop=asyncio.get_running_loop())
        await broker.start()
        self._broker = broker
        try:
            server = await asyncio.start_server(self._on_connection, self.host, self._port)
        except OSError:
            await broker.shutdown()
            self._broker = None
            raise
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        server, broker = self._server, self._broker
        if server is not None:
            server.close()
        if broker is not None:
            await broker.shutdown()
        if server is not None:
            await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter

        broker = self._broker
        if broker is None:
            writer.close()
            return
        try:
            await broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), LISTENER
            )
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("client connection ended abruptly: %s", exc)
        except Exception:
            # One client's broken session must not take the broker down.
            log.exception("embedded MQTT broker failed while serving a client")
        finally:
            if not writer.is_closing():
                writer.close()
