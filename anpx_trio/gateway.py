"""The gateway on trio: listeners, TLS and a pump around :class:`anpx_core.gateway.GatewayCore`."""

from __future__ import annotations

import logging
import time

import trio

from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_host.config import GatewayConfig
from anpx_host.didserve import serve_documents
from anpx_host.drain import drain
from anpx_host.launch import BoundPorts, Listen, bind_failure, gateway_embedding, log_listening
from anpx_host.tls import gateway_listens
from anpx_host.warmup import hold_for_receiver

from ._pump import READ_SIZE, STREAM_ERRORS, TUNNEL_READ_SIZE, Pump
from .tcp import accept_tcp, bind_tcp

log = logging.getLogger("anpx.gateway")

TLS_HANDSHAKE_TIMEOUT = 10.0
_Listeners = tuple[str, Listen, list[trio.SocketListener]]  # kind, spec, bound sockets
LISTEN_BACKLOG = 4096  # as the asyncio driver's; the kernel caps it


async def _open_listeners(spec: Listen) -> list[trio.SocketListener]:
    """trio.open_tcp_listeners, plus SO_REUSEPORT when the port is shared with sibling
    workers (open_tcp_listeners has no such option)."""
    if not spec.reuse_port:
        return await trio.open_tcp_listeners(spec.port, host=spec.host)
    s = trio.socket
    found = await s.getaddrinfo(spec.host, spec.port, type=s.SOCK_STREAM, flags=s.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    for family, kind, proto, _name, addr in found:
        sock = s.socket(family, kind, proto)
        try:
            sock.setsockopt(s.SOL_SOCKET, s.SO_REUSEADDR, 1)
            sock.setsockopt(s.SOL_SOCKET, s.SO_REUSEPORT, 1)
            if family == s.AF_INET6:
                sock.setsockopt(s.IPPROTO_IPV6, s.IPV6_V6ONLY, 1)
            await sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            for listener in listeners:
                listener.socket.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


class GatewayServer:
    """Run with ``await server.run()`` or ``await nursery.start(server.run)``.

    ``nursery.start`` returns the :class:`BoundPorts` once every listener is
    bound (port 0 picks a free port). :meth:`shutdown` drains: no new requests,
    in-flight ones finish within ``grace`` seconds, tunnels close with 1001.
    """

    def __init__(
        self,
        settings: GatewaySettings | GatewayConfig | None = None,
        *,
        http: Listen | None = None,
        tunnel: Listen | None = None,
        admin: Listen | None = None,
    ) -> None:
        core_settings, plan = gateway_embedding(settings or GatewaySettings())
        self.core = GatewayCore(core_settings)
        self.pump = Pump(self.core)
        planned = gateway_listens(plan)  # a GatewayConfig's listeners; explicit ones win
        self.http = http or planned[0]
        self.tunnel = tunnel or planned[1]
        self.admin = admin or planned[2]
        self.ports: BoundPorts | None = None
        self.tcp_ports: list[int] = []  # [[gateway.tcp]] listeners, in order, once bound
        self._listeners: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[BoundPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.pump.run_timers)
            documents = getattr(self.core.settings.auth, "cache", None)  # DID-WBA
            if documents is not None:
                nursery.start_soon(serve_documents, self.core, self.pump, documents)
            self.core.set_wall_clock(self.pump.now(), time.time())
            self._listeners = trio.CancelScope()
            bound: dict[str, int | None] = {"admin": None}
            listeners = []
            held = self.http if self.http.hold_for_receiver > 0 else None
            for name, spec in (("http", self.http), ("tunnel", self.tunnel), ("admin", self.admin)):
                if spec is None:
                    continue
                if spec is held:  # opened by _accept_all once a receiver is connected
                    bound[name] = spec.port
                    continue
                try:
                    socks = await _open_listeners(spec)
                except OSError as exc:
                    raise bind_failure(spec.host, spec.port, exc) from None
                bound[name] = socks[0].socket.getsockname()[1]
                listeners.append((name, spec, socks))
            tcp = await bind_tcp(self.core)
            self.tcp_ports = [socks[0].socket.getsockname()[1] for _, socks in tcp]
            listeners += [("tcp", listen, socks) for listen, socks in tcp]  # type: ignore[misc]
            self.ports = BoundPorts(bound["http"], bound["tunnel"], bound["admin"])  # type: ignore[arg-type]
            log_listening(self.http, self.tunnel, self.ports)
            nursery.start_soon(self._accept_all, nursery, listeners, held)
            task_status.started(self.ports)
            await self._stopped.wait()
            nursery.cancel_scope.cancel()

    async def _accept_all(
        self, nursery: trio.Nursery, listeners: list[_Listeners], held: Listen | None
    ) -> None:
        """Accept on every listener until shutdown() cancels ``self._listeners``; open the
        ``held`` HTTP listener once a receiver is connected (anpx_host/warmup.py)."""
        assert self._listeners is not None
        with self._listeners:
            async with trio.open_nursery() as accepts:
                for kind, spec, socks in listeners:
                    for sock in socks:
                        if kind == "tcp":  # a [[gateway.tcp]] listener (anpx_trio/tcp.py)
                            accepts.start_soon(accept_tcp, self.pump, spec, sock, nursery)  # type: ignore[arg-type]
                        else:
                            accepts.start_soon(self._accept, nursery, kind, spec, sock)
                if held is not None:
                    await hold_for_receiver(self.core, self.pump, held.hold_for_receiver)
                    try:
                        socks = await _open_listeners(held)
                    except OSError as exc:
                        raise bind_failure(held.host, held.port, exc) from None
                    listeners.append(("http", held, socks))
                    for sock in socks:
                        accepts.start_soon(self._accept, nursery, "http", held, sock)
        for _kind, _spec, socks in listeners:
            for sock in socks:
                await sock.aclose()

    async def _accept(
        self, nursery: trio.Nursery, kind: str, spec: Listen, listener: trio.SocketListener
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed on the %s listener: %s", kind, exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._connection, kind, spec, stream)

    async def _connection(self, kind: str, spec: Listen, stream: trio.SocketStream) -> None:
        sock = stream.socket
        try:
            peer = sock.getpeername()[:2]
            local = sock.getsockname()[:2]
        except OSError:
            await stream.aclose()
            return
        conn: trio.abc.Stream = stream
        if spec.tls is not None:
            tls_stream = trio.SSLStream(stream, spec.tls, server_side=True)
            with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as scope:
                try:
                    await tls_stream.do_handshake()
                except STREAM_ERRORS as exc:
                    # trio's BrokenResourceError says nothing; the ssl error is its cause
                    why = exc.__cause__ or exc
                    log.info("TLS handshake with %s:%s failed: %s", peer[0], peer[1], why)
                    await stream.aclose()
                    return
            if scope.cancelled_caught:
                log.info("TLS handshake with %s:%s timed out", peer[0], peer[1])
                await stream.aclose()
                return
            conn = tls_stream
        try:
            cid = self.core.open(kind, self.pump.now(), peer, local, spec.tls is not None)
            self.pump.sync()
        except Exception:  # the crash barrier: this connection only
            log.exception("internal error accepting a %s connection from %s:%s", kind, *peer)
            await conn.aclose()
            return
        await self.pump.serve(cid, conn, TUNNEL_READ_SIZE if kind == "tunnel" else READ_SIZE)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Drain and stop: the SIGTERM path."""
        log.info("draining: %d requests in flight, grace %.0fs", self.core.in_flight, grace)
        if self._listeners is not None:
            self._listeners.cancel()
        core = self.core
        await drain(
            core, self.pump, grace, close=core.close_tunnels, closed=lambda: not core.receivers
        )
        self._stopped.set()
