"""The enrolment desk: join requests from the clusters, and the controller's answers.

An agent that has no registered key yet publishes a join request on its own
`loa/v1/cluster/<cluster>/enrol` topic: its cluster id, its public key and the one-time
token of its provisioning bundle, signed with that key. The desk checks the signature
against the enclosed key (the sender holds it) and hands the request to
controller/identities.py, which checks the token and registers the key (a token that
approves itself) or keeps the request for a manager. The answer goes back as a signed
`enrolment` command on the cluster's command topic: registered, pending or refused.

Managers decide with `loa-controller enrol approve|reject` (another process) or on the
web app's enrolment page (this one): every POLL_S the desk loads the registered keys
again when they changed (controller/trust.py checks every message against them) and
tells the agents about decisions they have not heard of yet.

The network thread only queues requests (at most QUEUE_MAX, only for clusters of the
fleet, one per cluster and key every MIN_GAP_S, at most KEYS_PER_CLUSTER keys followed
per cluster); the desk's own thread does the rest, so a flood of join requests costs
bounded memory and no disk for refused tokens. A flood can delay an enrolment (the box
asks again, less and less often), never forge one; the broker's ACL, which lets only a
cluster's own credentials publish on its enrol topic, keeps others from trying.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from controller.identities import Identities
from controller.trust import ClusterKeys, RefusalLog
from protocol import topics
from protocol.clock import Clock
from protocol.messages import (
    Address,
    EnrolmentBody,
    EnrolmentStatus,
    JoinRequest,
    MessageError,
    load_json,
    parse,
)
from protocol.mqtt import Link
from protocol.signing import (
    SignatureError,
    Signer,
    Unsigned,
    key_from_text,
    key_id,
    unseal,
)

log = logging.getLogger(__name__)

POLL_S = 2.0
QUEUE_MAX = 256
MIN_GAP_S = 2.0
KEYS_PER_CLUSTER = 16
MAX_JOIN_BYTES = 4096
ANSWER_TTL = timedelta(hours=24)


@dataclass
class DeskStats:
    requests: int = 0
    registered: int = 0
    pending: int = 0
    refused: int = 0
    dropped: int = 0  # not looked at: too often, too many, too big, not in the fleet
    answers: int = 0


class EnrolmentDesk:
    def __init__(
        self,
        link: Link,
        identities: Identities,
        keys: ClusterKeys,
        signer: Signer,
        clock: Clock,
        *,
        in_fleet: Callable[[str], bool],
        poll_s: float = POLL_S,
    ) -> None:
        self._link = link
        self._identities = identities
        self._keys = keys
        self._signer = signer
        self._clock = clock
        self._in_fleet = in_fleet
        self._poll_s = poll_s
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_MAX)
        # cluster -> key id -> monotonic time of its last request taken (fleet-bounded).
        self._last: dict[str, OrderedDict[str, float]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = DeskStats()
        self._refusals = RefusalLog(log, "join requests")

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="enrolment", daemon=True)
        self._thread.start()
        self._link.subscribe(topics.all_clusters("enrol"), self._on_join)

    def stop(self) -> None:
        self._link.unsubscribe(topics.all_clusters("enrol"))
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def poke(self) -> None:
        """A decision was just recorded: tell the agent now rather than at the next poll."""
        self._wake.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(("", b""))

    @property
    def identities(self) -> Identities:
        return self._identities

    def approve(self, cluster: str, by: str, key: str | None = None) -> str:
        """A manager approves the cluster's waiting join request (the web app); the agent
        is told at once. The registered key id."""
        registered = self._identities.approve(cluster, by=by, now=self._clock.now(), key=key)
        self.poke()
        return registered

    def reject(self, cluster: str, by: str, key: str | None = None) -> str:
        """A manager rejects the cluster's waiting join request; the agent is told at once."""
        rejected = self._identities.reject(cluster, by=by, now=self._clock.now(), key=key)
        self.poke()
        return rejected

    def refresh(self) -> None:
        """Load the registered keys into the check of incoming messages."""
        self._keys.replace_all(self._identities.active_keys())

    # --- network thread ---------------------------------------------------------------------

    def _on_join(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None or parsed.scope != "cluster":
            return
        cluster = parsed.name
        if len(payload) > MAX_JOIN_BYTES or not self._in_fleet(cluster):
            self.stats.dropped += 1
            self._refusals.refused(
                "dropped a join request on %s: %s", topic,
                "too large" if len(payload) > MAX_JOIN_BYTES else "no such cluster in the fleet",
            )
            return
        claimed = _claimed_key(payload)
        now = time.monotonic()
        seen = self._last.setdefault(cluster, OrderedDict())
        if now - seen.get(claimed, -MIN_GAP_S) < MIN_GAP_S:
            self.stats.dropped += 1
            return
        seen[claimed] = now
        seen.move_to_end(claimed)
        while len(seen) > KEYS_PER_CLUSTER:
            seen.popitem(last=False)
        try:
            self._queue.put_nowait((cluster, payload))
        except queue.Full:
            self.stats.dropped += 1
            self._refusals.refused("dropped a join request of %s: too many waiting", cluster)

    # --- the desk's thread ------------------------------------------------------------------

    def _run(self) -> None:
        next_poll = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                item = ("", b"")
            if item is None:
                return
            cluster, payload = item
            try:
                if cluster:
                    self._handle(cluster, payload)
                if not cluster or time.monotonic() >= next_poll or self._wake.is_set():
                    self._wake.clear()
                    self._poll()
                    next_poll = time.monotonic() + self._poll_s
            except Exception as exc:  # the store is down: the agent asks again
                log.error("enrolment desk: %s; trying again in %.0f s", exc, self._poll_s)
                next_poll = time.monotonic() + self._poll_s

    def _poll(self) -> None:
        self.refresh()  # a few thousand rows at most: cheaper than knowing what changed
        answers = self._identities.unanswered()
        for answer in answers:
            self._answer(answer.cluster, answer.key_id, answer.status, answer.reason)
            log.info("told cluster %s that key %s is %s", answer.cluster, answer.key_id,
                     answer.status)
        self._identities.mark_answered([a.id for a in answers])

    def _handle(self, cluster: str, payload: bytes) -> None:
        self.stats.requests += 1
        try:
            sealed = unseal(payload)
            if isinstance(sealed, Unsigned):
                raise MessageError("unsigned: a join request is signed with the key it presents")
            if sealed.channel != "enrol":
                raise MessageError(f"signed for the {sealed.channel} channel")
            request = parse(JoinRequest, sealed.body)
            if request.cluster != cluster:
                raise MessageError(f"asks for cluster {request.cluster}")
            presented = key_from_text(request.public_key)
            if key_id(presented) != sealed.key:
                raise MessageError(f"signed as key {sealed.key}, presents another key")
            sealed.verify(presented)
        except (MessageError, SignatureError, ValueError) as exc:
            self.stats.refused += 1
            self._refusals.refused("refused a join request on cluster %s's topic: %s", cluster, exc)
            return
        outcome = self._identities.join(
            cluster, sealed.key, request.public_key, request.token, self._clock.now(),
            request.version,
        )
        if outcome.status == "registered":
            self.stats.registered += 1
            self.refresh()
            if outcome.decided:
                log.info("registered key %s of cluster %s (its token approves itself)",
                         sealed.key, cluster)
        elif outcome.status == "pending":
            self.stats.pending += 1
            if outcome.decided:
                log.warning(
                    "cluster %s asks to have key %s registered: approve it with "
                    "`loa-controller enrol approve %s` or on the web app's enrolment page "
                    "(reject: enrol reject)", cluster, sealed.key, cluster,
                )
        else:
            self.stats.refused += 1
            self._refusals.refused(
                "refused the join request of cluster %s (key %s): %s",
                cluster, sealed.key, outcome.reason,
            )
        self._answer(cluster, sealed.key, outcome.status, outcome.reason)

    def _answer(
        self, cluster: str, key: str, status: EnrolmentStatus, reason: str | None
    ) -> None:
        body = EnrolmentBody(cluster=cluster, key=key, status=status, reason=reason)
        command = self._signer.command(
            body, Address(clusters=[cluster]), self._clock.now(), ANSWER_TTL
        )
        self._link.publish(topics.cluster_topic(cluster, "command"), command.to_json())
        self.stats.answers += 1


def _claimed_key(payload: bytes) -> str:
    """The key id a join request says it is signed with ("" if it says none): what the
    rate limit counts per, checked by the desk's thread."""
    try:
        obj = load_json(payload)
    except MessageError:
        return ""
    key = obj.get("key") if isinstance(obj, dict) else None
    return key[:16] if isinstance(key, str) else ""
