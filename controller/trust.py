"""Which messages from the clusters to believe: those signed with the cluster's registered key.

Every event, state, heartbeat and chunk request an agent publishes comes in a signed
envelope (protocol.signing.seal). `ClusterKeys.open` checks it against the key
registered for the cluster whose topic it came on (controller/identities.py keeps them;
the enrolment desk loads them here and again whenever one is registered or retired) and
hands back the message with the id of the key that signed it. Refused, and counted:

- a message signed by a key that is not the cluster's registered one (a forgery, an
  old box, or a new box not enrolled yet);
- a signature that does not verify, or an envelope for another channel;
- an unsigned message, unless `require_signed_events` is false (upgrading from agents
  that did not sign) and the cluster has no registered key yet: then it is taken as
  before, unsigned, with a warning per cluster every hour.

Signatures are checked with libsodium (PyNaCl), not OpenSSL (cryptography, which the
agent uses): the intake checks one per message, and libsodium's Ed25519 check takes
about a third of the time here (scripts/bench.py intake).

Refusals are logged at most LOG_PER_MINUTE times a minute, then counted and summed up
in one line a minute: a flood of forgeries cannot fill the log. Memory is bounded: the
keys of the fleet's clusters, and at most MAX_WARNED clusters warned about.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from protocol.signing import Channel, Unsigned, key_from_text, unseal

log = logging.getLogger(__name__)

LOG_PER_MINUTE = 10
UNSIGNED_WARNING_S = 3600.0
MAX_WARNED = 10_000


class Refused(Exception):
    """A message not signed by its cluster's registered key; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    """A message believed: its JSON value, the key id that signed it and its place among
    what that key signed, (boot, count) (None: an unsigned message taken while upgrading)."""

    body: Any
    key: str | None
    n: tuple[int, int] | None = None


class RefusalLog:
    """Logs refusals, at most `per_minute` lines a minute; the rest are counted and told
    in one line when the minute is over. Thread-safe."""

    def __init__(self, logger: logging.Logger, what: str, per_minute: int = LOG_PER_MINUTE):
        self._log = logger
        self._what = what
        self._per_minute = per_minute
        self._lock = threading.Lock()
        self._window = 0.0
        self._logged = 0
        self._held = 0

    def refused(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            held = 0
            if now - self._window >= 60.0:
                held, self._held = self._held, 0
                self._window, self._logged = now, 0
            speak = self._logged < self._per_minute
            if speak:
                self._logged += 1
            else:
                self._held += 1
        if held:
            self._log.warning(
                "%d more %s were refused in the last minute (not logged one by one)",
                held, self._what,
            )
        if speak:
            self._log.warning(message, *args)


class ClusterKeys:
    """The registered key of every cluster, in memory, and the check of what they sign."""

    def __init__(self, *, require_signed: bool = True) -> None:
        self.require_signed = require_signed
        self._keys: dict[str, tuple[str, VerifyKey]] = {}
        self._texts: dict[str, str] = {}  # the keys as registered (base64), to see changes
        self._warned: dict[str, float] = {}  # unsigned clusters taken: when last warned
        self.refused = 0
        self.unsigned = 0  # unsigned messages taken (upgrading)
        self.refusals = RefusalLog(log, "messages from clusters")

    def replace_all(self, keys: Mapping[str, tuple[str, str]]) -> None:
        """The registered keys now: cluster -> (key id, public key as base64)."""
        loaded: dict[str, tuple[str, VerifyKey]] = {}
        texts: dict[str, str] = {}
        for cluster, (ident, text) in keys.items():
            same = self._keys.get(cluster)
            if same is not None and same[0] == ident and self._texts.get(cluster) == text:
                loaded[cluster], texts[cluster] = same, text  # unchanged: not read again
                continue
            try:
                raw = key_from_text(text).public_bytes(Encoding.Raw, PublicFormat.Raw)
                loaded[cluster], texts[cluster] = (ident, VerifyKey(raw)), text
            except ValueError as exc:
                log.error("the registered key of cluster %s is damaged (%s)", cluster, exc)
        self._keys = loaded  # one assignment: readers see the old or the new dict
        self._texts = texts

    def key_of(self, cluster: str) -> str | None:
        found = self._keys.get(cluster)
        return found[0] if found else None

    def open(self, cluster: str, channel: Channel, payload: bytes) -> Opened:
        """The message on a cluster's topic, if its registered key signed it; else raise
        Refused (counted and logged here) or MessageError (not even a message)."""
        sealed = unseal(payload)
        registered = self._keys.get(cluster)
        if isinstance(sealed, Unsigned):
            if self.require_signed or registered is not None:
                why = "unsigned" if registered is None else (
                    f"unsigned, and cluster {cluster} has registered key {registered[0]}"
                )
                raise self._refuse(cluster, channel, why)
            self._take_unsigned(cluster)
            return Opened(sealed.body, None)
        if sealed.channel != channel:
            raise self._refuse(cluster, channel, f"signed for the {sealed.channel} channel")
        if registered is None:
            if self.require_signed:
                raise self._refuse(
                    cluster, channel,
                    f"signed by key {sealed.key}, and no key is registered for cluster "
                    f"{cluster}: enrol it (loa-controller enrol token {cluster})",
                )
            self._take_unsigned(cluster)  # a new agent not enrolled yet, while upgrading
            return Opened(sealed.body, None)
        if sealed.key != registered[0]:
            raise self._refuse(
                cluster, channel,
                f"signed by key {sealed.key}, not by the cluster's registered key "
                f"{registered[0]} (a replaced box is registered with "
                f"loa-controller enrol replace {cluster})",
            )
        try:
            registered[1].verify(sealed.signed, sealed.sig)
        except (BadSignatureError, ValueError):
            why = f"bad signature: not made by key {sealed.key}"
            raise self._refuse(cluster, channel, why) from None
        return Opened(sealed.body, sealed.key, sealed.n)

    def _refuse(self, cluster: str, channel: str, why: str) -> Refused:
        self.refused += 1
        self.refusals.refused(
            "refused a message on cluster %s's %s topic: %s", cluster, channel, why
        )
        return Refused(why)

    def _take_unsigned(self, cluster: str) -> None:
        self.unsigned += 1
        now = time.monotonic()
        last = self._warned.get(cluster)
        if last is not None and now - last < UNSIGNED_WARNING_S:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned[cluster] = now
        log.warning(
            "took unsigned messages from cluster %s, which has no registered key: anyone "
            "on the broker can write these. Enrol it (loa-controller enrol token %s) and "
            "set require_signed_events: true once every cluster is registered",
            cluster, cluster,
        )

