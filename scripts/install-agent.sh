#!/usr/bin/env bash
# Install (or upgrade) the Loa agent on a Debian or Raspberry Pi OS box.
#
#   sudo scripts/install-agent.sh [--dry-run] [--no-apt] [PACKAGE]
#
# PACKAGE is what pip installs: a checkout or wheel path (/home/pi/loa,
# ./loa-0.1.0-py3-none-any.whl) or a name on PyPI (default: loa).
#
# It creates the `loa` service user (groups audio and dialout: the sound card and the
# relay's serial port), /etc/loa and /var/lib/loa-agent, a virtual environment in
# /opt/loa with the agent, /etc/loa/agent.yaml from config/agent.example.yaml when there
# is none, and the systemd unit loa-agent.service (enabled). Run it again to upgrade:
# it changes only what is missing or out of date, and never overwrites the config.
#
# --dry-run prints every step instead of doing it (no root needed).
# --no-apt  does not install python3-venv, opus-tools, alsa-utils and ffmpeg with apt-get
#           (opusdec and aplay are the default output; ffmpeg the other one).
set -euo pipefail

PREFIX=/opt/loa
ETC=/etc/loa
STATE=/var/lib/loa-agent
UNIT=/etc/systemd/system/loa-agent.service
SERVICE_USER=loa
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EXAMPLE="$HERE/../config/agent.example.yaml"
UNIT_SOURCE="$HERE/loa-agent.service"

DRY_RUN=0
APT=1
PACKAGE=loa

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-apt) APT=0 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "install-agent.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) PACKAGE="$1" ;;
    esac
    shift
done

step() { printf '\n== %s\n' "$*"; }
run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if [[ $DRY_RUN == 0 && $EUID -ne 0 ]]; then
    echo "install-agent.sh: run it as root (sudo $0 $*), or with --dry-run to see the steps" >&2
    exit 1
fi
for needed in "$EXAMPLE" "$UNIT_SOURCE"; do
    if [[ ! -f $needed ]]; then
        echo "install-agent.sh: $needed is missing; run the script from a Loa checkout or release" >&2
        exit 1
    fi
done
if [[ -e $PACKAGE && $PACKAGE != /* ]]; then
    PACKAGE="$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE")"
fi

if [[ $APT == 1 ]]; then
    step "System packages: python3-venv, opus-tools, alsa-utils, ffmpeg"
    missing=()
    for pkg in python3-venv opus-tools alsa-utils ffmpeg; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        run apt-get update
        run apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "already installed"
    fi
fi

step "Service user $SERVICE_USER (groups audio, dialout)"
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    echo "user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "Loa speaker cluster agent" "$SERVICE_USER"
fi
run usermod --append --groups audio,dialout "$SERVICE_USER"

step "Folders: $ETC (config), $STATE (schedule, outbox, audio)"
run install -d -o root -g "$SERVICE_USER" -m 0750 "$ETC"
run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE"

step "The agent in $PREFIX (pip install $PACKAGE)"
if [[ -x $PREFIX/bin/python ]]; then
    echo "virtual environment $PREFIX exists"
else
    run python3 -m venv "$PREFIX"
fi
run "$PREFIX/bin/pip" install --disable-pip-version-check --upgrade "$PACKAGE"
run ln -sfn "$PREFIX/bin/loa-agent" /usr/local/bin/loa-agent
run "$PREFIX/bin/loa-agent" version

step "Configuration $ETC/agent.yaml"
FIRST_INSTALL=0
if [[ -e $ETC/agent.yaml ]]; then
    echo "$ETC/agent.yaml exists; left as it is"
else
    FIRST_INSTALL=1
    run install -o root -g "$SERVICE_USER" -m 0640 "$EXAMPLE" "$ETC/agent.yaml"
fi

step "systemd unit $UNIT"
run install -o root -g root -m 0644 "$UNIT_SOURCE" "$UNIT"
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system || $DRY_RUN == 1 ]]; then
    run systemctl daemon-reload
    run systemctl enable loa-agent.service
    if [[ $FIRST_INSTALL == 0 ]]; then
        run systemctl restart loa-agent.service
    fi
else
    echo "systemd is not running here: enable the unit yourself (systemctl enable --now loa-agent)"
fi

step "Next"
if [[ $FIRST_INSTALL == 1 ]]; then
    cat <<EOF
1. Install this cluster's bundle (made on the controller: loa-controller provision CLUSTER
   --out bundles): from its folder, install -o root -g loa -m 0640 * $ETC/
   Edit $ETC/agent.yaml: output and relay, as this box is wired. The bundle's
   enrolment.token lets the agent ask the controller to register the key it makes.
2. Without a bundle: edit $ETC/agent.yaml (cluster_id, broker_url, username,
   password_file, output, relay) and copy the controller's public key:
   scp controller:/etc/loa/keys/controller.pub $ETC/ and this cluster's one-time token
   (loa-controller enrol token CLUSTER --out FILE) to $ETC/enrolment.token
   (install -o root -g $SERVICE_USER -m 0640 FILE $ETC/enrolment.token)
3. Check everything, as the service user:  sudo -u $SERVICE_USER loa-agent check --click
4. Start it:  systemctl start loa-agent   (then: journalctl -u loa-agent -f); the
   identity line of loa-agent check then says whether its key is registered
EOF
else
    echo "Upgraded and restarted. Check it: sudo -u $SERVICE_USER loa-agent check"
fi
