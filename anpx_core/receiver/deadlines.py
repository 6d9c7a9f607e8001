"""Deadlines keyed by owner: a heap with lazy deletion, one deadline per owner.

``set`` replaces an owner's deadline (None disarms it) without searching the heap: the
old entry stays behind and is skipped when it surfaces. The heap is rebuilt when stale
entries outnumber live ones, so memory stays proportional to the owners.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

K = TypeVar("K")


class Deadlines(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._at: dict[K, float] = {}  # the live deadline of each armed owner
        self._seq = itertools.count()  # ties never compare owners

    def __len__(self) -> int:
        return len(self._at)

    def get(self, key: K) -> float | None:
        return self._at.get(key)

    def set(self, key: K, when: float | None) -> bool:
        """Arm ``key`` at ``when`` (None: disarm). True if this moved the earliest deadline
        earlier (or armed the first one): a sleeping timer must then wake and re-arm."""
        old = self._at.get(key)
        if when == old:
            return False
        if when is None:
            del self._at[key]
            return False
        earliest = self.earliest()
        self._at[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if len(self._heap) > 2 * len(self._at) + 16:
            self._compact()
        return earliest is None or when < earliest

    def earliest(self) -> float | None:
        heap = self._heap
        while heap:
            when, _seq, key = heap[0]
            if self._at.get(key) == when:
                return when
            heapq.heappop(heap)  # stale: re-armed or disarmed since
        return None

    def pop_due(self, now: float) -> list[K]:
        """Disarm and return every owner whose deadline is at or before ``now``, earliest first."""
        due: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _seq, key = heapq.heappop(heap)
            if self._at.get(key) == when:
                del self._at[key]
                due.append(key)
        return due

    def _compact(self) -> None:
        self._heap = [(w, next(self._seq), k) for k, w in self._at.items()]
        heapq.heapify(self._heap)
