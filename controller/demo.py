"""The demo: the main job in miniature, on the parts that run in production.

An embedded broker (or --broker URL; mqtts:// with --ca-file for TLS), the example fleet
of config/fleet.yaml (73 clusters in 40 communes), a simulated agent for every cluster
(the real agent code with the `null` output backend, each on its own link and thread, as
on a pole, each with its own key, which the demo registers with the controller as a
manager approving it would), one scheduled bulletin from a playlist at 06:00 to the whole
province, and one urgent announcement that preempts it in a few communes. The demo runs
on a clock set to a few seconds before 06:00 local time, so the bulletin fires almost at
once; everything else is as in production.

On a broker of its own (`--broker`, or `--config` for the broker, CA and login of a
controller config, as `run` takes them) the demo cannot harm a real fleet there: every
topic it uses is under a root of its own (`loa-demo-<run>/v1`, not `loa/v1`), every
client id is its own (`loa-demo-<run>-...`, so no real session is taken over), its
controller keeps no persistent session, its store is a temporary file, and before it
exits, also when interrupted (Ctrl-C, SIGTERM), it removes every retained message under
its root. A failure is one line (`demo failed: <reason>`), or `{"ok": false, "reason":
...}` with `--json`.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from controller.audio import AudioSettings
from controller.broker import EmbeddedBroker
from controller.distribution import PROFILE_MARK
from controller.fleet import Fleet, load_fleet
from controller.main import Controller, Settings
from controller.samples import demo_bulletin, demo_urgent
from controller.schedule import Occurrence
from controller.store import FINAL_KINDS
from controller.text_table import format_table
from device_agent.agent import Agent
from device_agent.identity import AgentIdentity
from device_agent.output import NullBackend
from protocol import topics
from protocol.clock import OffsetClock
from protocol.l10n import _
from protocol.messages import Event
from protocol.mqtt import BrokerAddress, MqttLink, tls_context
from protocol.signing import Verifier, generate_keypair, load_public_key

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "config" / "fleet.yaml"
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
BULLETIN_S = 12.0
URGENT_S = 4.0
STARTS_IN = timedelta(seconds=6)
# The urgent announcement goes to the first few communes (in the fleet file's order).
URGENT_COMMUNES = 4


#: How long the cleanup waits for the broker (to connect, to hand over what it retains).
CLEANUP_TIMEOUT_S = 15.0
# How long a broker that cannot be connected to (nothing listening, TLS failing) is tried
# again before the demo says so.
CONNECT_RETRY_S = 3.0


@dataclass
class DemoResult:
    ok: bool
    clusters: list[dict[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    reason: str | None = None  # why it failed, in one line


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _playlist(directory: Path, province: str, audio: Path) -> Path:
    path = directory / "demo.yaml"
    path.write_text(
        "programmes:\n"
        "  - id: ban-tin-sang\n"
        "    name: Bản tin sáng\n"
        "    level: normal\n"
        "    bulletins:\n"
        f"      - files: [{audio.name}]\n"
        "    schedule:\n"
        "      times: ['06:00']\n"
        f"    targets: [{province}]\n"
        "    lateness: 5m\n",
        encoding="utf-8",
    )
    return path


class Tracker:
    """Follows the events of the demo's two plays as the controller stores them; a play
    sent as one per audio profile (controller.distribution.per_profile) is followed as
    one."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.state: dict[str, dict[str, str]] = {}

    def on_event(self, ev: Event) -> None:
        if ev.play_id is None:
            return
        with self.lock:
            per_play = self.state.setdefault(ev.play_id.partition(PROFILE_MARK)[0], {})
            prev = per_play.get(ev.cluster)
            if prev in FINAL_KINDS:
                return
            per_play[ev.cluster] = ev.kind
            self.lock.notify_all()

    def wait(
        self, play_id: str, clusters: list[str], kinds: frozenset[str], timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                per_play = self.state.get(play_id, {})
                if all(per_play.get(c) in kinds for c in clusters):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)

    def of(self, play_id: str) -> dict[str, str]:
        with self.lock:
            return dict(self.state.get(play_id, {}))


def _start_agents(
    fleet: Fleet, broker: BrokerAddress, verifier: Verifier, clock: OffsetClock, root: Path,
    client_prefix: str,
) -> list[Agent]:
    agents = []
    for cid in sorted(fleet.clusters):
        identity = AgentIdentity.load_or_create(root / cid)
        started = clock.now()
        link = MqttLink(
            broker, f"{client_prefix}-{cid}", will=identity.will(cid, started),
            clean_session=True,
        )
        agent = Agent(
            cluster_id=cid,
            link=link,
            verifier=verifier,
            output=NullBackend(),
            clock=clock,
            data_dir=root / cid,
            groups=fleet.groups_of(cid),
            durable=False,  # a simulated fleet on one disk: no fsync per event
            identity=identity,
        )
        agent.start()
        agents.append(agent)
    return agents


class Demo:
    """The demo's parts, set up and torn down in order."""

    def __init__(
        self, broker_url: str | None, work: Path, ca_file: str | None = None, *,
        address: BrokerAddress | None = None, run_id: str | None = None,
    ) -> None:
        """address: the broker as a controller config gives it (URL, CA and login)."""
        self.broker_url = broker_url
        self.ca_file = ca_file
        self.address = address
        self.work = work
        self.run_id = run_id or secrets.token_hex(3)
        self.client_prefix = f"loa-demo-{self.run_id}"
        self.embedded: EmbeddedBroker | None = None
        self.external: BrokerAddress | None = None
        self.agents: list[Agent] = []
        self.controller: Controller | None = None
        self.tracker = Tracker()

    def broker(self) -> BrokerAddress:
        if self.address is not None:
            tls = (_(", TLS with the CA of {file}", file=self.address.ca_file)
                   if self.address.ca_file else "")
            _say(_("using broker {url}{tls} (from the config)", url=self.address.url(), tls=tls))
            self.external = self.reachable(self.address)
            return self.external
        if self.broker_url:
            broker = BrokerAddress.from_url(self.broker_url, ca_file=self.ca_file)
            if self.ca_file and not broker.tls:
                raise ValueError(_(
                    "--ca-file is for a TLS broker; write the broker as mqtts://, not {url}",
                    url=self.broker_url,
                ))
            if broker.tls:
                tls_context(self.ca_file)  # an unreadable CA file: said now, not at connect
            tls = _(", TLS with the CA of {file}", file=self.ca_file) if self.ca_file else ""
            _say(_("using broker {url}{tls}", url=broker.url(), tls=tls))
            # Only a broker the demo reached has retained messages of its to remove.
            self.external = self.reachable(broker)
            return self.external
        if self.ca_file:
            raise ValueError(_("--ca-file needs --broker mqtts://host:port (the embedded "
                               "broker speaks plain MQTT)"))
        self.embedded = EmbeddedBroker()
        self.embedded.start()
        _say(_("started an embedded MQTT broker on {url}", url=self.embedded.address.url()))
        return self.embedded.address

    def reachable(self, broker: BrokerAddress) -> BrokerAddress:
        """The broker, once a connection with the demo's own client id was made; else
        DemoError with the reason (refused login, TLS, nothing listening)."""
        link = MqttLink(broker, f"{self.client_prefix}-check", clean_session=True)
        try:
            link.start()
            # A refusal is final; a failure to connect (nothing listening, a TLS error)
            # is given CONNECT_RETRY_S to clear (a broker starting up), not the whole wait.
            deadline = time.monotonic() + CLEANUP_TIMEOUT_S
            failing_since: float | None = None
            while not link.wait_connected(0.2) and time.monotonic() < deadline:
                if link.last_refusal is not None:
                    break
                if link.last_failure is None:
                    failing_since = None
                elif failing_since is None:
                    failing_since = time.monotonic()
                elif time.monotonic() - failing_since > CONNECT_RETRY_S:
                    break
            if not link.connected:
                refusal, failure = link.last_refusal, link.last_failure
                if refusal is not None:
                    why = _("it refused the login ({reason})", reason=refusal.reason)
                elif failure is not None:
                    why = f"{failure.reason}; {failure.hint}"
                else:
                    why = _("no answer within {s:g} s", s=CLEANUP_TIMEOUT_S)
                raise DemoError(
                    _("cannot connect to broker {url}: {why}", url=broker.url(), why=why)
                )
        finally:
            link.stop()
        return broker

    def audio(self) -> tuple[Path, Path]:
        (self.work / "playlists").mkdir()
        bulletin = self.work / "playlists" / "ban-tin-sang.wav"
        spoken = demo_bulletin(bulletin, BULLETIN_S)
        urgent = self.work / "thong-bao-khan.wav"
        demo_urgent(urgent, URGENT_S)
        _say(_("made demo audio ({kind}): {bulletin:.0f} s bulletin, {urgent:.0f} s urgent "
               "announcement", kind=_("espeak-ng speech") if spoken else _("tones"),
               bulletin=BULLETIN_S, urgent=URGENT_S))
        return bulletin, urgent

    def start_agents(
        self, fleet: Fleet, broker: BrokerAddress, clock: OffsetClock
    ) -> None:
        verifier = Verifier(load_public_key(self.work / "keys" / "controller.pub"))
        self.agents = _start_agents(
            fleet, broker, verifier, clock, self.work / "agents", self.client_prefix
        )
        deadline = time.monotonic() + 20
        while not all(a.ready() for a in self.agents):
            if time.monotonic() > deadline:
                raise RuntimeError(_("agents could not connect and subscribe within 20 s"))
            time.sleep(0.05)
        _say(_("started {n} simulated agents (null output), all connected",
               n=len(self.agents)))

    def start_controller(
        self, broker: BrokerAddress, playlist: Path, clock: OffsetClock,
        store_url: str | None = None,
    ) -> Controller:
        settings = Settings(
            broker=broker,
            fleet_path=FLEET,
            playlist_paths=[playlist],
            store_url=store_url or f"sqlite:///{self.work / 'controller.db'}",
            private_key=self.work / "keys" / "controller.key",
            content_dir=self.work / "content",
            timezone=TZ,
            audio=AudioSettings(),
            client_id=f"{self.client_prefix}-controller",
        )
        # No persistent session left behind on the broker: a clean session.
        link = MqttLink(broker, settings.client_id, clean_session=True)
        self.controller = Controller(settings, clock=clock, link=link)
        for agent in self.agents:  # as a manager approving each cluster's key would
            self.controller.identities.register_key(
                agent.cluster_id, agent.identity.public_key, agent.identity.key_id,
                by="demo", now=clock.now(),
            )
        self.controller.intake.add_listener(self.tracker.on_event)
        self.controller.start()
        return self.controller

    def close(self) -> list[str]:
        """Stop everything; on a broker of its own, remove every retained message under
        the demo's root. What could not be done, as problems."""
        problems: list[str] = []
        for agent in self.agents:
            agent.stop()
        self.agents = []
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
        if self.external is not None:
            try:
                cleared = clear_retained(self.external, topics.PREFIX,
                                         f"{self.client_prefix}-cleanup")
                _say(_("removed the demo's {n} retained messages from the broker "
                       "(under {prefix}/)", n=cleared, prefix=topics.PREFIX))
            except DemoError as exc:
                problems.append(str(exc))
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        return problems


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why, in one line."""


def clear_retained(broker: BrokerAddress, root: str, client_id: str) -> int:
    """Remove every retained message under root/ on the broker; how many there were.

    The broker hands a new subscription the retained messages of its filter before it
    handles a message published after the subscription: a probe coming back means every
    retained message has arrived. Each is then cleared (an empty retained message)."""
    found: dict[str, bool] = {}
    nonce = secrets.token_hex(8)
    probe = f"{root}/probe/{nonce}"
    back = threading.Event()
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes) -> None:
        if topic == probe:
            back.set()
        elif payload and not back.is_set():
            with lock:
                found[topic] = True

    link = MqttLink(broker, client_id, clean_session=True)
    try:
        link.subscribe(f"{root}/#", on_message)
        link.start()
        if not link.wait_connected(CLEANUP_TIMEOUT_S):
            raise DemoError(_("could not reconnect to broker {url} to remove the "
                              "demo's retained messages under {root}/", url=broker.url(),
                              root=root))
        deadline = time.monotonic() + CLEANUP_TIMEOUT_S
        while not back.wait(0.5):  # the subscription may reach the broker after a probe
            if time.monotonic() > deadline:
                raise DemoError(_("broker {url} did not hand over the retained "
                                  "messages under {root}/; some may be left there",
                                  url=broker.url(), root=root))
            link.publish(probe, nonce.encode())
        with lock:
            retained = sorted(found)
        for topic in retained:
            if not link.wait_published(topic, b"", retain=True, timeout=CLEANUP_TIMEOUT_S):
                raise DemoError(_("broker {url} did not acknowledge removing the "
                                  "retained message on {topic}", url=broker.url(),
                                  topic=topic))
        return len(retained)
    finally:
        link.stop()


def run_demo(
    broker_url: str | None = None,
    ca_file: str | None = None,
    as_json: bool = False,
    keep: bool = False,
    out: TextIO | None = None,
    *,
    address: BrokerAddress | None = None,
    store_url: str | None = None,
) -> DemoResult:
    """Run the demo and report it. address: the broker of a controller config (URL, CA,
    login), instead of broker_url and ca_file; store_url: keep the controller's store
    there (a new, empty store), so that `loa-controller report --store URL` can be run on
    it afterwards. A failure is a result (ok False, reason), reported in one line; an
    interruption still removes the demo's retained messages."""
    if store_url is not None:
        _check_new_store(store_url)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="loa-demo-"))
    demo = Demo(broker_url, work, ca_file, address=address)
    try:
        with topics.prefix(f"{demo.client_prefix}/v1"):
            try:
                result = _run(demo, work, started, store_url)
            except (DemoError, ValueError, OSError) as exc:
                result = DemoResult(ok=False, reason=_one_line(exc))
            except Exception as exc:  # anything else, still one line for the reader
                log.debug("the demo failed", exc_info=True)
                result = DemoResult(ok=False, reason=f"{type(exc).__name__}: {_one_line(exc)}")
            finally:
                left = demo.close()
    finally:
        if keep:
            _say(_("demo files kept in {work}", work=work))
        else:
            shutil.rmtree(work, ignore_errors=True)
    if left:  # the demo's messages could not all be removed: say so, whatever it played
        result.ok = False
        result.reason = "; ".join(([result.reason] if result.reason else []) + left)
    result.elapsed_s = round(time.monotonic() - started, 1)
    _report(result, as_json, out or sys.stdout)
    if store_url is not None and result.ok:
        _say(_("the demo's store is kept at {url}: loa-controller report --store {url}",
               url=store_url))
    return result


def _check_new_store(url: str) -> None:
    """The demo writes a day of plays: refuse a store that holds plays already (the demo's
    play of the same day would count as sent, and nothing would air)."""
    from controller.store import Store

    if url.startswith("sqlite:///"):
        file = Path(url.removeprefix("sqlite:///"))
        if file.exists() and file.stat().st_size > 0:
            raise ValueError(_("{file} exists: give the demo a new store file (it keeps the "
                               "demo's plays there for `loa-controller report`)", file=file))
        file.parent.mkdir(parents=True, exist_ok=True)
        return
    store = Store(url)
    try:
        if store.history.first_play() is not None:
            raise ValueError(_("the store at {url} already holds plays: give the demo an "
                               "empty database", url=url))
    finally:
        store.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _run(demo: Demo, work: Path, started: float, store_url: str | None = None) -> DemoResult:
    broker = demo.broker()
    generate_keypair(work / "keys" / "controller.key", work / "keys" / "controller.pub")
    fleet = load_fleet(FLEET)
    communes = [n.id for n in fleet.communes()]
    _say(_("loaded {file}: {n} clusters in {communes} communes",
           file=FLEET.relative_to(ROOT), n=len(fleet.clusters), communes=len(communes)))
    bulletin_audio, urgent_audio = demo.audio()
    playlist = _playlist(work / "playlists", fleet.province.id, bulletin_audio)

    # The demo day: local time reads 06:00 minus a few seconds right now.
    real_now = datetime.now(TZ)
    six = real_now.replace(hour=6, minute=0, second=0, microsecond=0)
    clock = OffsetClock(six - STARTS_IN - real_now)
    demo.start_agents(fleet, broker, clock)
    controller = demo.start_controller(broker, playlist, clock, store_url)

    tracker = demo.tracker
    play_id = Occurrence("ban-tin-sang", six.astimezone(UTC), six.astimezone(UTC)).play_id
    everyone = sorted(fleet.clusters)
    _say(_("06:00 'Bản tin sáng' is scheduled for the whole province; waiting for it to "
           "start"))
    tracker.wait(play_id, everyone, FINAL_KINDS | {"playing"}, 30)
    playing = Counter(tracker.of(play_id).values())
    _say(_("bulletin: {n} of {total} clusters playing", n=playing.get("playing", 0),
           total=len(everyone)))

    urgent_targets = communes[:URGENT_COMMUNES]
    sent = controller.send_urgent(
        urgent_targets, [urgent_audio], title="Thông báo khẩn: triều cường",
        level="emergency",
    )
    urgent_id = sent[0].play_id.partition(PROFILE_MARK)[0]
    targeted = sorted(c for spec in sent for c in spec.clusters)
    _say(_("urgent announcement sent to {communes} communes "
           "({n} clusters); it preempts the bulletin there", communes=len(urgent_targets),
           n=len(targeted)))
    tracker.wait(urgent_id, targeted, FINAL_KINDS, 20)
    tracker.wait(play_id, everyone, FINAL_KINDS, BULLETIN_S + 20)
    result = _outcomes(fleet, tracker.of(play_id), tracker.of(urgent_id), targeted)
    result.elapsed_s = round(time.monotonic() - started, 1)
    return result


def _outcomes(
    fleet: Fleet, bulletin: dict[str, str], urgent: dict[str, str], targeted: list[str]
) -> DemoResult:
    result = DemoResult(ok=True)
    for cid in sorted(fleet.clusters):
        b = bulletin.get(cid)
        b_out = b if b in ("finished", "interrupted", "failed") else "missing"
        if cid in targeted:
            u = urgent.get(cid)
            u_out = u if u in ("finished", "failed") else "missing"
        else:
            u_out = "not-targeted"
        commune = fleet.commune_of(cid)
        result.clusters.append({
            "cluster": cid, "commune": commune.name, "commune_id": commune.id,
            "bulletin": b_out, "urgent": u_out,
        })
        if b_out not in ("finished", "interrupted"):
            result.problems.append(f"{cid}: bulletin {b_out}")
        if u_out not in ("finished", "not-targeted"):
            result.problems.append(f"{cid}: urgent announcement {u_out}")
    result.ok = not result.problems
    return result


def _report(result: DemoResult, as_json: bool, out: TextIO) -> None:
    if result.reason is not None and not result.clusters:  # it failed before any play
        if as_json:
            json.dump({"ok": False, "reason": result.reason, "elapsed_s": result.elapsed_s},
                      out, ensure_ascii=False)
            out.write("\n")
        else:
            _say(_("demo failed: {reason}", reason=result.reason))
        return
    if as_json:
        json.dump(
            {"ok": result.ok, "elapsed_s": result.elapsed_s, "clusters": result.clusters,
             "problems": result.problems,
             **({"reason": result.reason} if result.reason else {})},
            out, ensure_ascii=False, indent=2,
        )
        out.write("\n")
        return
    by_commune: dict[str, list[dict[str, str]]] = {}
    for row in result.clusters:
        by_commune.setdefault(row["commune"], []).append(row)
    rows = []
    for commune, items in sorted(by_commune.items()):
        b = Counter(i["bulletin"] for i in items)
        u = Counter(i["urgent"] for i in items)
        rows.append([
            commune,
            str(len(items)),
            str(b.get("finished", 0)),
            str(b.get("interrupted", 0)),
            str(b.get("failed", 0) + b.get("missing", 0)),
            "-" if u.get("not-targeted") == len(items) else
            f"{u.get('finished', 0)}/{len(items)}",
        ])
    out.write(format_table(
        [_("commune"), _("clusters"), _("bulletin finished"), _("interrupted"),
         _("failed/missing"), _("urgent finished")],
        rows,
    ) + "\n")
    total = len(result.clusters)
    done = sum(1 for r in result.clusters if r["bulletin"] == "finished")
    cut = sum(1 for r in result.clusters if r["bulletin"] == "interrupted")
    urgent = [r for r in result.clusters if r["urgent"] != "not-targeted"]
    out.write(_(
        "\n{total} clusters: bulletin finished on {done}, interrupted by the urgent "
        "announcement on {cut}; urgent announcement finished on "
        "{urgent_done} of {targeted} targeted. {s:.1f} s.\n", total=total, done=done, cut=cut,
        urgent_done=sum(1 for r in urgent if r["urgent"] == "finished"),
        targeted=len(urgent), s=result.elapsed_s,
    ))
    if result.problems:
        out.write(_("PROBLEMS:") + "\n" + "\n".join(f"  {p}" for p in result.problems)
                  + "\n")
    if result.reason:
        _say(_("demo failed: {reason}", reason=result.reason))
