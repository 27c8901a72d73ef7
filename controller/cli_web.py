"""`loa-controller user ...` and `loa-controller urgent ...`.

`user add/passwd/disable/enable/list` edit the users file of the web app (config
`web.users_file`, or `--users FILE`); the running controller reads it again on change.

`urgent` sends an announcement through the running controller's JSON API, signed in as a
user, so the same scope rules apply as in the page: a commune officer reaches only its
commune. With `--wait` it follows every targeted cluster live and exits 0 only when
every reachable cluster played the announcement to the end; offline clusters are listed.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import os
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import l10n
from protocol.l10n import N_, _

if TYPE_CHECKING:
    from controller.users import Role

# The same as controller.users.ROLES; not imported, so that `--help` needs no argon2.
ROLES = ("operator", "manager")
SIGN_IN_ENV = "LOA_PASSWORD"


# --- user --------------------------------------------------------------------------------


def _users_file(args: argparse.Namespace) -> Path:
    if args.users:
        return Path(args.users)
    from controller.config import load_controller_config

    config = load_controller_config(Path(args.config))
    if config.web is None:
        raise ValueError(_(
            "{config} has no web: section; add one with users_file, or give --users FILE",
            config=args.config,
        ))
    return config.web.users_file


def _check_scope(args: argparse.Namespace, scope: list[str]) -> None:
    """Refuse scope names the fleet does not know, when the config can be read."""
    if args.users and not Path(args.config).exists():
        return
    from controller.config import load_controller_config
    from controller.fleet import load_fleet

    config = load_controller_config(Path(args.config))
    fleet = load_fleet(config.fleet, config.speech.voice_names())
    for node in scope:
        if node not in fleet.nodes and node not in fleet.clusters:
            raise ValueError(fleet.target_problem(node) or _("unknown node {node!r}", node=node))


def _new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(_("New password: "))
    if getpass.getpass(_("Again: ")) != first:
        raise ValueError(_("the two passwords differ; nothing was changed"))
    return first


def cmd_user(args: argparse.Namespace) -> int:
    from controller import users

    path = _users_file(args)
    if args.action == "list":
        for u in users.load_users(path) if path.exists() else []:
            state = _("disabled") if u.disabled else _("active")
            print(f"{u.name:24} {u.role:9} {state:9} {' '.join(u.scope)}  {u.display_name}")
        return 0
    if args.action == "add":
        if not args.scope:
            raise ValueError(
                _("give the user's scope: --scope NODE (a commune id for commune staff)")
            )
        _check_scope(args, args.scope)
        role: Role = args.role
        user = users.add_user(path, args.name, role, args.scope, _new_password(args),
                              args.display_name or "")
        print(_("added {name} ({role}, scope {scope}) to {path}", name=user.name,
                role=user.role, scope=" ".join(user.scope), path=path))
    elif args.action == "passwd":
        users.find_user(path, args.name)  # before asking for a password
        users.set_password(path, args.name, _new_password(args))
        print(_("changed the password of {name} in {path}", name=args.name, path=path))
    elif args.action in ("disable", "enable"):
        users.set_disabled(path, args.name, args.action == "disable")
        if args.action == "disable":
            print(_("disabled {name} in {path}", name=args.name, path=path))
        else:
            print(_("enabled {name} in {path}", name=args.name, path=path))
    return 0


# --- urgent ------------------------------------------------------------------------------


class ApiFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _call(
    url: str, *, tls: ssl.SSLContext | None = None, token: str | None = None,
    body: Any = None, data: bytes | None = None, content_type: str | None = None,
    method: str | None = None,
) -> Any:
    # The API's errors in the language of this command line (English unless Vietnamese).
    headers = {"Accept": "application/json", "Accept-Language": l10n.current()}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        content_type = "application/json"
    if content_type:
        headers["Content-Type"] = content_type
    if not url.startswith(("http://", "https://")):
        raise ApiFailure(0, _("{url}: give the web app's address as http://host:port", url=url))
    # suspicious-url-open-usage: the scheme is checked just above.
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=120, context=tls) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or str(exc)
        except ValueError:
            message = str(exc)
        raise ApiFailure(exc.code, message) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise ApiFailure(0, _("{url}: the web app's certificate is not trusted ({why}); "
                                  "give it with --ca-file", url=url,
                                  why=exc.reason.verify_message)) from None
        raise ApiFailure(0, _("cannot reach the controller at {url}: {why}; is `loa-controller "
                              "run` running with a web: section?", url=url,
                              why=exc.reason)) from None
    return json.loads(raw) if raw else None


def _multipart(field: str, path: Path) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
        f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def _base_url(args: argparse.Namespace) -> tuple[str, ssl.SSLContext | None]:
    """The web app's address, and for https:// the TLS context that checks its certificate
    (the system's CAs, and --ca-file or the config's web.tls_cert_file)."""
    ca_file = args.ca_file
    if args.url:
        base = str(args.url).rstrip("/")
    else:
        from controller.config import load_controller_config

        config = load_controller_config(Path(args.config))
        if config.web is None:
            raise ValueError(_("{config} has no web: section; give --url http://host:port",
                               config=args.config))
        host = config.web.listen
        try:
            if ipaddress.ip_address(host).is_unspecified:  # listening everywhere: use loopback
                host = "127.0.0.1"
        except ValueError:
            pass  # a host name
        scheme = "http" if config.web.tls is None else "https"
        base = f"{scheme}://{host}:{config.web.port}"
        ca_file = ca_file or config.web.tls_cert_file
    if not base.startswith("https://"):
        return base, None
    tls = ssl.create_default_context()
    if ca_file:
        try:
            tls.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(_("--ca-file {file}: cannot read a PEM certificate from it ({why})",
                               file=ca_file, why=exc)) from None
    return base, tls


def _password(user: str) -> str:
    if SIGN_IN_ENV in os.environ:
        return os.environ[SIGN_IN_ENV]
    if not sys.stdin.isatty():
        raise ValueError(_("set {env} or run from a terminal to type {user}'s password",
                           env=SIGN_IN_ENV, user=user))
    return getpass.getpass(_("Password for {user}: ", user=user))


#: An announcement's per-cluster states, as `urgent --wait` prints them.
STATES = {
    "sent": N_("sent"), "offline": N_("offline"), "received": N_("received"),
    "delivered": N_("delivered"), "playing": N_("playing"), "finished": N_("finished"),
    "interrupted": N_("interrupted"), "missed": N_("missed"), "failed": N_("failed"),
}


def _line(c: dict[str, Any]) -> str:
    said = c.get("reason_text") or c.get("reason")
    reason = f" ({said})" if said else ""
    state = _(STATES[c["status"]]) if c["status"] in STATES else c["status"]
    return f"{time.strftime('%H:%M:%S')}  {c['cluster']:24} {state}{reason}"


def cmd_urgent(args: argparse.Namespace) -> int:
    if bool(args.audio) == bool(args.text):
        raise ValueError(_("give either --audio FILE or --text TEXT"))
    base, tls = _base_url(args)
    user = args.user or os.environ.get("LOA_USER") or getpass.getuser()
    try:
        login = _call(f"{base}/api/v1/login", tls=tls,
                      body={"name": user, "password": _password(user)})
        token = login["token"]
        audio_id = None
        if args.audio:
            data, ctype = _multipart("audio", Path(args.audio))
            audio_id = _call(f"{base}/api/v1/audio", tls=tls, token=token, data=data,
                             content_type=ctype)["audio_id"]
        sent = _call(f"{base}/api/v1/announcements", tls=tls, token=token, body={
            "targets": args.target, "level": args.level, "text": args.text,
            "audio_id": audio_id, "repeat": args.repeat, "gap_s": args.gap,
            "title": args.title,
        })
    except ApiFailure as exc:
        print(_("loa-controller urgent: refused ({status}): {why}",
                status=exc.status or _("no answer"), why=exc), file=sys.stderr)
        return 1
    print(_("sent {id} ({level}, {s:.1f} s) to {n} clusters", id=sent["id"],
            level=_(sent["level"]), s=float(sent["duration_s"]), n=len(sent["clusters"])))
    if not args.wait:
        print(_("follow it: {url}", url=f"{base}/announcements/{sent['id']}"))
        return 0
    timeout = args.timeout or (sent["duration_s"] + 120)
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    status = sent
    while True:
        for c in status["clusters"]:
            if seen.get(c["cluster"]) != c["status"]:
                seen[c["cluster"]] = c["status"]
                print(_line(c), flush=True)
        if status["done"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
        try:
            status = _call(f"{base}/api/v1/announcements/{sent['id']}?lang={l10n.current()}",
                           tls=tls, token=token)
        except ApiFailure as exc:
            print(_("loa-controller urgent: lost the controller: {why}", why=exc),
                  file=sys.stderr)
            return 1
    clusters = status["clusters"]
    offline = [c["cluster"] for c in clusters if c["status"] == "offline"]
    played = [c["cluster"] for c in clusters if c["status"] == "finished"]
    other = [c for c in clusters if c["status"] not in ("finished", "offline")]
    print(_("played on {n} of {reachable} reachable clusters", n=len(played),
            reachable=len(clusters) - len(offline)))
    if offline:
        print(_("offline ({n}): {clusters}", n=len(offline), clusters=" ".join(offline)))
    for c in other:
        print(_("not played: {line}", line=_line(c)))
    if not status["done"]:
        print(_("gave up waiting after {s:.0f} s", s=float(timeout)), file=sys.stderr)
    return 0 if status["all_played"] else 1


def register(sub: Any, default_config: str) -> None:
    """Add the `user` and `urgent` subcommands to loa-controller's parser."""
    p = sub.add_parser("user", help="manage the web app's users: add, passwd, disable, list")
    p.add_argument("action", choices=["add", "passwd", "disable", "enable", "list"])
    p.add_argument("name", nargs="?", help="the user's sign-in name")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.add_argument("--users", help="the users file (default: the config's web.users_file)")
    p.add_argument("--role", choices=ROLES, default="operator",
                   help="operator (commune staff) or manager")
    p.add_argument("--scope", action="append", default=[],
                   help="a fleet node id the user may reach (repeat for several)")
    p.add_argument("--display-name", help="the person's full name")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the new password from the first line of stdin")
    p.set_defaults(func=_user_with_name)

    p = sub.add_parser("urgent", help="send an urgent announcement now, and follow it")
    p.add_argument("--target", action="append", required=True,
                   help="node or cluster id (repeat for several)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--audio", help="an audio file (any format ffmpeg reads)")
    what.add_argument("--text", help="text spoken by the text-to-speech engine")
    p.add_argument("--level", choices=["priority", "emergency"], default="emergency")
    p.add_argument("--repeat", type=int, default=1, help="times to play it (1-10)")
    p.add_argument("--gap", type=float, default=3.0, help="seconds between repeats")
    p.add_argument("--title", help="a title for the history and the audit log")
    p.add_argument("--wait", action="store_true",
                   help="follow every cluster; exit 0 only if every reachable one played it")
    p.add_argument("--timeout", type=float, help="seconds to wait (default: length + 120)")
    p.add_argument("--url", help="the controller's web app (default: from the config)")
    p.add_argument("--ca-file", help="for https://: the certificate (or its CA) to trust, "
                   "besides the system's (default: the config's web.tls_cert_file)")
    p.add_argument("--user", help=f"sign in as (default: $LOA_USER); password: ${SIGN_IN_ENV}")
    p.add_argument("--config", default=default_config, help="controller config YAML")
    p.set_defaults(func=cmd_urgent)


def _user_with_name(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        raise ValueError(_("user {action}: give the user's name", action=args.action))
    return cmd_user(args)
