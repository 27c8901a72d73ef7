"""The sign-in limit: failures slow a guesser down without locking the rightful user out.

Failed sign-ins are counted per user name (across addresses), per client address
(across names) and per (name, address) pair. An attempt must wait when:

- its **address** has failed `address_free` times or more: 1 s after the last
  failure, doubling with each further failure, at most `cap_s`. This slows one address
  trying many names (and many passwords);
- its **name** has failed `name_free` times or more, *and this address has itself
  failed for this name within `pair_forget_s`*: the same doubling wait from the name's
  last failure, at most `cap_s`. An address that has not failed for a name is never held
  back by other addresses' failures for it, so the rightful user, signing in from their
  own phone, gets in at once while a guesser elsewhere is slowed. Once the user
  mistypes, they wait at most `cap_s`; if guessers elsewhere keep failing on the name
  meanwhile, at most `pair_forget_s` after their own last failure.

A count is forgotten `forget_s` after its last failure (a pair `pair_forget_s` after
it); a successful sign-in forgets
the name's count and its pair with that address (not the address's own count: a
guesser holding one account must not clear its address's count by signing in with it).
Only failures are counted: an attempt refused for waiting verifies no password and
counts nothing.

Memory stays bounded whatever is tried: each of the three tables keeps at most
`capacity` entries (the ones changed longest ago go first, as do expired ones); a name
is kept as a 16-byte digest, whatever its length; IPv6 addresses are counted per /64
(one subscriber's whole prefix), so rotating addresses within it gains nothing.
Names reach the limiter normalised (controller.users.normal_name), once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """The numbers of the sign-in limit (docs/web.md, "Sign-in limit")."""

    #: Tries of one name that wait for nothing (then its failing addresses wait).
    name_free: int = 3
    #: Tries from one address that wait for nothing.
    address_free: int = 10
    #: The first wait, doubled with each further failure.
    first_wait_s: float = 1.0
    #: The longest wait, however many failures.
    cap_s: float = 60.0
    #: A count is forgotten this long after its last failure.
    forget_s: float = 900.0
    #: An address has stopped failing a name this long after its last failure for it:
    #: the longest a rightful user who mistyped waits while others keep guessing.
    pair_forget_s: float = 300.0
    #: Entries kept per table (names, addresses, pairs).
    capacity: int = 10_000

    def wait(self, failures: int, free: int) -> float:
        """The wait after the last of `failures` failures, when `free` tries wait for
        nothing: 0 before the free ones are used up, then first_wait_s, doubling."""
        beyond = failures - free
        if beyond < 0:
            return 0.0
        # 2 ** 63 is far past any cap; min() before pow keeps the number small.
        return min(self.cap_s, self.first_wait_s * 2.0 ** min(beyond, 63))


@dataclass
class _Count:
    failures: int
    last: float


class _Table:
    """Counts by key, the least recently changed first; bounded in size and in age."""

    def __init__(self, capacity: int, forget_s: float) -> None:
        self._capacity = capacity
        self._forget = forget_s
        self._rows: OrderedDict[Hashable, _Count] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: Hashable, now: float) -> _Count | None:
        found = self._rows.get(key)
        if found is not None and now - found.last > self._forget:
            del self._rows[key]
            return None
        return found

    def add(self, key: Hashable, now: float) -> _Count:
        found = self.get(key, now)
        if found is None:
            found = _Count(0, now)
            self._rows[key] = found
        found.failures += 1
        found.last = now
        self._rows.move_to_end(key)
        self._trim(now)
        return found

    def forget(self, key: Hashable) -> None:
        self._rows.pop(key, None)

    def _trim(self, now: float) -> None:
        while self._rows:
            key, oldest = next(iter(self._rows.items()))
            if len(self._rows) <= self._capacity and now - oldest.last <= self._forget:
                return
            del self._rows[key]


def name_key(name: str) -> bytes:
    """How a name is kept: 16 bytes, whatever was typed."""
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def address_key(address: str) -> str:
    """How an address is kept: IPv4 as it is, IPv6 by its /64, anything else as given
    (cut to 64 characters)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SignInLimiter:
    """Failed sign-ins per name, per address and per pair (see the module's docstring)."""

    def __init__(
        self, backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._lock = threading.Lock()
        b = self.backoff
        self._names = _Table(b.capacity, b.forget_s)
        self._addresses = _Table(b.capacity, b.forget_s)
        self._pairs = _Table(b.capacity, b.pair_forget_s)

    def __len__(self) -> int:
        """Entries kept, in all three tables."""
        with self._lock:
            return len(self._names) + len(self._addresses) + len(self._pairs)

    def retry_after(self, name: str, address: str) -> int:
        """Whole seconds until this name may be tried from this address; 0: now."""
        now = self._clock()
        n, a = name_key(name), address_key(address)
        b = self.backoff
        wait = 0.0
        with self._lock:
            at_address = self._addresses.get(a, now)
            if at_address is not None:
                wait = at_address.last + b.wait(at_address.failures, b.address_free) - now
            if self._pairs.get((n, a), now) is not None:
                of_name = self._names.get(n, now)
                if of_name is not None:
                    wait = max(wait, of_name.last + b.wait(of_name.failures, b.name_free) - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        n, a = name_key(name), address_key(address)
        with self._lock:
            self._names.add(n, now)
            self._addresses.add(a, now)
            self._pairs.add((n, a), now)

    def succeeded(self, name: str, address: str) -> None:
        n, a = name_key(name), address_key(address)
        with self._lock:
            self._names.forget(n)
            self._pairs.forget((n, a))
