"""Composition root of `loa-agent run`: the one place the agent's real parts are built.

From the configuration: the cluster's identity (its key, made in data_dir at the first
start), the MQTT link (client id `loa-agent-<cluster>`, a persistent session so QoS 1
commands wait at the broker while the cluster is offline, and the retained "offline"
state, signed, as Last Will), the verifier of the controller's public key, the output
backend, the system clock, the enrolment token if the config names one, and the agent
that wires them together with the amplifier relay of the config's `relay:` section.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import signal
import threading
from collections.abc import Iterator
from datetime import datetime
from importlib import metadata
from pathlib import Path

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.identity import AgentIdentity
from device_agent.output import OutputBackend, make_backend
from protocol.clock import Clock, SystemClock
from protocol.l10n import _
from protocol.mqtt import MqttLink
from protocol.signing import Verifier, load_public_key

log = logging.getLogger(__name__)


def agent_version() -> str:
    try:
        return metadata.version("loa")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_link(config: AgentConfig, identity: AgentIdentity, started_at: datetime) -> MqttLink:
    cluster = config.cluster_id
    return MqttLink(
        config.broker(),
        f"loa-agent-{cluster}",
        will=identity.will(cluster, started_at),
        clean_session=False,
        keepalive=config.keepalive,
        ca_setting="broker_ca_file",
        fallbacks=config.fallback_brokers(),
    )


def read_token(path: Path | None) -> str | None:
    """The enrolment token in path (None: no file named); ValueError saying what to do."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(_(
            "enrolment_token_file {path}: cannot read it ({why}); copy the provisioning "
            "bundle's token there, or leave the setting out once the cluster is registered",
            path=path, why=exc.strerror,
        )) from None
    if not 16 <= len(token) <= 128 or not token.isprintable():
        raise ValueError(_(
            "enrolment_token_file {path}: does not hold a token (one line of 16 to 128 "
            "characters, as `loa-controller enrol token` prints it)", path=path,
        ))
    return token


def build_output(config: AgentConfig) -> OutputBackend:
    out = config.output
    return make_backend(
        out.kind, device=out.device or "alsa:default", out_dir=out.out_dir, ffmpeg=out.ffmpeg,
        opusdec=out.opusdec, aplay=out.aplay,
    )  # fmt: skip


def build_agent(config: AgentConfig, clock: Clock | None = None) -> Agent:
    """Every real part, from the configuration; raises ValueError naming what is wrong."""
    verifier = Verifier(load_public_key(config.controller_public_key))
    clock = clock or SystemClock()
    identity = AgentIdentity.load_or_create(config.data_dir)
    token = None
    if not identity.registered():
        try:
            token = read_token(config.enrolment_token_file)
        except ValueError as exc:  # it still plays what the controller signs
            log.error("%s. Until this cluster's key is registered, the controller stores "
                      "nothing it reports; `loa-agent check` says what to do", exc)
    started_at = clock.now()
    output = build_output(config)
    problem = output.check()
    if problem:
        log.warning(
            "output %s cannot play right now: %s. The agent starts anyway and reports "
            "each play it cannot air as failed.",
            output.name, problem,
        )
    return Agent(
        config.cluster_id,
        build_link(config, identity, started_at),
        verifier,
        output,
        clock,
        config.data_dir,
        groups=config.groups,
        outbox_resend_s=config.outbox_resend_s,
        version=agent_version(),
        relay=config.relay,
        heartbeat_s=config.heartbeat_interval_s,
        default_volume=config.output.volume,
        max_content_bytes=config.cache_max_mb * 1024 * 1024,
        keepalive_s=config.keepalive,
        identity=identity,
        enrolment_token=token,
    )


@contextlib.contextmanager
def single_instance(data_dir: Path) -> Iterator[None]:
    """Refuse to run two agents on one data directory (their schedules would collide)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / "agent.lock"
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(_(
                "another loa-agent is already running with data_dir {folder}; stop it first "
                "(systemctl stop loa-agent) or give this one its own data_dir", folder=data_dir,
            )) from None
        yield


def run(config: AgentConfig, stop: threading.Event | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT (or until `stop` is set)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    with single_instance(config.data_dir):
        agent = build_agent(config)
        log.info(
            "loa-agent %s for cluster %s, broker %s, output %s",
            agent_version(), config.cluster_id, config.broker().url(), config.output.kind,
        )
        agent.start()
        try:
            stop.wait()
        finally:
            log.info("stopping the agent of cluster %s", config.cluster_id)
            agent.stop()
