"""Failed tunnel handshakes per client address: the one limiter every authenticator uses.

The rules (docs/security.md, "Failed handshakes"), the same for the shared secret and DID-WBA:

* the authenticator verifies first: a correctly signed handshake is admitted whatever other
  handshakes from its address did, so strangers sharing an address with the receivers
  (everyone behind one reverse proxy) cannot lock them out;
* only failed handshakes are recorded here, ``max_attempts`` per address per minute; past
  that, further failures from the address are answered 429 with ``Retry-After`` instead of
  401 (or DID-WBA's 4003 close);
* the address is the client's: the gateway core passes the client behind trusted proxies
  (``trusted_proxies``), ports are ignored and IPv6 is keyed by its /64 (one host owns a /64
  and could otherwise fail from a fresh address every time).

Memory is bounded: counters for at most ``max_tracked`` addresses, expired windows and then
the least recently failing first. Times are wall-clock seconds given by the caller.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from .ratelimit import address_key

DEFAULT_MAX_ATTEMPTS = 3  # failed handshakes per address per minute, then 429
DEFAULT_MAX_TRACKED = 100_000  # addresses with a failure counter
WINDOW = 60.0  # seconds


def peer_host(peer: str) -> str:
    """The address part of "host:port", "[v6]:port" or a bare address."""
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    return peer.rsplit(":", 1)[0] if peer.count(":") == 1 else peer


class FailedAttempts:
    """Failure counters per address (see the module doc)."""

    __slots__ = ("_failures", "max_attempts", "max_tracked")

    def __init__(
        self, max_attempts: int = DEFAULT_MAX_ATTEMPTS, *, max_tracked: int = DEFAULT_MAX_TRACKED
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.max_tracked = max_tracked
        # address key -> (window start, failures); least recently failing first
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    @property
    def tracked(self) -> int:
        return len(self._failures)

    def key(self, peer: str) -> str:
        return address_key(peer_host(peer))

    def over_limit(self, peer: str, wall: float) -> bool:
        """Has ``peer`` already failed ``max_attempts`` times in its current window?

        Nothing is recorded: authenticators use it only to avoid costly work (a DID document
        fetch) on behalf of an address that is failing anyway, never to refuse a handshake
        they can verify.
        """
        entry = self._failures.get(self.key(peer))
        return entry is not None and wall - entry[0] < WINDOW and entry[1] >= self.max_attempts

    def record(self, peer: str, wall: float) -> int | None:
        """Count one failure of ``peer``: None while within the limit, else the seconds
        (at least 1) until its window ends, for ``Retry-After``."""
        self._expire(wall)
        address = self.key(peer)
        start, count = self._failures.pop(address, (wall, 0))
        if wall - start >= WINDOW:
            start, count = wall, 0
        count += 1
        self._failures[address] = (start, count)
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
        if count > self.max_attempts:
            return max(1, math.ceil(start + WINDOW - wall))
        return None

    def _expire(self, wall: float) -> None:
        # Least recently failing first: its window started no later than its last failure,
        # so once the first entry is still inside its window, most of the rest are too.
        while self._failures:
            start, _count = next(iter(self._failures.values()))
            if wall - start < WINDOW:
                break
            self._failures.popitem(last=False)
