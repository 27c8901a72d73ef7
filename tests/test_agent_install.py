"""The agent's install script and systemd unit, as far as they can be tried without
installing: bash syntax, the steps a dry run prints, and the unit verified by systemd
(`systemd-analyze verify`, where installed) and read key by key."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-agent.sh"
UNIT = ROOT / "scripts" / "loa-agent.service"


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_the_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    assert SCRIPT.stat().st_mode & 0o111, "install-agent.sh must be executable"


def test_a_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    result = dry_run("--no-apt", str(ROOT))
    assert result.returncode == 0, result.stderr
    commands = [
        " ".join(shlex.split(line[2:])) for line in result.stdout.splitlines()
        if line.startswith("+ ")
    ]
    text = "\n".join(commands)
    assert "usermod --append --groups audio,dialout loa" in text
    assert "install -d -o root -g loa -m 0750 /etc/loa" in text
    assert "install -d -o loa -g loa -m 0750 /var/lib/loa-agent" in text
    assert f"/opt/loa/bin/pip install --disable-pip-version-check --upgrade {ROOT}" in text
    assert "/opt/loa/bin/loa-agent version" in text
    assert "/etc/systemd/system/loa-agent.service" in text
    assert "systemctl enable loa-agent.service" in text
    if not Path("/etc/loa/agent.yaml").exists():  # first install: the example, then no start
        assert any(
            c.startswith("install -o root -g loa -m 0640 ") and c.endswith(
                "config/agent.example.yaml /etc/loa/agent.yaml"
            )
            for c in commands
        ), text
        assert "systemctl restart" not in text
        assert "Edit /etc/loa/agent.yaml" in result.stdout
    if not Path("/opt/loa/bin/python").exists():
        assert "python3 -m venv /opt/loa" in text
    assert not any("apt-get" in c for c in commands)  # --no-apt


def test_a_relative_package_path_is_made_absolute(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--no-apt", "."],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert f"--upgrade {ROOT}/." in result.stdout


def test_the_default_package_is_loa_from_pypi() -> None:
    result = dry_run("--no-apt")
    assert "--upgrade loa\n" in result.stdout


def test_unknown_options_and_help() -> None:
    bad = dry_run("--frobnicate")
    assert bad.returncode == 2
    assert "unknown option --frobnicate" in bad.stderr
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                           timeout=30, check=False)
    assert usage.returncode == 0
    assert "--dry-run" in usage.stdout


def test_without_root_and_without_dry_run_it_refuses(tmp_path: Path) -> None:
    require("setpriv", shutil.which("setpriv") is not None, "apt-get install util-linux")
    # The script goes in on stdin, from /: the checkout may be where nobody can read.
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "bash", "-s", "--", "--no-apt"],
        input=SCRIPT.read_text(), capture_output=True, text=True, timeout=30, check=False,
        cwd="/",
    )
    # Only root may change user: as anyone else the refusal cannot be tried (CI is root).
    require("permission to change user (setpriv as root)",
            "Operation not permitted" not in result.stderr, "run the tests as root")
    assert result.returncode == 1
    assert "run it as root" in result.stderr


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_the_unit_runs_the_agent_as_loa_and_always_restarts() -> None:
    service = unit()["Service"]
    assert service["ExecStart"] == "/opt/loa/bin/loa-agent run --config /etc/loa/agent.yaml"
    assert service["User"] == "loa"
    assert service["SupplementaryGroups"] == "audio dialout"
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_unit_is_hardened_and_writes_only_its_state() -> None:
    service = unit()["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/loa-agent"
    assert service["StateDirectory"] == "loa-agent"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    # No device restriction: the sound card and the relay's serial port must stay usable.
    assert "DevicePolicy" not in service
    assert "PrivateDevices" not in service
    assert "ProtectClock" not in service  # it would restrict devices too


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    require("systemd-analyze", shutil.which("systemd-analyze") is not None,
            "apt-get install systemd")
    # verify also checks that ExecStart exists: point it at a program that does.
    copy = tmp_path / "loa-agent.service"
    copy.write_text(UNIT.read_text().replace("/opt/loa/bin/loa-agent", shutil.which("true")
                                             or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if str(copy) in line]
    assert complaints == [], "\n".join(complaints)
