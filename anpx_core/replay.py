"""Replay caches: each authentication nonce is accepted once while its proof is valid.

The authenticators (:mod:`anpx_core.auth`, :mod:`anpx_core.didwba`) ask a
:class:`ReplayCache`; the default, :class:`MemoryReplayCache`, is this process's memory. A
gateway of several processes or hosts shares one through the host layer
(``[gateway] shared_store``, :mod:`anpx_host.shared`), so a nonce spent at one worker is
spent at all of them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

__all__ = ["MemoryReplayCache", "ReplayCache"]


class ReplayCache(Protocol):
    def forget_expired(self, wall: float) -> None:
        """Free what expired by ``wall`` (called at each check; a store that expires keys by
        itself does nothing)."""
        ...

    def seen(self, key: str, wall: float) -> bool:
        """Was ``key`` remembered and not expired? (A cheap early check; may say False for a
        key :meth:`remember` then refuses.)"""
        ...

    def remember(self, key: str, expires: float, wall: float) -> bool | None:
        """Remember ``key`` until ``expires`` (wall seconds): True when it was new, False when
        it was already there (a replay), None when there is no room (refuse, 429)."""
        ...


class MemoryReplayCache:
    """At most ``capacity`` keys, each kept until its expiry; when full, new keys are refused
    rather than an unexpired one forgotten (which could then be replayed)."""

    __slots__ = ("_keys", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        self.capacity = capacity
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> expiry, oldest first

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, key: str, wall: float) -> bool:
        self._expire(wall)
        return key in self._keys

    def remember(self, key: str, expires: float, wall: float) -> bool | None:
        self._expire(wall)
        if key in self._keys:
            return False
        if len(self._keys) >= self.capacity:
            return None
        self._keys[key] = expires
        return True

    def forget_expired(self, wall: float) -> None:
        self._expire(wall)

    def _expire(self, wall: float) -> None:
        # Expiry times are not strictly ordered (timestamps vary within the window), so scan
        # the oldest entries only while they are expired; a late expiry ahead delays the rest.
        keys = self._keys
        while keys:
            expiry = next(iter(keys.values()))
            if expiry >= wall:
                break
            keys.popitem(last=False)
