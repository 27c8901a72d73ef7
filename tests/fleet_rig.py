"""A real controller and real agent processes on a real broker (a mosquitto, or a node of
a NATS cluster with the others as fallbacks), for the fault and preemption tests.

The controller is `controller.main.Controller`, as `loa-controller run` builds it, in the
test's process (so a test can stop it and start a new one on the same store); each
agent is `python -m device_agent.cli run --config ...` with the `file` output (one WAV
per airing, decoded by the real ffmpeg), so it can be frozen (SIGSTOP), killed (-9)
and started again. Plays are sent through the controller's own distributor.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import BrokerUnderTest, wait_until
from identity_support import token_file
from sqlalchemy import select

from controller.audio import PreparedAudio
from controller.config import load_controller_config
from controller.confirmations import ResendPolicy
from controller.distribution import PlaySpec, new_play_id
from controller.main import Controller, Settings
from controller.samples import tone
from controller.store import FINAL_KINDS, Store
from controller.store.schema import events
from protocol.messages import Level
from protocol.signing import generate_keypair

ROOT = Path(__file__).resolve().parent.parent
COMMUNE = "xa-rig"


def fleet_yaml(clusters: list[str]) -> str:
    lines = "\n".join(f"        - {{id: {c}, name: Cụm {c}}}" for c in clusters)
    return (
        "province:\n  id: tinh-rig\n  name: Tỉnh Thử\n  communes:\n"
        f"    - id: {COMMUNE}\n      name: Xã Thử\n      clusters:\n{lines}\n"
    )


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class FleetRig:
    def __init__(
        self,
        tmp: Path,
        broker: BrokerUnderTest,
        clusters: list[str],
        *,
        keepalive: int = 5,
        controller_extra: str = "",
        broker_urls: dict[str, str] | None = None,
        resend: ResendPolicy | None = None,
        store_url: str | None = None,
        fallback_urls: Sequence[str] = (),
    ) -> None:
        """controller_extra: more lines of the controller's config; broker_urls: where an
        agent connects instead of the broker (a relay); resend: the controller's
        ResendPolicy instead of the default; store_url: the controller's store (a SQLite
        file in tmp by default); fallback_urls: the other nodes of the broker's cluster,
        the broker_fallback_urls of the controller and of every agent."""
        self.tmp = tmp
        self.broker = broker
        self.clusters = clusters
        self.resend = resend
        generate_keypair(tmp / "controller.key", tmp / "controller.pub")
        (tmp / "fleet.yaml").write_text(fleet_yaml(clusters), encoding="utf-8")
        (tmp / "playlists").mkdir()
        fallbacks = (
            f"broker_fallback_urls: [{', '.join(fallback_urls)}]\n" if fallback_urls else ""
        )
        self.controller_config = tmp / "controller.yaml"
        self.controller_config.write_text(
            f"broker_url: {broker.url}\n{fallbacks}fleet: fleet.yaml\nplaylists: [playlists]\n"
            f"store_url: {store_url or 'sqlite:///controller.db'}\nprivate_key: controller.key\n"
            "content_dir: content\n" + controller_extra,
            encoding="utf-8",
        )
        for cluster in clusters:
            url = (broker_urls or {}).get(cluster, broker.url)
            (tmp / f"{cluster}.yaml").write_text(
                f"cluster_id: {cluster}\nbroker_url: {url}\n{fallbacks}"
                "controller_public_key: controller.pub\n"
                f"data_dir: data-{cluster}\ngroups: [{COMMUNE}]\n"
                f"enrolment_token_file: {cluster}.token\n"
                f"keepalive: {keepalive}\noutbox_resend_s: 1\n"
                f"output:\n  kind: file\n  out_dir: played-{cluster}\n",
                encoding="utf-8",
            )
            # Each box enrols with a token that approves itself.
            token_file(store_url or f"sqlite:///{tmp / 'controller.db'}", cluster,
                       tmp / f"{cluster}.token")
        self.controller: Controller | None = None
        #: Where what the controllers stored is read when none runs in this process
        #: (controllers in processes of their own: tests/test_leadership.py).
        self.reader: Store | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.sent: dict[str, PlaySpec] = {}

    # --- the controller ---------------------------------------------------------------------

    def start_controller(self) -> Controller:
        settings = Settings.from_config(load_controller_config(self.controller_config))
        if self.resend is not None:
            settings = dataclasses.replace(settings, resend=self.resend)
        self.controller = Controller(settings)
        self.controller.start()
        return self.controller

    def stop_controller(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def store(self) -> Store:
        """The store of the controller in this process, else `reader`."""
        if self.controller is None and self.reader is not None:
            return self.reader
        return self.ctl.store

    @property
    def ctl(self) -> Controller:
        assert self.controller is not None, "the controller is not running"
        return self.controller

    def audio(self, seconds: float, freq: float = 440) -> PreparedAudio:
        source = tone(self.tmp / f"tone-{seconds:g}-{freq:g}.wav", seconds, freq=freq)
        return self.ctl.library.prepare([source])

    def send(
        self,
        audio: PreparedAudio,
        *,
        level: Level = "normal",
        start_in: float = 0.0,
        window: timedelta = timedelta(minutes=5),
        replay: bool = False,
        name: str | None = None,
        clusters: list[str] | None = None,
    ) -> PlaySpec:
        """Send one play to every cluster (or these), through the controller's distributor."""
        start = datetime.now(UTC) + timedelta(seconds=start_in)
        play_id = new_play_id(name or level)
        spec = PlaySpec(
            play_id=play_id, bulletin=name or f"{level} {play_id}", level=level,
            start_at=start, latest_start=start + window, items=[audio],
            clusters=list(clusters or self.clusters), replay_if_interrupted=replay,
        )
        self.ctl.distributor.send_play(spec)
        self.sent[play_id] = spec
        return spec

    # --- agents -----------------------------------------------------------------------------

    def start_agent(self, cluster: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{cluster}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "device_agent.cli", "-v", "run", "--config",
             str(self.tmp / f"{cluster}.yaml")],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
        )
        self.agents[cluster] = proc
        return proc

    def kill_agent(self, cluster: str) -> None:
        proc = self.agents[cluster]
        os.kill(proc.pid, signal.SIGCONT)  # in case it was frozen
        proc.kill()
        proc.wait(10)

    def freeze_agent(self, cluster: str, frozen: bool = True) -> None:
        os.kill(self.agents[cluster].pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop_agents(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def log(self, cluster: str) -> str:
        return (self.tmp / f"{cluster}.log").read_text(encoding="utf-8", errors="replace")

    # --- what the controller stored ----------------------------------------------------------

    def wait_online(self, cluster: str, timeout: float = 20) -> None:
        wait_until(
            lambda: self.store.clusters.health().get(cluster) is not None
            and self.store.clusters.health()[cluster].state == "online",
            timeout, f"{cluster} to come online",
        )

    def events(self, play_id: str, cluster: str) -> list[dict[str, Any]]:
        return [e for e in self.store.events.of_play(play_id) if e["cluster"] == cluster]

    def kinds(self, play_id: str, cluster: str) -> list[str]:
        return [e["kind"] for e in sorted(self.events(play_id, cluster), key=lambda e: e["seq"])]

    def at(self, play_id: str, cluster: str, kind: str, nth: int = 0) -> datetime:
        found = sorted(
            (e for e in self.events(play_id, cluster) if e["kind"] == kind), key=lambda e: e["seq"]
        )
        return aware(found[nth]["at"])

    def wait_kind(self, play_id: str, cluster: str, kind: str, timeout: float = 20,
                  count: int = 1) -> None:
        try:
            wait_until(lambda: self.kinds(play_id, cluster).count(kind) >= count, timeout,
                       f"{kind} of {play_id} on {cluster}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; got {self.kinds(play_id, cluster)}\n--- agent log ---\n"
                + self.log(cluster)[-4000:]
            ) from None

    def wait_final(self, play_id: str, cluster: str, timeout: float = 30) -> str:
        def final() -> bool:
            return bool(FINAL_KINDS.intersection(self.kinds(play_id, cluster)))

        try:
            wait_until(final, timeout, f"a final state of {play_id} on {cluster}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; got {self.kinds(play_id, cluster)}\n--- agent log ---\n"
                + self.log(cluster)[-4000:]
            ) from None
        return next(k for k in reversed(self.kinds(play_id, cluster)) if k in FINAL_KINDS)

    def wait_unbroken_outbox(self, cluster: str, timeout: float = 20) -> None:
        """Wait until the controller holds every event of the cluster's one outbox once:
        sequence numbers 1..n, no gap, no duplicate (the last may still be on their way)."""
        def unbroken() -> bool:
            seqs = self.outbox_seqs(cluster)
            return len(seqs) == 1 and all(s == list(range(1, len(s) + 1))
                                          for s in seqs.values())

        try:
            wait_until(unbroken, timeout, f"an unbroken sequence of {cluster}'s events")
        except AssertionError:
            raise AssertionError(
                f"outbox sequences of {cluster} at the controller: {self.outbox_seqs(cluster)}"
            ) from None

    def outbox_seqs(self, cluster: str) -> dict[str, list[int]]:
        """Every stored (outbox -> seqs) of a cluster, duplicates kept if there were any."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(events.c.outbox, events.c.seq).where(events.c.cluster == cluster)
            ).all()
        seqs: dict[str, list[int]] = {}
        for outbox, seq in rows:
            seqs.setdefault(outbox, []).append(seq)
        return {outbox: sorted(values) for outbox, values in seqs.items()}

    def wavs(self, play_id: str, cluster: str) -> list[Path]:
        folder = self.tmp / f"played-{cluster}"
        return sorted(folder.glob(f"*{play_id}*.wav")) if folder.exists() else []

    def close(self) -> None:
        self.stop_agents()
        self.stop_controller()
