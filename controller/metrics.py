"""What the controller exposes to Prometheus (`/metrics`), and whether it is ready
(`/readyz`).

Every value is read at the scrape from the parts that hold it (a custom collector, no
second bookkeeping that could drift): clusters by state and commune from the store;
plays by outcome and level, events taken in and the intake's lag from the intake;
bytes and commands sent from the distributor; the broker link from
controller/broker_state.py; the scheduler's jobs and next fire time; web sign-ins and
refusals from the web app. Counters count since the controller started, as Prometheus
expects (`rate()` handles the restarts).

Readiness: the broker connected, the store writable (a mark written), the schedule
loaded (the scheduler runs with playlists). Each check says what is wrong when it fails.
A standby controller (controller/leadership.py) is ready when its store is: it serves
the web app and forwards sends; the broker and the schedule are the leader's.
`loa_controller_leader` says which one leads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from controller.store import FINAL_KINDS

#: The text format's content type (version 0.0.4), as Prometheus asks for it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READY_MARK = "ready-check"


@dataclass(frozen=True)
class SignIns:
    """The web app's sign-ins since the start (controller.web.signin.RefusalLog)."""

    signed_in: int
    wrong: int
    limited: int


class ControllerCollector(Collector):
    """The metrics of a running controller.main.Controller (module docstring)."""

    def __init__(self, controller: Any, sign_ins: Callable[[], SignIns] | None = None) -> None:
        self._ctl = controller
        self._sign_ins = sign_ins

    def collect(self) -> Iterator[Metric]:
        ctl = self._ctl
        yield from self._clusters()
        yield from self._plays()
        intake = ctl.intake.stats
        yield _counter("loa_events", "Status events taken in and stored (new, not duplicates)",
                       intake.events)
        yield _counter("loa_event_duplicates", "Status events received again (resends)",
                       intake.duplicates)
        yield _counter("loa_messages_refused", "Messages from clusters refused (invalid, "
                       "unsigned, forged, replayed)", intake.invalid)
        yield _gauge("loa_intake_lag_seconds", "How long the oldest message waiting to be "
                     "stored has waited", ctl.intake.lag_s())
        dist = ctl.distributor.stats
        sent = CounterMetricFamily("loa_sent_bytes", "Audio bytes published to the broker",
                                   labels=["kind"])
        sent.add_metric(["first"], dist.chunk_bytes)
        sent.add_metric(["resent"], dist.resent_bytes)
        yield sent
        yield _counter("loa_commands_sent", "Signed play and stop commands published, resends "
                       "included (acknowledgements are not counted)", dist.commands)
        yield from self._broker()
        yield from self._scheduler()
        yield from self._leadership()
        yield from self._web()

    def _clusters(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str, str], int] = {}
        for row in self._ctl.store.clusters.fleet_rows():
            key = (row.state or "unknown", row.commune, row.commune_name)
            counts[key] = counts.get(key, 0) + 1
        family = GaugeMetricFamily(
            "loa_clusters", "Clusters of the fleet by state and commune, as last heard "
            "(see loa_broker_connected: while it is 0, nothing is heard)",
            labels=["state", "commune", "commune_name"],
        )
        for (state, commune, name), count in sorted(counts.items()):
            family.add_metric([state, commune, name], count)
        yield family

    def _plays(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "loa_plays", "Plays ended on the clusters by outcome (finished, interrupted, "
            "missed, failed, expired; not_received: no confirmation by the latest start) and "
            "level", labels=["outcome", "level"],
        )
        for (kind, level), count in sorted(self._ctl.intake.stats.by_kind_level.items()):
            if kind in FINAL_KINDS:
                family.add_metric([kind, level or "unknown"], count)
        family.add_metric(["not_received", "unknown"],
                          self._ctl.confirmations.stats.not_received)
        yield family

    def _broker(self) -> Iterator[Metric]:
        state = self._ctl.broker_state
        yield _gauge("loa_broker_connected", "1 while the controller is connected to its "
                     "broker", 1 if state.connected else 0)
        yield _counter("loa_broker_reconnects", "Connections to the broker after the first",
                       state.reconnects)
        since = state.down_since()
        yield _gauge("loa_broker_disconnected_since_seconds", "Unix time since when the "
                     "broker is unreachable; 0 while connected",
                     since.timestamp() if since is not None else 0)
        yield _counter("loa_broker_takeovers", "Connections taken over by another client "
                       "with the same client id", getattr(self._ctl.link, "takeovers", 0))

    def _scheduler(self) -> Iterator[Metric]:
        jobs = self._ctl.scheduler.planned()
        yield _gauge("loa_scheduler_jobs", "Scheduled occurrences waiting to be dispatched",
                     len(jobs))
        due = min((j.due for j in jobs), default=None)
        yield _gauge("loa_scheduler_next_fire_seconds", "Unix time of the next dispatch; 0 "
                     "when none is planned", due.timestamp() if due is not None else 0)

    def _leadership(self) -> Iterator[Metric]:
        leadership = getattr(self._ctl, "leadership", None)
        if leadership is None:  # acting alone: it leads
            yield _gauge("loa_controller_leader", "1 while this controller leads (schedules, "
                         "dispatches, takes in events), 0 while it stands by", 1)
            return
        view = leadership.view()
        yield _gauge("loa_controller_leader", "1 while this controller leads (schedules, "
                     "dispatches, takes in events), 0 while it stands by",
                     1 if leadership.is_leader else 0)
        yield _gauge("loa_leadership_term", "The leadership's term: one more at every change "
                     "of leader", view.term)
        yield _gauge("loa_leader_since_seconds", "Unix time since when the current leader "
                     "leads; 0 while none does",
                     view.since.timestamp() if view.since is not None else 0)

    def _web(self) -> Iterator[Metric]:
        if self._sign_ins is None:
            return
        found = self._sign_ins()
        family = CounterMetricFamily("loa_web_signins", "Web and API sign-ins by result",
                                     labels=["result"])
        family.add_metric(["ok"], found.signed_in)
        family.add_metric(["wrong_password"], found.wrong)
        family.add_metric(["limited"], found.limited)
        yield family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def registry_for(
    controller: Any, sign_ins: Callable[[], SignIns] | None = None
) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) with the controller's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(controller, sign_ins))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The metrics in the Prometheus text format."""
    return generate_latest(registry)


def readiness(controller: Any) -> dict[str, str | None]:
    """Each readiness check and what is wrong with it (None: fine)."""
    checks: dict[str, str | None] = {}
    leadership = getattr(controller, "leadership", None)
    standby = leadership is not None and not leadership.is_leader
    if not standby:  # a standby neither connects to the broker nor schedules
        checks["broker"] = controller.broker_state.unreachable()
    try:
        controller.store.marks.set(READY_MARK, controller.clock.now())
        checks["store"] = None
    except Exception as exc:  # any failure to write is the answer
        checks["store"] = f"the store refused a write: {type(exc).__name__}: {exc}"
    scheduler = controller.scheduler
    if standby:
        pass
    elif scheduler.playlists is None:
        checks["schedule"] = "no playlists loaded"
    elif not scheduler.running:
        checks["schedule"] = "the scheduler is not running"
    else:
        checks["schedule"] = None
    return checks
