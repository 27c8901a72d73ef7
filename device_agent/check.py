"""`loa-agent check`: everything a field technician needs to know, one line per check.

Each line is PASS, WARN (works, but something is not as it should be) or FAIL, with
what to try. The checks, in order:

- config: the file loads (every error as file:line:col, as `loa-agent run` reports it);
- controller key: controller_public_key is there and is an Ed25519 public key;
- data_dir: exists, is a folder, and the agent can write in it;
- identity: this cluster's own key (made by the agent in data_dir at its first start)
  and what the controller said of it: registered, waiting for a manager's approval,
  refused, or not asked yet (with the enrolment token the config names);
- disk space: room for the audio cache on data_dir's file system;
- broker: the host resolves (DNS), the port answers (TCP), TLS verifies (mqtts://),
  and the broker accepts this cluster's user name and password (MQTT CONNECT); each
  stage fails with its own reason;
- membership: the controller's retained membership for this cluster is on the broker
  and signed with the configured key (a wrong key or a misspelt cluster_id shows here;
  so does a membership another client overwrote, which the agent ignores: the advice
  then is about the broker, not the key);
- clock: not obviously wrong (before 2024, or behind the time the controller signed the
  membership), and synchronised by NTP according to the kernel. The offset to the
  controller itself is measured by the running agent from signed commands (see
  device_agent/health.py) and shown in its heartbeat;
- relay: the configured board answers (`--click`: switches it on, then off);
- output: a test tone goes through the configured output (`file`: a WAV appears;
  `ffmpeg`: the device opens and the tone plays).

It connects as `loa-check-<cluster>` with a clean session, so a running agent keeps its
own connection and queued commands.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import shutil
import socket
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_agent.config import AgentConfig, load_agent_config
from device_agent.identity import KEY_FILE, IdentityError, read_key, read_status
from device_agent.main import build_output, read_token
from device_agent.output import FileBackend
from device_agent.relays import RelayError, open_relay
from device_agent.tone import play_tone
from protocol import topics
from protocol.config_errors import ConfigError
from protocol.l10n import N_, When, _
from protocol.messages import Command, KeyRotationBody, MembershipBody, MessageError
from protocol.mqtt import MqttLink, UnreadableCa, describe_tls_failure, tls_context
from protocol.signing import (
    SignatureError,
    Verifier,
    key_from_text,
    key_id,
    key_text,
    load_public_key,
)

Status = Literal["PASS", "WARN", "FAIL"]

#: Below this much free space the agent cannot keep its audio: FAIL; below WARN_FREE, WARN.
FAIL_FREE = 200 * 1024 * 1024
WARN_FREE = 1024 * 1024 * 1024
#: A clock before this is unset (a box without a battery-backed clock boots in 1970).
EARLIEST_SANE = datetime(2024, 1, 1, tzinfo=UTC)
MAX_BEHIND = timedelta(minutes=5)  # the guard's allowance for commands "from the future"
MEMBERSHIP_WAIT_S = 1.5
CLICK_S = 1.0
TONE_S = 1.0
CHECK_TONE = "loa-check-tone"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    status: Status
    message: str
    fix: str | None = None
    details: tuple[str, ...] = field(default=())  # e.g. the config's file:line errors

    def lines(self) -> list[str]:
        """The result as printed, in the process's language (protocol.l10n)."""
        head = f"{_(STATUS_WORDS[self.status])}  {_(self.name)}: {self.message}"
        if self.fix:
            head += _(". Try: {fix}", fix=self.fix)
        return [head, *(f"      {d}" for d in self.details)]


Report = Callable[[CheckResult], None]

#: What a line's status and the checks' names say (the messages are written with _()).
STATUS_WORDS: dict[Status, str] = {"PASS": N_("PASS"), "WARN": N_("WARN"), "FAIL": N_("FAIL")}
NAMES = (
    N_("config"), N_("controller key"), N_("data_dir"), N_("identity"), N_("disk space"),
    N_("broker"), N_("membership"), N_("clock"), N_("relay"), N_("output"),
)


@dataclass
class _Context:
    config: AgentConfig
    click: bool
    timeout_s: float
    key: Ed25519PublicKey | None = None
    membership_payload: bytes | None = None
    rotation_payload: bytes | None = None  # the retained key rotation, if any
    membership_issued_at: datetime | None = None  # once verified
    logged_in: bool = False


def run_checks(
    config_path: Path, *, click: bool = False, timeout_s: float = 5.0, report: Report
) -> list[CheckResult]:
    """Run every check, calling report with each result as it comes; return them all."""
    results: list[CheckResult] = []

    def emit(result: CheckResult) -> None:
        results.append(result)
        report(result)

    try:
        config = load_agent_config(config_path)
    except ConfigError as exc:
        emit(CheckResult(
            "config", "FAIL", _("{path} has {n} error(s)", path=config_path, n=len(exc.problems)),
            _("correct each line below, then run the check again"),
            details=tuple(str(p) for p in exc.problems),
        ))
        return results
    except OSError as exc:
        emit(CheckResult(
            "config", "FAIL", _("cannot read {path} ({why})", path=config_path, why=exc.strerror),
            _("give the path of the agent's config with --config (default /etc/loa/agent.yaml); "
              "install-agent.sh writes one from config/agent.example.yaml"),
        ))
        return results
    emit(CheckResult(
        "config", "PASS",
        _("{path} is valid (cluster {cluster}, output {output}, relay {relay})",
          path=config_path, cluster=config.cluster_id, output=config.output.kind,
          relay=config.relay.driver),
    ))
    ctx = _Context(config, click, timeout_s)
    for check in (
        _check_key, _check_data_dir, _check_identity, _check_disk, _check_broker,
        _check_membership,
        _check_clock, _check_relay, _check_output,
    ):
        emit(check(ctx))
    return results


def summary(results: list[CheckResult]) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "WARN", "FAIL")}
    verdict = _("not ready: fix the FAIL lines") if counts["FAIL"] else _("ready")
    warnings = _("1 warning") if counts["WARN"] == 1 else _("{n} warnings", n=counts["WARN"])
    return _(
        "{n} checks: {passed} passed, {warnings}, {failed} failed; {verdict}",
        n=len(results), passed=counts["PASS"], warnings=warnings, failed=counts["FAIL"],
        verdict=verdict,
    )


# --- the checks ------------------------------------------------------------------------------


def _check_key(ctx: _Context) -> CheckResult:
    path = ctx.config.controller_public_key
    fix = _(
        "copy controller.pub from the controller (/etc/loa/keys/controller.pub, made by "
        "`loa-controller keygen`) to {path}", path=path,
    )
    try:
        ctx.key = load_public_key(path)
    except (ValueError, OSError) as exc:
        return CheckResult("controller key", "FAIL", str(exc).rstrip("."), fix)
    return CheckResult("controller key", "PASS", _("{path} is an Ed25519 public key", path=path))


def _check_data_dir(ctx: _Context) -> CheckResult:
    folder = ctx.config.data_dir
    if not folder.exists():
        return CheckResult(
            "data_dir", "FAIL", _("{folder} does not exist", folder=folder),
            _("create it: install -d -o loa -g loa -m 0750 {folder} (install-agent.sh does)",
              folder=folder),
        )
    if not folder.is_dir():
        return CheckResult(
            "data_dir", "FAIL", _("{folder} is not a folder", folder=folder),
            _("set data_dir to a folder"),
        )
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".loa-check-"):
            pass
    except OSError as exc:
        return CheckResult(
            "data_dir", "FAIL", _("{folder} is not writable ({why})", folder=folder,
                                  why=exc.strerror),
            _("make it writable by the agent's user (chown -R loa:loa {folder}), or set "
              "data_dir to a writable folder; run the check as that user "
              "(sudo -u loa loa-agent check)", folder=folder),
        )
    return CheckResult("data_dir", "PASS", _("{folder} is writable", folder=folder))


def _check_identity(ctx: _Context) -> CheckResult:
    config = ctx.config
    cid = config.cluster_id
    path = config.data_dir / KEY_FILE
    ask = _(
        "ask the controller's operator for a token (loa-controller enrol token {cid}; "
        "for a box replacing another: loa-controller enrol replace {cid}), copy it to this "
        "box, name its file in enrolment_token_file and restart the agent", cid=cid,
    )
    token: str | None = None
    token_problem: str | None = None
    try:
        token = read_token(config.enrolment_token_file)
    except ValueError as exc:
        token_problem = str(exc)
    if not path.exists():
        if token is not None:
            return CheckResult(
                "identity", "WARN",
                _("no key yet: the agent makes {path} at its first start and asks the "
                  "controller to register it with the enrolment token", path=path),
                _("start the agent (systemctl start loa-agent), then run the check again"),
            )
        return CheckResult(
            "identity", "FAIL",
            _("no key yet, and {problem}",
              problem=token_problem or _("no enrolment_token_file in the config")),
            ask,
        )
    try:
        ident = key_id(read_key(path).public_key())
    except IdentityError as exc:
        problem, _sep, fix = str(exc).partition("; ")
        return CheckResult(
            "identity", "FAIL", problem, fix or _("move the file away and restart the agent")
        )
    found = read_status(config.data_dir)
    if found is not None and found.key != ident:
        found = None  # an answer about a key this box no longer has
    if found is not None and found.status == "registered":
        return CheckResult(
            "identity", "PASS",
            _("key {key} is registered with the controller (since {at})", key=ident,
              at=When(found.at)),
        )
    if found is not None and found.status == "pending":
        return CheckResult(
            "identity", "WARN",
            _("key {key} waits for a manager's approval (asked {at}); nothing this cluster "
              "reports is stored until then", key=ident, at=When(found.at)),
            _("ask a manager to approve it: loa-controller enrol approve {cid} (key {key}), "
              "or on the web app's enrolment page", cid=cid, key=ident),
        )
    if found is not None and found.status == "refused":
        return CheckResult(
            "identity", "FAIL",
            _("the controller refused key {key}: {reason}", key=ident, reason=found.reason),
            ask,
        )
    if token is not None:
        asked = (
            _("asked {at}, no answer yet", at=When(found.at))
            if found is not None else _("not asked yet")
        )
        return CheckResult(
            "identity", "WARN",
            _("key {key} is not registered yet ({asked}); the agent asks with the "
              "enrolment token at every connection", key=ident, asked=asked),
            _("check that the controller runs on the same broker (loa-controller enrol list "
              "shows the request)"),
        )
    return CheckResult(
        "identity", "FAIL",
        _("key {key} is not registered with the controller, and {problem}: the controller "
          "stores nothing this cluster reports", key=ident,
          problem=token_problem or _("no enrolment_token_file in the config")),
        ask,
    )


def _check_disk(ctx: _Context) -> CheckResult:
    folder = ctx.config.data_dir
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return CheckResult(
            "disk space", "FAIL", _("cannot measure free space in {folder} ({why})",
                                    folder=folder, why=exc.strerror),
            _("check that data_dir exists"),
        )
    text = _("{gb:.1f} GB free in {folder}", gb=free / 1e9, folder=folder)
    fix = _(
        "free some space (journalctl --vacuum-size=50M, apt-get clean) or use a larger "
        "SD card: the agent keeps up to 1 GB of audio"
    )
    if free < FAIL_FREE:
        return CheckResult("disk space", "FAIL", _("only {mb} MB free in {folder}",
                                                   mb=free // (1024 * 1024), folder=folder), fix)
    if free < WARN_FREE:
        return CheckResult("disk space", "WARN", text, fix)
    return CheckResult("disk space", "PASS", text)


def _resolve(host: str, port: int, timeout_s: float) -> None:
    """getaddrinfo with a timeout (it has none of its own): TimeoutError when the resolver
    does not answer in time. The lookup runs on a daemon thread, which a hung resolver
    cannot keep from exiting."""
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, name="check-dns", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise TimeoutError(f"no DNS answer for {host} within {timeout_s:g} s")
    if outcome[0] is not None:
        raise outcome[0]


def _check_broker(ctx: _Context) -> CheckResult:
    address = ctx.config.broker()
    host, port, t = address.host, address.port, ctx.timeout_s
    where = f"{host}:{port}"
    data_fix = _("check the modem's data connection (ip route; ping 1.1.1.1)")
    try:
        _resolve(host, port, t)
    except socket.gaierror as exc:
        return CheckResult(
            "broker", "FAIL", _("cannot resolve the broker's name {host!r} (DNS: {why})",
                                host=host, why=exc.strerror),
            _("check the host name in broker_url, then DNS (cat /etc/resolv.conf) and {more}",
              more=data_fix),
        )
    except TimeoutError:
        return CheckResult(
            "broker", "FAIL", _("no DNS answer for {host!r} within {s:g} s", host=host, s=t),
            _("{more}; or write the broker's IP address in broker_url", more=data_fix),
        )
    try:
        sock = socket.create_connection((host, port), timeout=t)
    except ConnectionRefusedError:
        return CheckResult(
            "broker", "FAIL", _("{where} refused the connection", where=where),
            _("the broker is not running there, or listens on another port: check "
              "broker_url's port (1883 for mqtt://, 8883 for mqtts://) and the broker "
              "(systemctl status mosquitto)"),
        )
    except TimeoutError:
        return CheckResult(
            "broker", "FAIL", _("no answer from {where} within {s:g} s", where=where, s=t),
            _("a firewall drops the connection, the address is wrong, or there is no data "
              "connection: {more}", more=data_fix),
        )
    except OSError as exc:
        return CheckResult(
            "broker", "FAIL", _("cannot reach {where} ({why})", where=where, why=exc.strerror),
            data_fix,
        )
    with sock:
        if address.tls:
            problem = _tls_problem(sock, host, address.ca_file)
            if problem is not None:
                return problem
    return _mqtt_login(ctx, address.username)


def _tls_problem(sock: socket.socket, host: str, ca_file: str | None) -> CheckResult | None:
    try:
        context = tls_context(ca_file)
    except UnreadableCa as exc:
        return CheckResult(
            "broker", "FAIL", _("cannot read broker_ca_file {file} ({why})", file=ca_file,
                                why=exc.detail),
            _("set broker_ca_file to the broker's CA certificate (PEM)"),
        )
    try:
        with context.wrap_socket(sock, server_hostname=host):
            return None
    except OSError as exc:  # ssl.SSLError among them
        failure = describe_tls_failure(exc, host, "broker_ca_file")
        trusting = ca_file or _("the system CAs")
        return CheckResult(
            "broker", "FAIL", _("TLS with {host}: {reason} (trusting {trusting})", host=host,
                                reason=failure.reason, trusting=trusting),
            failure.hint,
        )


def _mqtt_login(ctx: _Context, username: str | None) -> CheckResult:
    config = ctx.config
    address = config.broker()
    who = (_("user {name!r}", name=username) if username
           else _("an anonymous client (no username)"))
    got_membership = threading.Event()

    def on_membership(_topic: str, payload: bytes) -> None:
        if payload:
            ctx.membership_payload = payload
            got_membership.set()

    def on_rotation(_topic: str, payload: bytes) -> None:
        ctx.rotation_payload = payload or None

    try:
        link = MqttLink(address, f"loa-check-{config.cluster_id}", keepalive=30,
                        ca_setting="broker_ca_file")
    except (OSError, ValueError) as exc:
        return CheckResult("broker", "FAIL", _("cannot set up the connection: {why}", why=exc),
                           _("check broker_url and broker_ca_file"))
    # The key topic first: its retained rotation arrives before the membership it signs.
    link.subscribe(topics.cluster_topic(config.cluster_id, "key"), on_rotation)
    link.subscribe(topics.cluster_topic(config.cluster_id, "membership"), on_membership)
    started = time.monotonic()
    link.start()
    try:
        deadline = started + ctx.timeout_s
        while time.monotonic() < deadline and link.last_refusal is None:
            if link.wait_connected(0.05):
                break
        connected = link.connected
        refusal = link.last_refusal
        took = time.monotonic() - started
        if connected:
            got_membership.wait(MEMBERSHIP_WAIT_S)
    finally:
        link.stop()
    if connected:
        ctx.logged_in = True
        return CheckResult(
            "broker", "PASS", _("logged in to {url} as {who} in {ms:.0f} ms",
                                url=address.url(), who=who, ms=took * 1000),
        )
    if refusal is not None:
        if refusal.login:
            return CheckResult(
                "broker", "FAIL", _("the broker refused the login of {who}: {reason}", who=who,
                                    reason=refusal.reason),
                _("check username and password_file in the config against the cluster's "
                  "bundle (loa-controller provision), and that the broker's password file and "
                  "ACL were generated after the cluster was added "
                  "(loa-controller broker-config)"),
            )
        return CheckResult(
            "broker", "FAIL", _("the broker refused the connection: {reason}",
                                reason=refusal.reason),
            _("look at the broker's log for the reason"),
        )
    return CheckResult(
        "broker", "FAIL", _("{where} answers but no MQTT login within {s:g} s",
                            where=f"{address.host}:{address.port}", s=ctx.timeout_s),
        _("is it an MQTT broker's port? a TLS port reached with mqtt:// stays silent: write "
          "mqtts://"),
    )


def _republished() -> str:
    return _("the controller publishes every cluster's membership when it starts, after "
             "every reconnection to the broker and every membership_republish (10 minutes "
             "by default)")


def _overwritten() -> str:
    return _("the agent ignores it: a running agent keeps the last signed membership it "
             "had, a new one uses the groups of its config and waits. The controller "
             "publishes every cluster's membership when it starts, after every reconnection "
             "to the broker and every membership_republish (10 minutes by default): run this "
             "check again after that, or restart loa-controller. Make the broker refuse "
             "membership topics to everyone but the controller (its ACL: loa-controller "
             "broker-config, docs/operations.md)")


def _check_membership(ctx: _Context) -> CheckResult:
    cluster = ctx.config.cluster_id
    payload = ctx.membership_payload
    if not ctx.logged_in:
        return CheckResult("membership", "WARN", _("not checked: no login to the broker"),
                           _("fix the broker line first"))
    if payload is None:
        return CheckResult(
            "membership", "WARN",
            _("the broker holds no membership for cluster {cluster!r}", cluster=cluster),
            _("check that cluster_id is spelt exactly as in the controller's fleet.yaml and "
              "that loa-controller runs ({why}); the groups in this config are used meanwhile",
              why=_republished()),
        )
    if ctx.key is None:
        return CheckResult("membership", "WARN", _("found on the broker, but not verified"),
                           _("fix the controller key first"))
    rotated = _rotation(ctx, ctx.key)
    if rotated is not None:
        try:
            command = Verifier(rotated[0]).verify(payload)
        except (SignatureError, MessageError):
            pass
        else:
            return _membership_result(ctx, command, _(
                "with key {new}, which the controller rotated to from {old}",
                new=key_id(rotated[0]), old=key_id(ctx.key),
            ))
        if rotated[1] <= datetime.now(UTC):
            # past the overlap, only the new key counts
            return CheckResult(
                "membership", "FAIL",
                _("the controller's membership for {cluster} is not signed with key {key}, the "
                  "one it rotated to (the old key is refused since {at})", cluster=cluster,
                  key=key_id(rotated[0]), at=When(rotated[1])),
                _("restart the controller: it still signs with its old key"),
            )
    try:
        command = Verifier(ctx.key).verify(payload)
    except SignatureError as exc:
        if "unsigned" in str(exc):
            return CheckResult(
                "membership", "FAIL",
                _("the membership on the broker for {cluster} is not signed at all: another "
                  "client overwrote the controller's", cluster=cluster),
                _overwritten(),
            )
        key_file = ctx.config.controller_public_key
        try:
            digest = hashlib.sha256(key_file.read_bytes()).hexdigest()[:16]
        except OSError:
            digest = "?"
        return CheckResult(
            "membership", "FAIL",
            _("the controller's membership for {cluster} is not signed with {file} ({why})",
              cluster=cluster, file=key_file, why=exc),
            _("either this key is not the one of the controller that uses this broker (this "
              "cluster would refuse every command): compare `sha256sum controller.pub` on the "
              "controller with this one's ({digest}...) and copy the controller's; or another "
              "client overwrote the membership: {overwritten}", digest=digest,
              overwritten=_overwritten()),
        )
    except MessageError as exc:
        return CheckResult(
            "membership", "FAIL",
            _("what the broker holds as membership for {cluster} is not a command ({why}): "
              "another client overwrote the controller's", cluster=cluster, why=exc),
            _overwritten(),
        )
    return _membership_result(ctx, command, "")


def _rotation(ctx: _Context, key: Ed25519PublicKey) -> tuple[Ed25519PublicKey, datetime] | None:
    """The key the retained rotation moves to and when the old retires, if the rotation
    is signed by the configured key (as the agent would take it)."""
    if ctx.rotation_payload is None:
        return None
    try:
        command = Verifier(key).verify(ctx.rotation_payload)
        body = command.body
        if not isinstance(body, KeyRotationBody) or body.old_key != key_text(key):
            return None
        return key_from_text(body.new_key), body.retire_at
    except (SignatureError, MessageError, ValueError):
        return None


def _membership_result(ctx: _Context, command: Command, how: str) -> CheckResult:
    cluster = ctx.config.cluster_id
    body = command.body
    if not isinstance(body, MembershipBody) or body.cluster != cluster:
        return CheckResult(
            "membership", "FAIL",
            _("the broker holds a signed {kind} command on {cluster}'s membership topic: "
              "someone copied it there", kind=body.kind, cluster=cluster),
            _overwritten(),
        )
    ctx.membership_issued_at = command.issued_at
    return CheckResult(
        "membership", "PASS",
        _("signed by the controller{how} at {at} (version {version}): groups {groups}",
          how=f" ({how})" if how else "", at=When(command.issued_at, seconds=True),
          version=body.version or 0, groups=", ".join(body.groups) or _("(none)")),
    )


# struct timex of adjtimex(2), up to the fields read here; the kernel writes more, so the
# buffer is padded well beyond the largest layout.
TIME_ERROR = 5


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 512),
    ]


def kernel_clock_sync() -> tuple[bool, float] | None:
    """(synchronised, estimated error in s) as the kernel's NTP state says; None if unknown."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR, timex.esterror / 1e6


def _check_clock(ctx: _Context) -> CheckResult:
    now = datetime.now(UTC)
    ntp_fix = _(
        "turn on time sync (timedatectl set-ntp true, or install chrony) and check the data "
        "connection; commands from the controller are refused when the clocks differ by "
        "more than 5 minutes"
    )
    if now < EARLIEST_SANE:
        return CheckResult("clock", "FAIL", _("this box's clock says {at} UTC",
                                              at=When(now, UTC)), ntp_fix)
    issued = ctx.membership_issued_at
    if issued is not None and issued > now + MAX_BEHIND:
        behind = (issued - now).total_seconds() / 60
        return CheckResult(
            "clock", "FAIL",
            _("at least {minutes:.0f} min behind the controller's (its membership was signed "
              "at {at} UTC, this box says {now:%H:%M})", minutes=behind, at=When(issued, UTC),
              now=now), ntp_fix,
        )
    how = _(
        "the agent measures its offset to the controller from signed commands and shows "
        "it in its heartbeat (loa-controller fleet)"
    )
    sync = kernel_clock_sync()
    if sync is None:
        return CheckResult("clock", "WARN", _("cannot ask the kernel whether NTP keeps the "
                                              "clock; {how}", how=how), ntp_fix)
    synced, error_s = sync
    if not synced:
        return CheckResult("clock", "WARN", _("the kernel says the clock is not synchronised "
                                              "(no NTP); {how}", how=how), ntp_fix)
    return CheckResult("clock", "PASS", _("synchronised by NTP (estimated error ±{ms:.0f} ms); "
                                          "{how}", ms=error_s * 1000, how=how))


def _check_relay(ctx: _Context) -> CheckResult:
    relay_config = ctx.config.relay
    if relay_config.driver == "none":
        return CheckResult("relay", "PASS", _("none configured (relay.driver: none): the "
                                              "amplifier is taken to be always on"))
    where = _("{driver} board on {url}", driver=relay_config.driver, url=relay_config.url)
    try:
        relay = open_relay(relay_config)
    except RelayError as exc:
        return CheckResult("relay", "FAIL", str(exc))
    try:
        state = relay.state()
        said = {True: _("relay on"), False: _("relay off"),
                None: _("relay state not reported")}[state]
        if not ctx.click:
            return CheckResult("relay", "PASS", _("{where} answers ({said}); --click switches "
                                                  "it on and off", where=where, said=said))
        relay.switch(True)
        time.sleep(CLICK_S)
        relay.switch(False)
        return CheckResult("relay", "PASS", _("{where} switched on, then off after {s:g} s "
                                              "(listen for the click)", where=where, s=CLICK_S))
    except RelayError as exc:
        return CheckResult("relay", "FAIL", str(exc))
    finally:
        relay.close()


def _check_output(ctx: _Context) -> CheckResult:
    config = ctx.config
    try:
        output = build_output(config)
    except ValueError as exc:
        return CheckResult("output", "FAIL", str(exc), _("fix the output section of the config"))
    if config.output.kind == "null":
        return CheckResult(
            "output", "WARN", _("null output: plays nothing (simulation)"),
            _("for speakers set output.kind: opusdec and output.device (e.g. alsa:default)"),
        )
    problem = output.check()
    if problem is not None:
        return CheckResult("output", "FAIL", problem)
    with tempfile.TemporaryDirectory(prefix="loa-check-") as folder:
        result = play_tone(output, Path(folder), TONE_S, label=CHECK_TONE,
                           volume=config.output.volume)
    outcome = result.outcome
    if outcome.error or not outcome.completed:
        return CheckResult("output", "FAIL", _("the test tone did not play: {why}",
                                               why=outcome.error or _("stopped")))
    if isinstance(output, FileBackend):
        wav = result.wav
        if wav is None:
            return CheckResult("output", "FAIL", _("the test tone left no WAV in {folder}",
                                                   folder=output.out_dir))
        with wave.open(str(wav), "rb") as audio:
            seconds = audio.getnframes() / audio.getframerate()
        return CheckResult("output", "PASS", _("file: test tone written to {wav} ({s:.1f} s)",
                                               wav=wav, s=seconds))
    device = config.output.device or "alsa:default"
    return CheckResult(
        "output", "PASS", _("{name}: {device} opened and played a {s:g} s test tone (the "
                            "amplifier stays off: loa-agent test-tone powers it to listen)",
                            name=output.name, device=device, s=TONE_S),
    )
