"""Per-client-address request rate limiting: a token bucket per address, sans-IO.

Each address has a bucket of at most ``burst`` tokens that refills at ``rate``
tokens per second; a request takes one token. :meth:`RateLimiter.allow` answers
``None`` (allowed) or the seconds until the next token, for ``Retry-After``.
Time is an argument (the driver's monotonic clock).

Memory is bounded. A full bucket behaves exactly like an address never seen, so
full buckets are not kept: entries are ordered by last use and the oldest are
dropped as soon as they have refilled. What remains are addresses that sent
requests within the last ``burst / rate`` seconds, at most ``max_addresses`` of
them (about 230 bytes each: 65,536 by default, about 15 MiB). When that many
addresses are all still refilling and a new one arrives, the least recently
used is forgotten: that address starts again with a full bucket. Only an
attacker with more than ``max_addresses`` addresses active within ``burst /
rate`` seconds gains anything from this, and per-address limits cannot stop
such an attacker anyway.

Addresses are keyed with :func:`address_key`: IPv6 clients by their /64 prefix,
since one host usually owns a whole /64 and could otherwise pick a fresh address
for every request.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict

__all__ = [
    "DEFAULT_MAX_ADDRESSES",
    "RateLimiter",
    "address_key",
    "make_limiter",
    "retry_after",
]

DEFAULT_MAX_ADDRESSES = 65_536
# Float refills are inexact (0.1 s at 10/s may give 0.9999999 tokens): a client that
# waits exactly the Retry-After it was given must get its token.
_EPSILON = 1e-9


class RateLimiter:
    """Token buckets keyed by client address (see module doc)."""

    __slots__ = ("_buckets", "burst", "evicted", "max_addresses", "rate")

    def __init__(
        self, rate: float, burst: int, *, max_addresses: int = DEFAULT_MAX_ADDRESSES
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if max_addresses < 1:
            raise ValueError(f"max_addresses must be at least 1, got {max_addresses!r}")
        self.rate = float(rate)
        self.burst = burst
        self.max_addresses = max_addresses
        self.evicted = 0  # buckets forgotten before they refilled (the table was full)
        # key -> [tokens, time of last update]; oldest use first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        """Addresses currently tracked (each still refilling, or just used)."""
        return len(self._buckets)

    def __call__(self, address: str, now: float) -> float | None:
        """:meth:`allow` for a client address, keyed by :func:`address_key` (the gateway's hook)."""
        return self.allow(address_key(address), now)

    def allow(self, key: str, now: float) -> float | None:
        """Take a token for ``key``: None if allowed, else seconds until one is available."""
        self._drop_full(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._buckets.popitem(last=False)
                self.evicted += 1
            self._buckets[key] = [self.burst - 1.0, now]
            return None
        self._buckets.move_to_end(key)
        tokens = self._refill(bucket, now)
        if tokens + _EPSILON >= 1.0:
            bucket[0], bucket[1] = max(tokens - 1.0, 0.0), now
            return None
        bucket[0], bucket[1] = tokens, now
        return (1.0 - tokens) / self.rate

    def _refill(self, bucket: list[float], now: float) -> float:
        elapsed = max(now - bucket[1], 0.0)  # a clock that steps back refills nothing
        return min(self.burst, bucket[0] + elapsed * self.rate)

    def _drop_full(self, now: float) -> None:
        # Oldest use first: the first bucket still refilling ends the scan. Each bucket is
        # dropped at most once per insertion, so this is amortised O(1) per call.
        buckets = self._buckets
        while buckets:
            bucket = next(iter(buckets.values()))
            if self._refill(bucket, now) + _EPSILON < self.burst:
                return
            buckets.popitem(last=False)


def make_limiter(
    rate: float, burst: int, *, max_addresses: int = DEFAULT_MAX_ADDRESSES
) -> RateLimiter | None:
    """The limiter for config keys ``rate_limit`` / ``rate_burst``; None when ``rate`` is 0."""
    if rate <= 0:
        return None
    return RateLimiter(rate, burst, max_addresses=max_addresses)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


@functools.lru_cache(maxsize=4096)  # parsed once per client, not per request; bounded
def address_key(host: str) -> str:
    """The bucket key of a client address: IPv4 as is (also when IPv4-mapped IPv6),
    IPv6 as its /64 network; anything unparsable (a Unix socket path, "-") unchanged."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
