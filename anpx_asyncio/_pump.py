"""Moving bytes between asyncio streams and a sans-IO core (gateway or receiver).

The asyncio twin of ``anpx_trio._pump``: the core decides everything, this
module reads while the core allows it, writes what it queued, wakes tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from anpx_core.contract import DriverCore, Signal
from anpx_host.keys import HostKey
from anpx_host.tls import describe_error
from anpx_host.wakers import Wakers

log = logging.getLogger("anpx.asyncio")

READ_SIZE = 64 * 1024
TUNNEL_READ_SIZE = 256 * 1024  # tunnels carry bulk: fewer, larger reads
ERROR_BACKOFF = 0.1  # after a timer failed: its deadline may still be due
STREAM_ERRORS = (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError)


class TaskSet:
    """Tasks that live as long as their owner; cancelled together (asyncio.TaskGroup is 3.11+)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Track a task created elsewhere (e.g. by asyncio.start_server)."""
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


class Pump:
    """Shared by the gateway and receiver drivers: one core, its wake-ups, its clock."""

    def __init__(self, core: DriverCore) -> None:
        self.core = core
        self.wakers = Wakers(asyncio.Event)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}  # connections being served

    def now(self) -> float:
        # The loop is looked up once: asyncio.get_running_loop() costs a getpid() on 3.11.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def sync(self) -> None:
        self.wakers.fire(self.core.pop_wakeups())
        for cid in self.core.pop_aborts():
            writer = self._writers.get(cid)
            if writer is not None:
                writer.transport.abort()  # a drain blocked on a client reading nothing, too

    async def serve(
        self,
        cid: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        read_size: int = READ_SIZE,
    ) -> None:
        """Pump one connection until the core closes it or the peer goes away.

        The crash barrier: an unexpected exception in the reader or the writer (from the
        core or from here) closes this connection at once with one logged traceback; the
        other half is never left waiting on a connection nobody serves.
        """
        loop = asyncio.get_running_loop()
        read_task = loop.create_task(self._reader(cid, reader, read_size))
        write_task = loop.create_task(self._writer(cid, writer))
        self._writers[cid] = writer
        try:
            await asyncio.wait((read_task, write_task), return_when=asyncio.FIRST_COMPLETED)
            if read_task.done() and not read_task.cancelled():
                failure = read_task.exception()
                if failure is not None:
                    raise failure
            await write_task  # EOF was read: the writer flushes what is left, then ends
        except Exception as exc:
            log.error("internal error on connection %d; closing it", cid, exc_info=exc)
        finally:
            self._writers.pop(cid, None)
            for task in (read_task, write_task):
                task.cancel()
            for task in (read_task, write_task):
                with contextlib.suppress(BaseException):
                    await task
            writer.close()
            with contextlib.suppress(*STREAM_ERRORS, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)
            try:
                self.core.closed(cid, self.now())
                self.sync()
            except Exception:
                log.exception("internal error closing connection %d", cid)
            self.wakers.fire((HostKey.CLOSED,))

    async def _reader(self, cid: int, reader: asyncio.StreamReader, read_size: int) -> None:
        core = self.core
        while True:
            while not core.can_read(cid):
                await self.wakers.wait(cid)
            try:
                data = await reader.read(read_size)
            except STREAM_ERRORS as exc:
                core.lost(cid, self.now(), describe_error(exc))
                self.sync()
                return
            core.receive(cid, data, self.now())
            self.sync()
            if not data:
                return

    async def _writer(
        self, cid: int, writer: asyncio.StreamWriter, half_close: bool = False
    ) -> None:
        """Write what the core queues; at its close, return (the caller closes the socket)
        or, with ``half_close`` (a TCP stream), shut only the write side: the peer reads EOF
        and the other direction keeps flowing."""
        core = self.core
        while True:
            data, close = core.take_output(cid)
            if data:
                try:
                    writer.write(data)
                    await writer.drain()
                except STREAM_ERRORS as exc:
                    core.lost(cid, self.now(), describe_error(exc))
                    self.sync()
                    return
                core.written(cid, self.now())
                self.sync()
                continue
            if close:
                if half_close:
                    with contextlib.suppress(*STREAM_ERRORS, RuntimeError):
                        if writer.can_write_eof() and not writer.transport.is_closing():
                            writer.write_eof()
                return
            await self.wakers.wait(cid)

    async def run_timers(self) -> None:
        """Run the core's timers when due: sleep until ``next_deadline()`` (for ever when
        None) or until the core names :attr:`Signal.TIMER` (a deadline moved earlier)."""
        core, loop = self.core, asyncio.get_running_loop()
        while True:
            deadline = core.next_deadline()
            now = self.now()
            if deadline is None or deadline > now:
                alarm = None if deadline is None else loop.call_at(deadline, self._alarm)
                try:
                    await self.wakers.wait(Signal.TIMER)
                finally:
                    if alarm is not None:
                        alarm.cancel()
                continue
            try:
                core.handle_timer(now)
                core.set_wall_clock(now, time.time())
                self.sync()
            except Exception:  # the crash barrier: the timers must keep running
                log.exception("internal error running timers")
                await asyncio.sleep(ERROR_BACKOFF)  # a deadline left in the past must not spin

    def _alarm(self) -> None:
        self.wakers.fire((Signal.TIMER,))
