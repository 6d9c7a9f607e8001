"""State shared by every process of a gateway fleet, in Redis (``[gateway] shared_store``).

Workers of one gateway, and gateways on several hosts behind DNS or a load balancer, each
keep their own memory. Two things must not depend on which process a peer reaches:

* the authentication **replay caches** (shared secret and DID-WBA): a nonce spent at one
  process is spent at all (``SET key NX PX ttl``, one round trip per tunnel handshake);
* the per-address **request rate limit** (``rate_limit`` / ``rate_burst``): one token bucket
  per client address for the whole fleet, kept by a Lua script on the Redis server's clock
  (one round trip per request; the worker's event loop waits for it, so keep Redis on the
  same host or LAN).

The calls are synchronous with ``shared_store_timeout`` as socket timeout. When Redis fails,
the process falls back to its own state (the replay cache it always keeps as well, its own
token buckets) for :data:`OUTAGE_RETRY` seconds before asking again, logging the outage once
and the recovery once: an outage weakens the fleet-wide guarantees to per-process ones, it
never refuses receivers or users. Failed-handshake counters (``max_attempts``) stay per
process. Without ``shared_store`` everything is per process, as in a single-process gateway.

Keys are prefixed ``anpx:``; every key carries a TTL (the proof's validity, or the time a
bucket takes to refill), so Redis memory stays bounded by the traffic of a few minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from anpx_core.gateway import GatewaySettings
from anpx_core.ratelimit import RateLimiter, address_key
from anpx_core.replay import ReplayCache

from .config import ConfigError, GatewayConfig

log = logging.getLogger("anpx.gateway")

OUTAGE_RETRY = 5.0  # seconds on per-process state after a failed call, before asking again
PREFIX = "anpx:"
T = TypeVar("T")

# One token bucket per key on the Redis server's clock (TIME), so hosts' clocks do not matter.
# Returns the wait in seconds as a string ("0": allowed); Lua numbers would be truncated.
_TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil or at == nil then tokens, at = burst, now end
local elapsed = math.max(now - at, 0)
tokens = math.min(burst, tokens + elapsed * rate)
local wait = 0
if tokens + 1e-9 >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class SharedStore:
    """One Redis client, with the outage rule of the module doc."""

    def __init__(self, url: str, timeout: float, *, clock: Callable[[], float] = time.monotonic):
        try:
            import redis
        except ImportError:
            raise ConfigError(
                '[gateway] shared_store needs the redis package: pip install "anpx[redis]"',
                path="gateway.shared_store",
            ) from None
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.url = url
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self.token_bucket: Any = self.client.register_script(_TOKEN_BUCKET)
        self._clock = clock
        self._down_until: float | None = None  # during an outage: when to ask again

    @property
    def down(self) -> bool:
        return self._down_until is not None

    def call(self, what: str, ask: Callable[[], T], fallback: Callable[[], T]) -> T:
        now = self._clock()
        if self._down_until is not None and now < self._down_until:
            return fallback()
        try:
            result = ask()
        except self._errors as exc:
            if self._down_until is None:
                log.warning(
                    "shared store %s failed (%s: %s): using this process's own state, asking "
                    "again every %.0fs",
                    _safe(self.url),
                    what,
                    exc,
                    OUTAGE_RETRY,
                )
            self._down_until = now + OUTAGE_RETRY
            return fallback()
        if self._down_until is not None:
            log.warning("shared store %s answers again", _safe(self.url))
            self._down_until = None
        return result


class RedisReplayCache:
    """A :class:`~anpx_core.replay.ReplayCache` for the whole fleet; ``local`` (this
    process's cache) is kept too: it answers during an outage and catches a replay to the
    same process whatever Redis says."""

    def __init__(self, store: SharedStore, namespace: str, local: ReplayCache) -> None:
        self.store = store
        self.prefix = f"{PREFIX}{namespace}:"
        self.local = local

    def forget_expired(self, wall: float) -> None:
        self.local.forget_expired(wall)

    def seen(self, key: str, wall: float) -> bool:
        if self.local.seen(key, wall):
            return True
        return self.store.call(
            "replay check", lambda: bool(self.store.client.exists(self.prefix + key)), lambda: False
        )

    def remember(self, key: str, expires: float, wall: float) -> bool | None:
        local = self.local.remember(key, expires, wall)
        if local is False:
            return False
        ttl_ms = max(1, int((expires - wall) * 1000))

        def ask() -> bool | None:
            stored = self.store.client.set(self.prefix + key, b"1", nx=True, px=ttl_ms)
            return bool(stored)

        return self.store.call("replay cache", ask, lambda: local)


class RedisRateLimit:
    """The gateway core's ``rate_limit`` hook with one bucket per address for the fleet;
    ``local`` (the process's own limiter) answers during an outage."""

    def __init__(self, store: SharedStore, local: RateLimiter) -> None:
        self.store = store
        self.local = local
        self.rate, self.burst = local.rate, local.burst

    def __call__(self, address: str, now: float) -> float | None:
        key = address_key(address)

        def ask() -> float | None:
            wait = float(
                self.store.token_bucket(keys=[f"{PREFIX}rate:{key}"], args=[self.rate, self.burst])
            )
            return wait if wait > 0 else None

        return self.store.call("rate limit", ask, lambda: self.local.allow(key, now))


def attach_shared_store(settings: GatewaySettings, g: GatewayConfig) -> SharedStore:
    """Point ``settings``' replay caches and rate limit at ``g.shared_store``."""
    assert g.shared_store is not None
    store = SharedStore(g.shared_store, g.shared_store_timeout)
    auth: Any = settings.auth
    servers: list[Any] = [auth, getattr(auth, "secret", None)]
    for server in servers:
        replay = getattr(server, "replay", None)
        if replay is not None and not isinstance(replay, RedisReplayCache):
            namespace = "did" if hasattr(server, "service_domains") else "secret"
            server.replay = RedisReplayCache(store, f"nonce:{namespace}", replay)
    if isinstance(settings.rate_limit, RateLimiter):
        settings.rate_limit = RedisRateLimit(store, settings.rate_limit)
    return store


def _safe(url: str) -> str:
    """The URL for a log line, without a password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
