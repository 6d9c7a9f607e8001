"""TCP streams on trio (protocol.md §21): a socket pumped with half-close and resets, and
the gateway's ``[[gateway.tcp]]`` listeners. The core decides; this only moves bytes."""

from __future__ import annotations

import contextlib
import logging

import trio

from anpx_core.gateway import GatewayCore
from anpx_core.gateway.tcp import TcpListen
from anpx_host.keys import HostKey
from anpx_host.launch import bind_failure
from anpx_host.tcpsock import numeric_family, reset_on_close, tune

from ._pump import READ_SIZE, STREAM_ERRORS, Pump

log = logging.getLogger("anpx.trio")


async def serve_tcp(pump: Pump, cid: int, stream: trio.abc.Stream) -> None:
    """Pump a TCP stream's socket until both directions ended or the core resets it.

    Call it right after the core call that created ``cid`` (``open_tcp``, ``connected``,
    ``open_local``), with no ``sync()`` between: an abort the core asked for there is seen.
    ``close`` from ``take_output`` shuts the write side (the peer reads EOF, the other
    direction keeps flowing); the socket closes once the reader has seen EOF too; an abort
    closes it with a RST.
    """
    core = pump.core
    aborted = False
    try:
        async with trio.open_nursery() as nursery:
            pump._scopes[cid] = nursery.cancel_scope
            pump.sync()
            nursery.start_soon(pump._reader, cid, stream, READ_SIZE)
            # The writer runs in this task: one task less to start and switch to per stream.
            await pump._writer(cid, stream, half_close=True)
        aborted = nursery.cancel_scope.cancelled_caught
    except Exception as exc:  # the crash barrier: this connection only
        log.error("internal error on connection %d; closing it", cid, exc_info=exc)
        aborted = True
    finally:
        pump._scopes.pop(cid, None)
        with trio.CancelScope(shield=True):
            if aborted:
                reset_on_close(getattr(stream, "socket", None))
            with trio.move_on_after(1), contextlib.suppress(*STREAM_ERRORS):
                await stream.aclose()
            try:
                core.closed(cid, pump.now())
                pump.sync()
            except Exception:
                log.exception("internal error closing connection %d", cid)
            pump.wakers.fire((HostKey.CLOSED,))


async def open_stream(host: str, port: int) -> trio.SocketStream:
    """``trio.open_tcp_stream``, without its resolver call, nursery and happy-eyeballs task
    for a numeric address (a local service has one address: one attempt is all there is).
    A failure reads as trio's does, so the stream's reset reason is the same either way."""
    family = numeric_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == trio.socket.AF_INET6 else f"{host}:{port}"
        raise OSError(f"all attempts to connect to {where} failed") from exc
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def tune_stream(stream: trio.abc.Stream, keepalive: float) -> None:
    """TCP_NODELAY and keepalive (trio sockets take the same options as plain ones)."""
    tune(getattr(stream, "socket", None), keepalive)


async def bind_tcp(core: GatewayCore) -> list[tuple[TcpListen, list[trio.SocketListener]]]:
    """Bind every ``[[gateway.tcp]]`` listener (port 0 picks a free port)."""
    bound = []
    for listen in core.settings.tcp.listeners:
        try:
            socks = await trio.open_tcp_listeners(listen.port, host=listen.host)
        except OSError as exc:
            raise bind_failure(listen.host, listen.port, exc) from None
        port = socks[0].socket.getsockname()[1]
        log.info("tcp service %s listening on %s:%d", listen.service, listen.host, port)
        bound.append((listen, socks))
    return bound


async def accept_tcp(
    pump: Pump, listen: TcpListen, listener: trio.SocketListener, nursery: trio.Nursery
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:  # EMFILE and friends: back off instead of spinning
            log.warning("accept failed on the tcp %s listener: %s", listen.service, exc)
            await trio.sleep(0.1)
            continue
        nursery.start_soon(_connection, pump, listen, stream)


async def _connection(pump: Pump, listen: TcpListen, stream: trio.SocketStream) -> None:
    core = pump.core
    assert isinstance(core, GatewayCore)
    try:
        peer = stream.socket.getpeername()[:2]
    except OSError:
        await stream.aclose()
        return
    tune_stream(stream, core.settings.tcp.limits.keepalive)
    try:
        cid = core.open_tcp(pump.now(), peer, listen)
    except Exception:  # the crash barrier: this connection only
        log.exception("internal error accepting a tcp connection from %s:%s", *peer)
        await stream.aclose()
        return
    await serve_tcp(pump, cid, stream)
