"""Composition root of the controller: builds every part once and wires them.

`loa-controller run --config FILE` and the demo both go through `Controller`, so the
demo exercises exactly what production runs.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.audio import AudioSettings, ContentStore, PreparedAudio
from controller.config import ControllerConfig
from controller.dispatch import Dispatcher
from controller.distribution import Distributor, PlaySpec, new_play_id
from controller.fleet import Fleet, load_fleet
from controller.intake import Intake
from controller.playlist import Playlists, load_playlists
from controller.schedule import Scheduler
from controller.store import Store
from protocol.clock import Clock, SystemClock
from protocol.messages import Level
from protocol.mqtt import BrokerAddress, Link, MqttLink
from protocol.signing import Signer, load_private_key

log = logging.getLogger(__name__)

URGENT_LATENESS = timedelta(minutes=5)


@dataclass
class Settings:
    """What the controller needs, whether it comes from a config file or the demo."""

    broker: BrokerAddress
    fleet_path: Path
    playlist_paths: list[Path]
    store_url: str
    private_key: Path
    content_dir: Path
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Ho_Chi_Minh"))
    lead_time: timedelta = timedelta(minutes=30)
    audio: AudioSettings = field(default_factory=AudioSettings)
    client_id: str = "loa-controller"

    @classmethod
    def from_config(cls, config: ControllerConfig) -> Settings:
        return cls(
            broker=BrokerAddress.from_url(config.broker_url),
            fleet_path=config.fleet,
            playlist_paths=list(config.playlists),
            store_url=config.store_url,
            private_key=config.private_key,
            content_dir=config.content_dir,
            timezone=ZoneInfo(config.timezone),
            lead_time=config.lead_time,
            audio=AudioSettings(bitrate_kbps=config.audio.bitrate_kbps),
        )


class Controller:
    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, link: Link | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.fleet: Fleet = load_fleet(settings.fleet_path)
        self.playlists: Playlists = load_playlists(settings.playlist_paths, self.fleet)
        self._state_lock = threading.Lock()
        self.store = Store(settings.store_url)
        self._sync_fleet()
        self.signer = Signer(load_private_key(settings.private_key))
        self.content = ContentStore(settings.content_dir, settings.audio)
        self.link: Link = link or MqttLink(
            settings.broker, settings.client_id, clean_session=False
        )
        self.distributor = Distributor(
            self.link, self.signer, self.store, lambda: self.fleet, self.clock, self._content_path
        )
        self.intake = Intake(self.link, self.store, self.signer, self.clock)
        self.intake.add_state_listener(self._on_cluster_state)
        self.dispatcher = Dispatcher(
            store=self.store,
            distributor=self.distributor,
            content=self.content,
            clock=self.clock,
            state=self.state,
            is_approved=lambda _programme: False,
        )
        self.scheduler = Scheduler(
            clock=self.clock,
            tz=settings.timezone,
            lead_time=settings.lead_time,
            dispatch=self.dispatcher,
            already_dealt_with=self.dispatcher.already_dealt_with,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, connect_timeout: float = 10.0) -> None:
        self.intake.start()
        self.distributor.start()
        self.link.start()
        if not self.link.wait_connected(connect_timeout):
            log.warning(
                "broker %s not reachable yet; commands are queued until it is",
                self.settings.broker.url(),
            )
        self.distributor.publish_memberships(self.memberships())
        self.scheduler.swap(self.playlists)
        self.scheduler.start()
        log.info(
            "controller running: %d clusters in %d communes, %d programmes, broker %s",
            len(self.fleet.clusters),
            sum(1 for n in self.fleet.nodes.values() if n.kind == "commune"),
            len(self.playlists.programmes),
            self.settings.broker.url(),
        )

    def stop(self) -> None:
        self.scheduler.shutdown()
        self.intake.stop()
        self.link.stop()
        self.store.close()

    def state(self) -> tuple[Playlists, Fleet]:
        with self._state_lock:
            return self.playlists, self.fleet

    def memberships(self) -> list[tuple[str, str | None, list[str]]]:
        return [
            (cid, self.fleet.commune_of(cid).id, self.fleet.groups_of(cid))
            for cid in sorted(self.fleet.clusters)
        ]

    def _on_cluster_state(self, cluster: str, state: str) -> None:
        if state == "online":
            self.distributor.catch_up(cluster)

    def _sync_fleet(self) -> None:
        self.store.sync_fleet(
            (c.id, c.name, c.commune, self.fleet.node(c.commune).name)
            for c in self.fleet.clusters.values()
        )

    def _content_path(self, sha256: str) -> Path | None:
        found = self.content.get(sha256)
        return found.path if found else None

    # --- urgent announcements ---------------------------------------------------------------

    def send_urgent(
        self,
        targets: Sequence[str],
        audio: Sequence[Path] | PreparedAudio,
        *,
        title: str,
        level: Level = "emergency",
        exclude: Sequence[str] = (),
    ) -> PlaySpec:
        """Send an announcement now to every cluster under the targets."""
        clusters = self.fleet.resolve(targets, exclude)
        if not clusters:
            raise ValueError(f"targets {', '.join(targets)} contain no cluster")
        prepared = audio if isinstance(audio, PreparedAudio) else self.content.prepare(list(audio))
        now = self.clock.now()
        spec = PlaySpec(
            play_id=new_play_id("urgent"),
            bulletin=title,
            level=level,
            start_at=now,
            latest_start=now + URGENT_LATENESS,
            items=[prepared],
            clusters=clusters,
            urgent=True,
        )
        self.distributor.send_play(spec)
        return spec


def run(config: ControllerConfig) -> None:
    """Run the controller daemon until SIGTERM or SIGINT."""
    controller = Controller(Settings.from_config(config))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller.start()
    stop.wait()
    log.info("stopping the controller")
    controller.stop()
