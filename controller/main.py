"""Composition root of the controller: builds every part once and wires them.

`loa-controller run --config FILE` and the demo both go through `Controller`, so the
demo exercises exactly what production runs.

Live reload (`Controller.reload()`, called by the file watcher of controller/reload.py
when the playlists or the fleet change, or on SIGHUP): the fleet and the playlists are
loaded and checked together by the same loaders as `loa-controller check`. If anything
is wrong the edit is refused: the file:line report goes to the log (WARNING) and to the
store's config status (shown by `loa-controller fleet`), and the running schedule is not
touched. Otherwise both are swapped at once, the scheduler re-plans, the store's
cluster list follows the fleet, clusters whose commune or groups changed get their
new membership (retained) so they answer to the new tree, and plays already sent for
occurrences the edit removed or moved (still to start) are withdrawn with a stop.

Several controllers on one store (controller/leadership.py): `run()` serves the web app
at once and claims the leadership; `Controller.start()` (the broker link, intake,
scheduler, ...) runs only once this one leads, and `Controller.fence()` stops all of it
at once when it steps down; the dispatcher asks `may_act()` before it sends. A
controller built without `run()` (the demo, tests) has no leadership and acts alone.

Memberships (controller/membership.py) are published when the controller starts, for
the clusters a reload changed, and again after every reconnection to the broker and
every `membership_republish`, so that a retained membership overwritten or lost on the
broker comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from controller.approval import Approvals
from controller.audio import AudioLibrary, AudioSettings, PreparedAudio
from controller.broker_state import BrokerState
from controller.config import ControllerConfig, SpeechConfig
from controller.confirmations import Confirmations, ResendPolicy
from controller.credentials import controller_login
from controller.dispatch import Dispatcher
from controller.distribution import Distributor, PlaySpec, new_play_id, per_profile, sent_as
from controller.enrolment import EnrolmentDesk
from controller.fleet import Fleet
from controller.holdings import Holdings
from controller.identities import Identities
from controller.intake import Intake
from controller.keys import publish_rotation
from controller.leadership import Leadership
from controller.live import LiveSettings
from controller.live_desk import LiveDesk
from controller.membership import DEFAULT_REPUBLISH_S, MembershipPublisher
from controller.playlist import Playlists
from controller.reconnect import BrokerWatch, ReconnectAction, Reconnection
from controller.reload import DEFAULT_INTERVAL_S, FileWatcher, signature, watched_files
from controller.schedule import HORIZON, Scheduler, plan
from controller.sources import load_together
from controller.store import Store
from controller.trust import ClusterKeys
from controller.urgent import DEFAULT_URGENT_EXPIRY, NotSentError
from protocol.clock import Clock, SystemClock
from protocol.config_errors import ConfigError, Problem
from protocol.messages import Level
from protocol.mqtt import BrokerAddress, Link, MqttLink
from protocol.signing import Signer, load_private_key

if TYPE_CHECKING:
    from controller.web.server import WebServer

log = logging.getLogger(__name__)


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
    # How often the playlists and the fleet are looked at for edits; 0: never (reload()
    # is still there to call).
    reload_interval_s: float = DEFAULT_INTERVAL_S
    #: Voices, number words and abbreviations for typed announcements.
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    # When plays a cluster has not confirmed are sent again, and given up on.
    resend: ResendPolicy = field(default_factory=ResendPolicy)
    # How often every cluster's membership is published again (besides after every
    # reconnection to the broker); 0: only then.
    membership_republish_s: float = DEFAULT_REPUBLISH_S
    # False only while upgrading from agents that did not sign: unsigned messages from
    # clusters with no registered key are then taken (docs/operations.md).
    require_signed_events: bool = True
    # Other nodes of the broker's cluster (same login and CA), tried when one fails.
    broker_fallbacks: list[BrokerAddress] = field(default_factory=list)
    # How long after it is sent an urgent announcement may still start; a cluster that
    # gets it later reports it expired and plays nothing.
    urgent_expiry: timedelta = DEFAULT_URGENT_EXPIRY
    # The holiday calendar the playlists skip or air on (config `holidays:`); None: none.
    holidays_path: Path | None = None

    def watched_paths(self) -> list[Path]:
        """What a live reload watches besides the fleet: playlists and holiday calendar."""
        return [*self.playlist_paths, *([self.holidays_path] if self.holidays_path else [])]

    @classmethod
    def from_config(cls, config: ControllerConfig) -> Settings:
        broker = config.broker()
        if broker.username is None:  # its own login from broker-config, once there is one
            login = controller_login(
                config.credentials_file, config.provisioning.controller_username
            )
            if login is not None:
                broker = dataclasses.replace(broker, username=login[0], password=login[1])
        fallbacks = [
            dataclasses.replace(broker, host=a.host, port=a.port, tls=a.tls)
            for a in map(BrokerAddress.from_url, config.broker_fallback_urls)
        ]
        return cls(
            broker=broker,
            broker_fallbacks=fallbacks,
            fleet_path=config.fleet,
            playlist_paths=list(config.playlists),
            holidays_path=config.holidays,
            store_url=config.store_url,
            private_key=config.private_key,
            content_dir=config.content_dir,
            timezone=ZoneInfo(config.timezone),
            lead_time=config.lead_time,
            audio=AudioSettings.from_config(config.audio),
            client_id=config.client_id,
            speech=config.speech,
            membership_republish_s=config.membership_republish.total_seconds(),
            require_signed_events=config.require_signed_events,
            urgent_expiry=config.urgent_expiry,
        )


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did: swapped (ok) or refused, with every problem found."""

    ok: bool
    problems: list[Problem]
    memberships_sent: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)  # play ids sent, now stopped

    def report(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class Controller:
    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, link: Link | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._loaded_files = signature(watched_files(settings.fleet_path, settings.watched_paths()))
        self.fleet, self.playlists = self._load()
        self._state_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.last_reload: ReloadResult | None = None  # set once a reload has finished
        self.store = Store(settings.store_url)
        self._sync_fleet()
        self.approvals = Approvals(self.store)
        self.signer = Signer(load_private_key(settings.private_key))
        self.library = AudioLibrary(settings.content_dir, settings.audio)
        self.link: Link = link or MqttLink(
            settings.broker, settings.client_id, clean_session=False,
            fallbacks=settings.broker_fallbacks,
        )
        self.holdings = Holdings(self.store, clock=self.clock)
        self.identities = Identities(self.store)
        self.keys = ClusterKeys(require_signed=settings.require_signed_events)
        self.keys.replace_all(self.identities.active_keys())
        self.enrolment = EnrolmentDesk(
            self.link, self.identities, self.keys, self.signer, self.clock,
            in_fleet=lambda cluster: cluster in self.fleet.clusters,
        )
        self.confirmations = Confirmations(
            self.store.engine, self.clock, resend=self._resend_play,
            connected=lambda: self.link.connected, tz=settings.timezone, policy=settings.resend,
        )
        self.distributor = Distributor(
            self.link, self.signer, self.store.plays, lambda: self.fleet, self.clock,
            self._content_path,
            chunk_size=settings.audio.chunk_size, holdings=self.holdings,
            tracker=self.confirmations,
            known=lambda cluster: cluster in self.fleet.clusters, keys=self.keys,
        )
        self.memberships_publisher = MembershipPublisher(
            self.link, self.signer, self.clock, self.memberships,
            interval_s=settings.membership_republish_s,
            after_reconnect=self._publish_rotation,
        )
        self.intake = Intake(
            self.link, self.store, self.signer, self.clock, keys=self.keys,
            known=lambda cluster: cluster in self.fleet.clusters,
        )
        self.intake.add_batch_listener(self.holdings.record_delivered)
        self.intake.add_batch_listener(self.confirmations.confirm)
        self.intake.add_due_work(self.confirmations)
        self.intake.add_state_listener(self._on_cluster_state)
        self.broker_state = BrokerState(
            self.link, self.clock, settings.timezone, marks=self.store.marks.set
        )
        self.broker_watch = BrokerWatch(
            self.link, settings.client_id, self.clock, outage=self.broker_state.outage_text
        )
        self.on_reconnect(self._resend_unconfirmed)
        self.on_reconnect(self.memberships_publisher.on_reconnect)
        self.live = LiveDesk(
            # The fleet of the moment: a reload replaces self.fleet.
            self.link, self.signer, lambda clusters: self.fleet.cover(clusters),  # noqa: PLW0108
            self.clock,
            LiveSettings(
                bitrate_kbps=settings.audio.bitrate_kbps,
                target_lufs=settings.audio.target_lufs or -16.0,
                true_peak_dbtp=settings.audio.true_peak_dbtp,
            ),
        )
        self.dispatcher = Dispatcher(
            store=self.store,
            distributor=self.distributor,
            library=self.library,
            clock=self.clock,
            state=self.state,
            is_approved=self.approvals.is_approved,
            tz=settings.timezone,
            live=self.live,
            may_act=self.may_act,
        )
        self.scheduler = Scheduler(
            clock=self.clock,
            tz=settings.timezone,
            lead_time=settings.lead_time,
            dispatch=self.dispatcher,
            already_dealt_with=self.dispatcher.already_dealt_with,
            marks=self.store.marks,
        )
        # Which controller leads, when several run on one store (controller/leadership.py,
        # set by run()); None: this one acts alone.
        self.leadership: Leadership | None = None
        self._active = False
        self.watcher = FileWatcher(
            lambda: watched_files(settings.fleet_path, settings.watched_paths()),
            self.reload,
            interval_s=settings.reload_interval_s or DEFAULT_INTERVAL_S,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def may_act(self) -> bool:
        """Whether this controller may schedule, dispatch and publish now: it leads (or
        acts alone)."""
        return self.leadership is None or self.leadership.is_leader

    def start(self, connect_timeout: float = 10.0) -> None:
        """Start the leader's work: the broker link, intake, scheduler and the rest."""
        self._active = True
        self._load_edits()
        if not self.settings.require_signed_events:
            log.warning(
                "require_signed_events is false: unsigned messages from clusters with no "
                "registered key are taken (an upgrade in progress); set it to true once "
                "`loa-controller enrol list` shows every cluster registered"
            )
        self.broker_state.start()  # first: the other listeners may ask it
        self.enrolment.start()
        self.intake.start()
        self.distributor.start()
        self.broker_watch.start()
        self.memberships_publisher.start()
        self.link.start()
        if not self.link.wait_connected(connect_timeout):
            log.warning(
                "broker %s not reachable yet; commands are queued until it is",
                self.settings.broker.url(),
            )
        # A key rotation first: the memberships that follow are signed with the new key.
        self._publish_rotation()
        self.memberships_publisher.publish_all()
        self.scheduler.swap(self.playlists)
        self.scheduler.start()
        self._record_status(self.playlists.warnings)
        if self.settings.reload_interval_s > 0:
            self.watcher.start(self._loaded_files)
        log.info(
            "controller running: %d clusters in %d communes, %d programmes, broker %s",
            len(self.fleet.clusters),
            sum(1 for n in self.fleet.nodes.values() if n.kind == "commune"),
            len(self.playlists.programmes),
            self.settings.broker.url(),
        )

    def _load_edits(self) -> None:
        """A standby that comes to lead loads the playlists and fleet edited since it
        started (it watched nothing meanwhile); refused edits keep what it had."""
        now = signature(watched_files(self.settings.fleet_path, self.settings.watched_paths()))
        if now == self._loaded_files:
            return
        try:
            fleet, playlists = self._load()
        except (ConfigError, OSError) as exc:
            log.warning("the playlists or the fleet were edited while this controller stood "
                        "by, and cannot be loaded (%s); it leads with those it had",
                        exc)
            return
        with self._state_lock:
            self.fleet, self.playlists = fleet, playlists
        self._loaded_files = now
        self._sync_fleet()
        log.info("loaded the playlists and the fleet edited while this controller stood by")

    def fence(self) -> None:
        """Stop the leader's work at once (stepping down, or stopping): nothing is
        scheduled, dispatched, taken in or published after this returns. The store stays
        open (the web app still reads it)."""
        if not self._active:
            return
        self._active = False
        self.scheduler.shutdown()
        self.watcher.stop()
        self.live.close()
        self.broker_watch.stop()
        self.memberships_publisher.stop()
        self.enrolment.stop()
        self.intake.stop()
        self.link.stop()
        self.broker_state.stop()

    def stop(self) -> None:
        self.fence()
        self.store.close()

    def on_reconnect(self, action: ReconnectAction) -> None:
        """Run action after every connection of the controller to the broker, the first one
        included, with what the broker still held (controller/reconnect.py: its session,
        its retained messages). Register before start(). The action runs on the link's
        network thread: queue the work, do not block."""
        self.broker_watch.on_reconnect(action)

    def _publish_rotation(self) -> int:
        """The kept key rotation, retained, to every cluster (at the start, and again
        after every reconnection, with the memberships)."""
        return publish_rotation(
            self.link, self.settings.private_key, self.signer.public_key,
            sorted(self.fleet.clusters),
        )

    def _resend_unconfirmed(self, _found: Reconnection) -> None:
        # Whatever the broker held may be gone: every play a cluster has not confirmed, and
        # that can still start, goes again now (on the intake's thread).
        self.confirmations.resend_now()

    def _resend_play(self, cluster: str, body_json: str) -> str | None:
        return self.distributor.resend_play(cluster, body_json)

    def state(self) -> tuple[Playlists, Fleet]:
        with self._state_lock:
            return self.playlists, self.fleet

    def memberships(self) -> list[tuple[str, str | None, list[str]]]:
        """(cluster, commune, groups) of every cluster, as the agents are told."""
        fleet = self.fleet
        return [
            (cid, fleet.commune_of(cid).id, fleet.groups_of(cid)) for cid in sorted(fleet.clusters)
        ]

    # --- live reload ------------------------------------------------------------------------

    def _load(self) -> tuple[Fleet, Playlists]:
        tz = self.settings.timezone
        return load_together(
            self.settings.fleet_path,
            self.settings.playlist_paths,
            tz=tz,
            today=self.clock.now().astimezone(tz).date(),
            voices=self.settings.speech.voice_names(),
            holidays=self.settings.holidays_path,
        )

    def _record_status(self, warnings: list[Problem]) -> None:
        self.store.config_status.set(
            "ok", "\n".join(str(p) for p in warnings), self.clock.now()
        )

    def request_reload(self) -> None:
        """Reload soon, from the watcher's thread (safe to call from a signal handler)."""
        self.watcher.poke()

    def reload(self) -> ReloadResult:
        """Load the fleet and playlists again; swap them in, or refuse them whole."""
        with self._reload_lock:
            try:
                fleet, playlists = self._load()
            except ConfigError as exc:
                return self._refuse(exc.problems)
            except OSError as exc:
                where = getattr(exc, "filename", None) or self.settings.fleet_path
                return self._refuse([Problem(str(where), 1, 1, f"cannot read it: {exc}")])
            before = {cid: (commune, groups) for cid, commune, groups in self.memberships()}
            with self._state_lock:
                previous = self.playlists
                self.fleet, self.playlists = fleet, playlists
            self._sync_fleet()
            self.scheduler.swap(playlists)
            withdrawn = self._withdraw(previous, playlists)
            after = {cid: (commune, groups) for cid, commune, groups in self.memberships()}
            changed: list[tuple[str, str | None, list[str]]] = [
                (cid, commune, groups)
                for cid, (commune, groups) in sorted(after.items())
                if before.get(cid) != (commune, groups)
            ]
            # A cluster taken out of the fleet leaves its groups.
            changed += [(cid, None, []) for cid in sorted(before.keys() - after.keys())]
            if changed:
                self.memberships_publisher.publish(changed)
                log.warning(
                    "%d clusters were added to the fleet, moved or taken out (%s): where the "
                    "broker's logins and rules come from `loa-controller broker-config`, "
                    "write them again and reload the broker, or new clusters cannot log in "
                    "and moved ones do not hear their new groups",
                    len(changed), ", ".join(c[0] for c in changed[:5])
                    + (" ..." if len(changed) > 5 else ""),
                )
            self._record_status(playlists.warnings)
            result = ReloadResult(
                True, playlists.warnings, [c[0] for c in changed], withdrawn
            )
            self.last_reload = result
            log.info(
                "reloaded the playlists and the fleet: %d programmes, %d clusters in %d "
                "communes; new membership sent to %d clusters; %d plays already sent were "
                "withdrawn", len(playlists.programmes), len(fleet.clusters),
                len(fleet.communes()), len(changed), len(withdrawn),
            )
            return result

    def _withdraw(self, before: Playlists, after: Playlists) -> list[str]:
        """Stop plays already sent for occurrences the edit removed or moved.

        Only those still to start: the clusters hold them (sent lead_time ahead) and
        would otherwise air them. A play already on air is left to finish.
        """
        now = self.clock.now()
        tz = self.settings.timezone
        end = now + self.settings.lead_time + HORIZON
        kept = {o.play_id for o in plan(after, now, end, tz)}
        fleet = self.fleet
        withdrawn = []
        for occ in plan(before, now, end, tz):
            sent = self.store.dispatches.outcome(occ.programme, occ.start) == "sent"
            if occ.play_id in kept or not sent:
                continue
            # The occurrence's play, or its plays per audio profile (per_profile).
            for play_id, clusters in sent_as(occ.play_id, self.store.plays.clusters_of):
                self.distributor.send_stop(play_id, [c for c in clusters if c in fleet.clusters])
                withdrawn.append(play_id)
                log.info("withdrew %s: the edited playlists no longer have it", play_id)
        return withdrawn

    def _refuse(self, problems: list[Problem]) -> ReloadResult:
        result = ReloadResult(False, list(problems))
        errors = sum(1 for p in problems if p.severity == "error")
        log.warning(
            "refused the edited playlists/fleet (%d error(s)); the previous schedule keeps "
            "running. Fix these and save again:\n%s", errors, result.report(),
        )
        self.store.config_status.set("error", result.report(), self.clock.now())
        self.last_reload = result
        return result

    def _on_cluster_state(self, cluster: str, state: str) -> None:
        if state == "online":  # what it has not confirmed goes again, at once
            self.confirmations.catch_up(cluster)

    def _sync_fleet(self) -> None:
        fleet = self.fleet
        self.store.clusters.sync_fleet(
            (c.id, c.name, c.commune, fleet.node(c.commune).name) for c in fleet.clusters.values()
        )

    def _content_path(self, sha256: str) -> Path | None:
        found = self.library.get(sha256)
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
    ) -> list[PlaySpec]:
        """Send an announcement now to every cluster under the targets: one play, or one
        per audio profile among them (controller.distribution.per_profile), each with the
        files prepared for that profile. Audio already prepared goes as it is to all."""
        clusters = self.fleet.resolve(targets, exclude)
        if not clusters:
            raise ValueError(f"targets {', '.join(targets)} contain no cluster")
        why = self.broker_state.unreachable()
        if why is not None:
            raise NotSentError(f"not sent: {why}")
        if isinstance(audio, PreparedAudio):
            by_profile = {audio.profile: clusters}
            items = {audio.profile: [audio]}
        else:
            by_profile = self.fleet.by_profile(clusters)
            items = {p: [self.library.prepare(list(audio), profile=p)] for p in by_profile}
        now = self.clock.now()
        spec = PlaySpec(
            play_id=new_play_id("urgent"),
            bulletin=title,
            level=level,
            start_at=now,
            latest_start=now + self.settings.urgent_expiry,
            items=[],
            clusters=clusters,
            urgent=True,
        )
        sent = per_profile(spec, by_profile, items)
        for part in sent:
            self.distributor.send_play(part)
        return sent


def advertised_url(config: ControllerConfig) -> str:
    """Where the other controllers reach this one's web app ("" without one)."""
    if config.leadership.advertised_url:
        return config.leadership.advertised_url
    if config.web is None:
        return ""
    scheme = "https" if config.web.tls is not None else "http"
    host = config.web.listen
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - reading the setting, not binding
        host = socket.getfqdn()
    return f"{scheme}://{host}:{config.web.port}"


def _lead(controller: Controller, config: ControllerConfig, web: WebServer | None) -> Any:
    """Start the leader's work; the CAP feed it started, if any."""
    controller.start()
    if web is None:
        return None
    web.lead()
    intake = web.app.state.ctx.cap  # controller.cap.CapIntake when web.cap is set
    if config.web is None or config.web.cap is None or not config.web.cap.feeds \
            or intake is None:
        return None
    from controller.cap_feed import CapFeed  # CAP alerts pulled from feeds

    feed = CapFeed(intake, config.web.cap.feeds, controller.fleet.province.id)
    feed.start()
    return feed


def run(config: ControllerConfig) -> None:
    """Run the controller daemon until SIGTERM or SIGINT.

    It serves the web app at once and claims the leadership (controller/leadership.py):
    while another controller leads, it stands by; when it leads, it starts the leader's
    work (broker, intake, scheduler with its catch-up, CAP). Stepping down (the lease
    could not be renewed in time, or passed to another) stops that work at once, and the
    process starts again as a standby (re-executes itself).
    """
    from controller.tts import speech_for

    speech = speech_for(config.speech)  # the abbreviation files: refused before anything starts
    controller = Controller(Settings.from_config(config))
    wake = threading.Event()
    stop = threading.Event()
    elected = threading.Event()
    deposed: list[str] = []

    def step_down(why: str) -> None:  # on the leadership's thread: fence first, then tell
        controller.fence()
        deposed.append(why)
        wake.set()

    def elect(_term: int) -> None:
        elected.set()
        wake.set()

    leadership = Leadership(
        controller.store.leases, ttl=config.leadership.ttl, url=advertised_url(config),
        on_elected=elect, on_deposed=step_down,
    )
    controller.leadership = leadership

    def quit_(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, quit_)
    signal.signal(signal.SIGINT, quit_)
    signal.signal(signal.SIGHUP, lambda *_: controller.request_reload())
    web = None
    feed = None
    if config.web is not None:  # the web app and API (controller/web), same process
        from controller.web.server import start_web

        try:
            web = start_web(controller, config.web, tts=speech, lead=False)
        except BaseException:  # a certificate it cannot use, a port taken: stop, then say so
            controller.stop()
            raise
    log.info("controller %s serving its web app; claiming the leadership (lease of %.0f s)",
             leadership.me, config.leadership.ttl.total_seconds())
    leadership.start()
    leading = False
    while not stop.is_set() and not deposed:
        wake.wait()
        wake.clear()
        if elected.is_set() and not leading and not stop.is_set() and not deposed:
            leading = True
            feed = _lead(controller, config, web)
    _end(controller, leadership, web, feed, deposed[0] if deposed else None)


def _end(controller: Controller, leadership: Leadership, web: WebServer | None, feed: Any,
         deposed: str | None) -> None:
    """Stop everything; a controller that stepped down starts again as a standby."""
    if deposed:
        log.warning("stepped down (%s); starting again as a standby", deposed)
    else:
        log.info("stopping the controller")
    if feed is not None:
        feed.stop()
    controller.fence()
    leadership.stop(release=deposed is None)
    if web is not None:
        web.stop()
    controller.stop()
    if deposed:
        logging.shutdown()
        os.execv(sys.executable, sys.orig_argv)  # noqa: S606 - this very program again
