"""The gateway on asyncio: listeners, TLS and a pump around :class:`anpx_core.gateway.GatewayCore`."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_host.config import GatewayConfig
from anpx_host.didserve import serve_documents
from anpx_host.drain import drain
from anpx_host.launch import BoundPorts, Listen, bind_failure, gateway_embedding, log_listening
from anpx_host.tls import gateway_listens
from anpx_host.warmup import hold_for_receiver

from ._pump import READ_SIZE, STREAM_ERRORS, TUNNEL_READ_SIZE, Pump, TaskSet
from .tcp import bind_tcp

log = logging.getLogger("anpx.gateway")

TLS_HANDSHAKE_TIMEOUT = 10.0
_START_TLS = sys.version_info >= (3, 11)  # StreamWriter.start_tls
# asyncio's default backlog (100) overflows under connection bursts; the kernel caps this one
LISTEN_BACKLOG = 4096


class GatewayServer:
    """Run with ``await server.run()`` (e.g. as a task) or ``await task_group.start(server.run)``
    (anyio); ``await server.started`` or the ``start`` gives the
    :class:`BoundPorts` once every listener is bound (port 0 picks a free port).
    :meth:`shutdown` drains: no new requests, in-flight ones finish within ``grace``
    seconds, tunnels close with 1001. Cancelling ``run()`` stops at once."""

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
        self._servers: list[asyncio.Server] = []
        self._tasks = TaskSet()
        self._stopped: asyncio.Event | None = None
        self._started: asyncio.Future[BoundPorts] | None = None

    @property
    def started(self) -> asyncio.Future[BoundPorts]:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
        return self._started

    async def run(self, *, task_status: TaskStatus[BoundPorts] = TASK_STATUS_IGNORED) -> None:
        self._stopped = asyncio.Event()
        self.core.set_wall_clock(self.pump.now(), time.time())
        bound: dict[str, int | None] = {"admin": None}
        held = self.http if self.http.hold_for_receiver > 0 else None
        held_server: asyncio.Server | None = None
        try:
            for name, spec in (("http", self.http), ("tunnel", self.tunnel), ("admin", self.admin)):
                if spec is None:
                    continue
                try:
                    server = await asyncio.start_server(
                        functools.partial(self._connection, name, spec),
                        spec.host,
                        spec.port,
                        # 3.11+: the handshake runs in _connection, where a failure is logged
                        # (asyncio itself reports it only in debug mode)
                        ssl=None if _START_TLS else spec.tls,
                        ssl_handshake_timeout=None
                        if _START_TLS or not spec.tls
                        else TLS_HANDSHAKE_TIMEOUT,
                        limit=TUNNEL_READ_SIZE if name == "tunnel" else READ_SIZE,
                        backlog=LISTEN_BACKLOG,
                        reuse_port=spec.reuse_port or None,  # workers share the port
                        start_serving=spec is not held,  # bound, listening only once served
                    )
                except OSError as exc:
                    raise bind_failure(spec.host, spec.port, exc) from None
                self._servers.append(server)
                if spec is held:
                    held_server = server
                bound[name] = server.sockets[0].getsockname()[1]
            for _listen, server in await bind_tcp(self.pump, self.core):  # anpx_asyncio/tcp.py
                self._servers.append(server)
                self.tcp_ports.append(server.sockets[0].getsockname()[1])
            self.ports = BoundPorts(bound["http"], bound["tunnel"], bound["admin"])  # type: ignore[arg-type]
            log_listening(self.http, self.tunnel, self.ports)
            self._tasks.spawn(self.pump.run_timers())
            documents = getattr(self.core.settings.auth, "cache", None)  # DID-WBA
            if documents is not None:
                self._tasks.spawn(serve_documents(self.core, self.pump, documents))
            if not self.started.done():
                self.started.set_result(self.ports)
            task_status.started(self.ports)
            if held_server is not None and held is not None:
                self._tasks.spawn(self._serve_held(held_server, held))
            await self._stopped.wait()
        finally:
            for server in self._servers:
                server.close()
            await self._tasks.cancel_all()

    async def _serve_held(self, server: asyncio.Server, held: Listen) -> None:
        """Listen on the held HTTP port once a receiver is connected (anpx_host/warmup.py)."""
        await hold_for_receiver(self.core, self.pump, held.hold_for_receiver)
        if not self.core.draining:  # shutdown() closed the server meanwhile
            await server.start_serving()

    async def _connection(
        self,
        kind: str,
        spec: Listen,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        if peer is None or local is None:
            writer.close()
            return
        peer, local = tuple(peer[:2]), tuple(local[:2])
        if _START_TLS and spec.tls is not None:
            try:
                await writer.start_tls(spec.tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
            except (*STREAM_ERRORS, asyncio.TimeoutError) as exc:
                log.info(
                    "TLS handshake with %s:%s failed: %s", peer[0], peer[1], exc or "timed out"
                )
                writer.close()
                return
        try:
            cid = self.core.open(kind, self.pump.now(), peer, local, spec.tls is not None)
            self.pump.sync()
        except Exception:  # the crash barrier: this connection only
            log.exception("internal error accepting a %s connection from %s:%s", kind, *peer)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.adopt(task)
        try:
            await self.pump.serve(
                cid, reader, writer, TUNNEL_READ_SIZE if kind == "tunnel" else READ_SIZE
            )
        except asyncio.CancelledError:
            # Shutdown cancels connection tasks; Python 3.11's start_server callback would log
            # a cancelled handler as an error with a traceback. serve() has cleaned up.
            return

    async def shutdown(self, grace: float = 10.0) -> None:
        """Drain and stop: the SIGTERM path."""
        log.info("draining: %d requests in flight, grace %.0fs", self.core.in_flight, grace)
        for server in self._servers:
            server.close()
        core = self.core
        await drain(
            core, self.pump, grace, close=core.close_tunnels, closed=lambda: not core.receivers
        )
        if self._stopped is not None:
            self._stopped.set()
