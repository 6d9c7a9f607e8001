"""Moving bytes between trio streams and a sans-IO core (gateway or receiver).

The core decides everything (:class:`anpx_core.contract.DriverCore`); this module only
reads while the core allows it, writes what the core has queued, wakes the tasks the core
names and runs the core's timers when they are due.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import ssl
import time

import trio

from anpx_core.contract import DriverCore, Signal
from anpx_host.keys import HostKey
from anpx_host.tls import describe_error
from anpx_host.wakers import Wakers

log = logging.getLogger("anpx.trio")

READ_SIZE = 64 * 1024
TUNNEL_READ_SIZE = 256 * 1024  # tunnels carry bulk: fewer, larger reads
ERROR_BACKOFF = 0.1  # after a timer failed: its deadline may still be due
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


class Wake:
    """A one-shot event for :class:`Wakers`: what ``trio.Event`` does for this use, without
    its parking lot (an ordered dict and two objects per event, a generator per wake-up).
    Each task waiting on a core key creates one; the pump sets it at most once."""

    __slots__ = ("_flag", "_tasks")

    def __init__(self) -> None:
        self._flag = False
        self._tasks: list[trio.lowlevel.Task] = []

    def set(self) -> None:
        self._flag = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self._flag:
            await trio.lowlevel.checkpoint()
            return
        task = trio.lowlevel.current_task()
        self._tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class Pump:
    """Shared by the gateway and receiver drivers: one core, its wake-ups, its clock."""

    def __init__(self, core: DriverCore) -> None:
        self.core = core
        self.wakers = Wakers(Wake)
        self._scopes: dict[int, trio.CancelScope] = {}  # connections being served

    @staticmethod
    def now() -> float:
        return trio.current_time()

    def sync(self) -> None:
        """Propagate what the last core call changed; drivers extend this."""
        self.wakers.fire(self.core.pop_wakeups())
        for cid in self.core.pop_aborts():
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
                    with contextlib.suppress(*STREAM_ERRORS):
                        await stream.aclose()
                try:
                    core.closed(cid, self.now())
                    self.sync()
                except Exception:
                    log.exception("internal error closing connection %d", cid)
                self.wakers.fire((HostKey.CLOSED,))

    async def _reader(self, cid: int, stream: trio.abc.Stream, read_size: int) -> None:
        core = self.core
        sock = _plain_socket(stream)
        full = True  # the last read filled the buffer: more may be waiting
        while True:
            waited = False
            while not core.can_read(cid):
                await self.wakers.wait(cid)
                waited = True
            try:
                if sock is None:
                    data = bytes(await stream.receive_some(read_size))
                else:
                    data = await _receive(sock, read_size, wait_first=not full, waited=waited)
                    full = len(data) == read_size
            except STREAM_ERRORS as exc:
                core.lost(cid, self.now(), describe_error(exc))
                self.sync()
                return
            core.receive(cid, data, self.now())
            self.sync()
            if not data:
                return

    async def _writer(self, cid: int, stream: trio.abc.Stream, half_close: bool = False) -> None:
        """Write what the core queues; at its close, return (the caller closes the socket)
        or, with ``half_close`` (a TCP stream), shut only the write side: the peer reads EOF
        and the other direction keeps flowing."""
        core = self.core
        sock = _plain_socket(stream)
        while True:
            data, close = core.take_output(cid)
            if data:
                try:
                    if sock is None:
                        await stream.send_all(data)
                    else:
                        await _send_all(sock, data)
                except STREAM_ERRORS as exc:
                    core.lost(cid, self.now(), describe_error(exc))
                    self.sync()
                    return
                core.written(cid, self.now())
                self.sync()
                continue
            if close:
                if half_close and isinstance(stream, trio.abc.HalfCloseableStream):
                    with contextlib.suppress(*STREAM_ERRORS):
                        await stream.send_eof()
                return
            await self.wakers.wait(cid)

    async def run_timers(self) -> None:
        """Run the core's timers when due: sleep until ``next_deadline()`` (for ever when
        None) or until the core names :attr:`Signal.TIMER` (a deadline moved earlier)."""
        core = self.core
        while True:
            deadline = core.next_deadline()
            now = self.now()
            if deadline is None or deadline > now:
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await self.wakers.wait(Signal.TIMER)
                continue
            try:
                core.handle_timer(now)
                core.set_wall_clock(now, time.time())
                self.sync()
            except Exception:  # the crash barrier: the timers must keep running
                log.exception("internal error running timers")
                await trio.sleep(ERROR_BACKOFF)  # a deadline left in the past must not spin


# A plain socket is read and written here, without trio.SocketStream: its receive_some and
# send_all try the call, then yield to the scheduler once more even when the call succeeded,
# and a read of a connection whose next request is not there yet costs a recv that fails
# (EAGAIN) before the wait. These wait for readiness first when the last read was short
# (the socket is most likely drained), and yield only when nothing else did: one scheduler
# round and one system call less per small request on each connection. The socket's own
# fileno() is read at each call: -1 once trio closed it (EBADF, a stream error), never a
# number reused by another socket.


def _plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under a plain SocketStream, where its descriptor can be read and written
    with os.read/os.write (not on Windows, whose sockets are not file descriptors)."""
    if type(stream) is trio.SocketStream and os.name != "nt":
        return stream.socket
    return None


async def _receive(
    sock: trio.socket.SocketType, size: int, *, wait_first: bool, waited: bool
) -> bytes:
    """Up to ``size`` bytes, b"" at EOF; a checkpoint (one scheduler round at least, and
    a cancelled scope raises before anything is read, as with trio's recv)."""
    if wait_first:
        await trio.lowlevel.wait_readable(sock)
        waited = True
    else:
        await trio.lowlevel.checkpoint_if_cancelled()  # no yield unless cancelled
    while True:
        try:
            data = os.read(sock.fileno(), size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            waited = True
            continue
        if not waited:  # data was there at once: let other tasks run, as trio's recv does
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data


async def _send_all(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data``, waiting while the socket's buffer is full. Not a checkpoint when
    the kernel took it all at once: the writer loop waits on its waker once the core's
    queue is empty, and the queue only grows while other tasks run. A cancelled scope
    raises before anything is written, as with trio's send."""
    await trio.lowlevel.checkpoint_if_cancelled()  # no yield unless cancelled
    with memoryview(data) as view:
        while view:
            try:
                sent = os.write(sock.fileno(), view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[sent:]
