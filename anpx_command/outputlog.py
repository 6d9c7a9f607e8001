"""An append-only output log: bytes are only ever added, and any byte offset can be replayed.

Offsets are positions in the log, so a client that remembers the last offset it saw
(an SSE event id) resumes with nothing lost or repeated. The log holds at most ``cap``
bytes; what does not fit is refused (the session stops its process then).
"""

from __future__ import annotations

import anyio

__all__ = ["OutputLog"]


class OutputLog:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._data = bytearray()
        self._changed: anyio.Event | None = None  # made when someone waits
        self.closed = False
        self.truncated = False

    def __len__(self) -> int:
        return len(self._data)

    def append(self, chunk: bytes) -> bool:
        """Add ``chunk``; False when it did not all fit under the cap (the rest is dropped)."""
        room = self.cap - len(self._data)
        fits = len(chunk) <= room
        if not fits:
            chunk = chunk[: max(room, 0)]
            self.truncated = True
        if chunk:
            self._data += chunk
            self._wake()
        return fits

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()

    def read(self, offset: int, limit: int) -> bytes:
        return bytes(self._data[offset : offset + limit])

    async def wait_beyond(self, offset: int) -> None:
        """Return once the log is longer than ``offset`` or closed."""
        while len(self._data) <= offset and not self.closed:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
