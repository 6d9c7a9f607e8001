"""TCP streams on asyncio (protocol.md §21): the twin of ``anpx_trio.tcp``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from anpx_core.gateway import GatewayCore
from anpx_core.gateway.tcp import TcpListen
from anpx_host.keys import HostKey
from anpx_host.launch import bind_failure
from anpx_host.tcpsock import reset_on_close, tune

from ._pump import READ_SIZE, STREAM_ERRORS, Pump

log = logging.getLogger("anpx.asyncio")


class _Resetting:
    """What the pump aborts for a TCP stream: a RST (SO_LINGER 0), not a FIN."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.transport = self
        self._writer = writer
        self.tasks: tuple[asyncio.Task[Any], ...] = ()
        self.aborted = False  # the serving task's CancelledError is ours, not a shutdown

    def abort(self) -> None:
        self.aborted = True
        reset_on_close(self._writer.get_extra_info("socket"))
        self._writer.transport.abort()
        for task in self.tasks:  # a reader parked on can_read would never wake otherwise
            task.cancel()


async def serve_tcp(
    pump: Pump, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Pump a TCP stream's socket until both directions ended or the core resets it
    (see ``anpx_trio.tcp.serve_tcp``; call it with no ``sync()`` since ``cid`` was made)."""
    loop = asyncio.get_running_loop()
    resetting = _Resetting(writer)
    this = asyncio.current_task()
    assert this is not None
    read_task = loop.create_task(pump._reader(cid, reader, READ_SIZE))
    # The writer runs in this task (one task less to start and switch to per stream): an
    # abort cancels this task too, and the CancelledError it gets is caught below.
    resetting.tasks = (read_task, this)
    pump._writers[cid] = resetting  # type: ignore[assignment]
    pump.sync()
    try:
        await pump._writer(cid, writer, half_close=True)
        await asyncio.wait((read_task,))  # always suspends: a pending abort lands here
        if not read_task.cancelled() and read_task.exception() is not None:
            raise read_task.exception()  # type: ignore[misc]
    except asyncio.CancelledError:
        if not resetting.aborted:
            raise  # shutdown: not ours to swallow
        uncancel = getattr(this, "uncancel", None)  # Python >= 3.11 counts cancellations
        if uncancel is not None:
            uncancel()
    except Exception as exc:  # the crash barrier: this connection only
        log.error("internal error on connection %d; closing it", cid, exc_info=exc)
        reset_on_close(writer.get_extra_info("socket"))
    finally:
        pump._writers.pop(cid, None)
        read_task.cancel()
        with contextlib.suppress(BaseException):
            await read_task
        writer.close()
        with contextlib.suppress(*STREAM_ERRORS, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)
        try:
            pump.core.closed(cid, pump.now())
            pump.sync()
        except Exception:
            log.exception("internal error closing connection %d", cid)
        pump.wakers.fire((HostKey.CLOSED,))


def tune_writer(writer: asyncio.StreamWriter, keepalive: float) -> None:
    """TCP_NODELAY and keepalive on the connection's socket."""
    tune(writer.get_extra_info("socket"), keepalive)


async def bind_tcp(pump: Pump, core: GatewayCore) -> list[tuple[TcpListen, asyncio.Server]]:
    """Start every ``[[gateway.tcp]]`` listener (port 0 picks a free port)."""
    bound = []
    for listen in core.settings.tcp.listeners:
        try:
            server = await asyncio.start_server(
                functools.partial(_connection, pump, listen), listen.host, listen.port
            )
        except OSError as exc:
            raise bind_failure(listen.host, listen.port, exc) from None
        port = server.sockets[0].getsockname()[1]
        log.info("tcp service %s listening on %s:%d", listen.service, listen.host, port)
        bound.append((listen, server))
    return bound


async def _connection(
    pump: Pump, listen: TcpListen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    core = pump.core
    assert isinstance(core, GatewayCore)
    peer = writer.get_extra_info("peername")
    if peer is None:
        writer.close()
        return
    tune_writer(writer, core.settings.tcp.limits.keepalive)
    try:
        cid = core.open_tcp(pump.now(), tuple(peer[:2]), listen)
    except Exception:  # the crash barrier: this connection only
        log.exception("internal error accepting a tcp connection from %s", peer)
        writer.close()
        return
    with contextlib.suppress(asyncio.CancelledError):  # shutdown: serve_tcp cleaned up
        await serve_tcp(pump, cid, reader, writer)
