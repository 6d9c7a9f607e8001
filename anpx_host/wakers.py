"""Wake-ups by key, written once for both drivers (each passes its own event class).

A task waits on a key; after each core call the pump fires the keys the core named.
Neither trio nor asyncio switches tasks between a check and ``await wait()``, so a
wake-up cannot be lost between the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from .keys import Key


class Event(Protocol):
    def set(self) -> None: ...

    def wait(self) -> Awaitable[object]: ...


class Wakers:
    def __init__(self, new_event: Callable[[], Event]) -> None:
        self._new_event = new_event
        self._events: dict[Key, Event] = {}

    async def wait(self, key: Key) -> None:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = self._new_event()
        await event.wait()

    def fire(self, keys: Iterable[Key]) -> None:
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()

    async def until(self, condition: Callable[[], bool], key: Key) -> None:
        """Return once ``condition()`` holds, re-checking it at each wake-up of ``key``."""
        while not condition():
            await self.wait(key)
