"""Moving bytes between trio streams and a sans-IO core (gateway or receiver).

The core decides everything; this module only reads while the core allows it,
writes what the core has queued, and wakes tasks the core names.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
from typing import Any

import trio

from anpx_core.contract import Signal
from anpx_host.tls import describe_error

log = logging.getLogger("anpx.trio")

READ_SIZE = 64 * 1024
TUNNEL_READ_SIZE = 256 * 1024  # tunnels carry bulk: fewer, larger reads
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


class Wakers:
    """Wake-ups by key: a task waits on a key, the core names keys whose state changed.

    trio never switches tasks between a check and ``await wait()``, so a wake-up
    cannot be lost between the two.
    """

    def __init__(self) -> None:
        self._events: dict[int, trio.Event] = {}

    async def wait(self, key: int) -> None:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = trio.Event()
        await event.wait()

    def fire(self, keys: set[int]) -> None:
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()


class Pump:
    """Shared by the gateway and receiver drivers: one core, its wake-ups, its clock."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.wakers = Wakers()
        self._scopes: dict[int, trio.CancelScope] = {}  # connections being served
        self._pop_aborts = getattr(core, "pop_aborts", None)

    @staticmethod
    def now() -> float:
        return trio.current_time()

    def sync(self) -> None:
        """Propagate what the last core call changed; drivers extend this."""
        self.wakers.fire(self.core.pop_wakeups())
        if self._pop_aborts is not None:
            for cid in self._pop_aborts():
                scope = self._scopes.get(cid)
                if scope is not None:
                    scope.cancel()  # a write blocked on a client that reads nothing, too

    async def serve(self, cid: int, stream: trio.abc.Stream, read_size: int = READ_SIZE) -> None:
        """Pump one connection until the core closes it or the peer goes away.

        The crash barrier: an unexpected exception (from the core or from here) closes
        this connection with one logged traceback; it never reaches the nursery above.
        """
        core = self.core
        try:
            async with trio.open_nursery() as nursery:
                self._scopes[cid] = nursery.cancel_scope
                nursery.start_soon(self._reader, cid, stream, read_size)
                await self._writer(cid, stream)
                nursery.cancel_scope.cancel()
        except Exception as exc:  # an ExceptionGroup from the nursery too
            log.error("internal error on connection %d; closing it", cid, exc_info=exc)
        finally:
            self._scopes.pop(cid, None)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    with contextlib.suppress(STREAM_ERRORS):
                        await stream.aclose()
                try:
                    core.closed(cid, self.now())
                    self.sync()
                except Exception:
                    log.exception("internal error closing connection %d", cid)

    async def _reader(self, cid: int, stream: trio.abc.Stream, read_size: int) -> None:
        core = self.core
        while True:
            while not core.can_read(cid):
                await self.wakers.wait(cid)
            try:
                data = await stream.receive_some(read_size)
            except STREAM_ERRORS as exc:
                core.lost(cid, self.now(), describe_error(exc))
                self.sync()
                return
            core.receive(cid, bytes(data), self.now())
            self.sync()
            if not data:
                return

    async def _writer(self, cid: int, stream: trio.abc.Stream) -> None:
        core = self.core
        while True:
            data, close = core.take_output(cid)
            if data:
                try:
                    await stream.send_all(data)
                except STREAM_ERRORS as exc:
                    core.lost(cid, self.now(), describe_error(exc))
                    self.sync()
                    return
                core.written(cid, self.now())
                self.sync()
                continue
            if close:
                return
            await self.wakers.wait(cid)

    async def timer(self) -> None:
        """Run the core's timers at its next deadline; Signal.TIMER re-arms (gw stopgap:
        drv's contract work replaces this)."""
        from anpx_core.contract import Signal

        while True:
            deadline = self.core.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self.wakers.wait(Signal.TIMER)  # type: ignore[arg-type]
            try:
                now = self.now()
                self.core.handle_timer(now)
                self.core.set_wall_clock(now, time.time())
                self.sync()
            except Exception:  # the crash barrier: the timers must keep running
                log.exception("internal error running timers")

    async def ticker(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                self.core.tick(self.now(), time.time())
                self.sync()
            except Exception:  # the crash barrier: the timers must keep running
                log.exception("internal error running timers")

    async def timer(self) -> None:
        """Run the core's timers at its next deadline; ``Signal.TIMER`` says it moved earlier."""
        core = self.core
        while True:
            deadline = core.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self.wakers.wait(Signal.TIMER)
            try:
                now = self.now()
                core.handle_timer(now)
                core.set_wall_clock(now, time.time())
                self.sync()
            except Exception:  # the crash barrier: the timers must keep running
                log.exception("internal error running timers")
