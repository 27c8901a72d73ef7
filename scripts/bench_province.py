"""The controller side of a bench: a made-up province, its keys, and the real Controller.

The fleet has N clusters, 15 to a commune, every commune directly under one province
(no districts), the way the 2025 reorganisation left most provinces. The controller is
`controller.main.Controller`, the one `loa-controller run` builds, on a temporary SQLite
store and content folder, with no playlists (the benches send plays themselves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from controller.audio import AudioSettings
from controller.fleet import load_fleet
from controller.main import Controller, Settings
from protocol.mqtt import BrokerAddress
from protocol.signing import generate_keypair

PROVINCE = "tinh-bench"
PER_COMMUNE = 15


@dataclass
class Province:
    work: Path
    fleet_path: Path
    province: str
    private_key: Path
    public_key: Path
    # cluster id -> the groups it listens to, nearest first (commune, province)
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clusters(self) -> list[str]:
        return sorted(self.groups)

    @property
    def communes(self) -> int:
        return len({groups[0] for groups in self.groups.values()})


def _fleet_yaml(clusters: int, per_commune: int) -> str:
    lines = [
        "province:",
        f"  id: {PROVINCE}",
        "  name: Tỉnh Thử Tải",
        "  communes:",
    ]
    communes = math.ceil(clusters / per_commune)
    left = clusters
    for c in range(1, communes + 1):
        here = min(per_commune, left)
        left -= here
        lines += [f"    - id: xa-{c:03d}", f"      name: Xã Thử {c}", "      clusters:"]
        lines += [
            f"        - {{id: xa-{c:03d}-{k:02d}, name: Cụm {c}.{k}}}" for k in range(1, here + 1)
        ]
    return "\n".join(lines) + "\n"


def make_province(work: Path, clusters: int, per_commune: int = PER_COMMUNE) -> Province:
    """Write the fleet file and the controller's key pair under work."""
    work.mkdir(parents=True, exist_ok=True)
    fleet_path = work / "fleet.yaml"
    fleet_path.write_text(_fleet_yaml(clusters, per_commune), encoding="utf-8")
    keys = work / "keys"
    generate_keypair(keys / "controller.key", keys / "controller.pub")
    fleet = load_fleet(fleet_path)
    return Province(
        work=work,
        fleet_path=fleet_path,
        province=PROVINCE,
        private_key=keys / "controller.key",
        public_key=keys / "controller.pub",
        groups={cid: fleet.groups_of(cid) for cid in fleet.clusters},
    )


def start_controller(
    province: Province, broker: BrokerAddress, audio: AudioSettings | None = None
) -> Controller:
    """The real controller on this province, connected and running."""
    settings = Settings(
        broker=broker,
        fleet_path=province.fleet_path,
        playlist_paths=[],
        store_url=f"sqlite:///{province.work / 'controller.db'}",
        private_key=province.private_key,
        content_dir=province.work / "content",
        audio=audio or AudioSettings(),
        client_id="loa-controller-bench",
        reload_interval_s=0,
    )
    controller = Controller(settings)
    controller.start()
    if not controller.link.wait_connected(10):
        controller.stop()
        raise RuntimeError(f"the controller could not connect to {broker.url()}")
    return controller
