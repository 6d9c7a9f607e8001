"""Deadlines by key in a heap: O(log n) to arm, O(1) amortised to ask for the earliest.

A core keeps one deadline per key (a connection id) and re-arms it whenever the
connection's state changed. Entries are deleted lazily: moving a deadline later
leaves the earlier entry in the heap, and when that entry surfaces it is re-queued at
the key's current time, so a deadline that keeps moving later (a keep-alive refreshed
by traffic) costs no heap push per refresh. Stale entries are bounded: the heap is
rebuilt when it holds far more entries than there are keys.

The earliest deadline is cached: a core asks for it after every call, and most calls only
re-arm a key at the time it already had, or later while another key stays first.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_SLACK = 64  # stale entries tolerated beyond 2 per key before a rebuild


class Deadlines(Generic[K]):
    def __init__(self) -> None:
        self._when: dict[K, float] = {}  # each key's current deadline
        self._queued: dict[K, float] = {}  # the time of each key's live heap entry
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0  # ties in time never compare keys
        # the earliest deadline and its key, while _known (None: no deadline armed)
        self._first: float | None = None
        self._first_key: K | None = None
        self._known = True

    def __len__(self) -> int:
        return len(self._when)

    def get(self, key: K) -> float | None:
        return self._when.get(key)

    def set(self, key: K, when: float | None) -> None:
        """Arm ``key`` at ``when`` (None: disarm it)."""
        if when is None:
            if self._when.pop(key, None) is not None and key == self._first_key:
                self._known = False
            return
        if self._when.get(key) == when:
            return  # unchanged (the usual re-arm after a call)
        self._when[key] = when
        queued = self._queued.get(key)
        if queued is None or when < queued:
            self._push(key, when)
        if self._known:
            first = self._first
            if first is None or when < first:
                self._first, self._first_key = when, key
            elif key == self._first_key:
                self._known = False  # the first one moved later: another may be first now

    def _push(self, key: K, when: float) -> None:
        self._queued[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        if len(self._heap) > 2 * len(self._when) + _SLACK:
            self._rebuild()

    def _rebuild(self) -> None:
        self._queued = dict(self._when)
        self._heap = [(when, i, key) for i, (key, when) in enumerate(self._when.items())]
        self._seq = len(self._heap)
        heapq.heapify(self._heap)

    def _top(self) -> tuple[float, K] | None:
        """The earliest live entry, after dropping or re-queueing stale ones."""
        while self._heap:
            when, _, key = self._heap[0]
            if self._queued.get(key) != when:
                heapq.heappop(self._heap)  # superseded by an earlier entry for the same key
                continue
            actual = self._when.get(key)
            if actual == when:
                return when, key
            heapq.heappop(self._heap)
            del self._queued[key]
            if actual is not None:  # moved later since: queue it at its current time
                self._push(key, actual)
        return None

    def next(self) -> float | None:
        """The earliest deadline armed, or None."""
        if not self._known:
            top = self._top()
            self._first, self._first_key = (None, None) if top is None else top
            self._known = True
        return self._first

    def pop_due(self, now: float) -> list[K]:
        """Disarm and return every key whose deadline is at or before ``now``."""
        due: list[K] = []
        while (top := self._top()) is not None and top[0] <= now:
            key = top[1]
            heapq.heappop(self._heap)
            del self._queued[key]
            del self._when[key]
            due.append(key)
        if due:
            self._known = False
        return due
