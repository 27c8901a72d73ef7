"""/metrics, /healthz and /readyz of a running controller, its web app served by uvicorn,
real agents on a real mosquitto: the metrics parse with prometheus_client's own parser
and say what the fleet is; /readyz fails while the broker is down."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import MosquittoBroker, wait_until
from prometheus_client.parser import text_string_to_metric_families
from web_rig import PASSWORD, WebRig

from controller.samples import tone
from controller.urgent import AnnouncementRequest

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def rig(tmp_path: Path, mosquitto_broker: MosquittoBroker) -> Iterator[WebRig]:
    r = WebRig(tmp_path, mosquitto_broker.address)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def scrape(rig: WebRig) -> Samples:
    answer = httpx.get(rig.url + "/metrics", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_the_metrics_say_what_the_fleet_is(rig: WebRig) -> None:
    ctl = rig.controller
    samples = scrape(rig)
    # Clusters by state and commune, as the store has them: xa-a has 3, xa-b 1.
    rows = ctl.store.clusters.fleet_rows()
    assert {r.state for r in rows} == {"online"}
    assert value(samples, "loa_clusters", state="online", commune="xa-a",
                 commune_name="Xã An") == 3
    assert value(samples, "loa_clusters", state="online", commune="xa-b",
                 commune_name="Xã Bình") == 1
    assert value(samples, "loa_broker_connected") == 1
    assert value(samples, "loa_broker_disconnected_since_seconds") == 0
    planned = ctl.scheduler.planned()
    assert value(samples, "loa_scheduler_jobs") == len(planned)
    next_due = min(j.due for j in planned).timestamp() if planned else 0
    assert value(samples, "loa_scheduler_next_fire_seconds") == pytest.approx(next_due)

    # Sign-ins: one good, one wrong password.
    with rig.client() as c:
        assert c.post("/api/v1/login", json={"name": "can-bo-a", "password": PASSWORD}
                      ).status_code == 200
        assert c.post("/api/v1/login", json={"name": "can-bo-a", "password": "sai"}
                      ).status_code == 401

    # An announcement to xa-a: three clusters play it to the end.
    audio = tone(rig.tmp / "bao.wav", 0.5, freq=700)
    sent = rig.service.send(rig.user("can-bo-a"), AnnouncementRequest(
        targets=["xa-a"], level="priority", audio=audio, title="Báo thử"))
    wait_until(lambda: rig.service.get(rig.user("can-bo-a"), sent.id).counts().get("finished")
               == 3, 30, "three clusters to finish")
    wait_until(rig.controller.intake.drained, 10, "the intake drained")
    samples = scrape(rig)
    assert value(samples, "loa_plays_total", outcome="finished", level="priority") == 3
    assert value(samples, "loa_events_total") == ctl.intake.stats.events > 0
    assert value(samples, "loa_sent_bytes_total", kind="first") == (
        ctl.distributor.stats.chunk_bytes) > 0
    assert value(samples, "loa_web_signins_total", result="ok") == 1
    assert value(samples, "loa_web_signins_total", result="wrong_password") == 1
    assert value(samples, "loa_plays_total", outcome="not_received", level="unknown") == 0
    assert value(samples, "loa_intake_lag_seconds") >= 0


def test_ready_while_it_can_send_and_not_while_the_broker_is_down(
    rig: WebRig, mosquitto_broker: MosquittoBroker
) -> None:
    assert httpx.get(rig.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(rig.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready",
                            "checks": {"broker": "ok", "store": "ok", "schedule": "ok"}}

    mosquitto_broker.stop()
    wait_until(lambda: not rig.controller.link.connected, 10, "the controller's link down")
    ready = httpx.get(rig.url + "/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["broker"].startswith("the broker has been unreachable since ")
    assert checks["store"] == "ok"
    assert httpx.get(rig.url + "/healthz").status_code == 200  # alive all the same
    samples = scrape(rig)
    assert value(samples, "loa_broker_connected") == 0
    assert value(samples, "loa_broker_disconnected_since_seconds") > 0

    mosquitto_broker.start()
    wait_until(lambda: httpx.get(rig.url + "/readyz").status_code == 200, 30, "ready again")
    assert value(scrape(rig), "loa_broker_reconnects_total") == 1


def test_the_alert_rules_name_only_metrics_the_controller_exposes(rig: WebRig) -> None:
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "loa-alerts.yml").read_text())
    exposed = {name for name, _labels in scrape(rig)}
    named = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "annotations"} <= rule.keys(), rule
            named.update(re.findall(r"\bloa_[a-z_]+", rule["expr"]))
    assert named
    assert named <= exposed, named - exposed
