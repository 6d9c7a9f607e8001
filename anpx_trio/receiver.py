"""The receiver on trio: tunnels to the gateway, the ASGI app or forwarding, reconnects."""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import trio

from anpx_core.asgi import LifespanCycle
from anpx_core.contract import Signal
from anpx_core.receiver import ConnectRequest, ReceiverCore, ReceiverSettings
from anpx_host.appcalls import (
    HEADS_DUE,
    flush_heads_forever,
    lifespan_shutdown,
    lifespan_startup,
    serve_http_call,
    serve_lifespan,
)
from anpx_host.config import ReceiverConfig
from anpx_host.drain import drain
from anpx_host.errors import StartupError
from anpx_host.launch import receiver_embedding
from anpx_host.tcpapp import tcp_only_app
from anpx_host.tls import make_context
from anpx_host.wsgi import WsgiApp

from ._pump import READ_SIZE, STREAM_ERRORS, TUNNEL_READ_SIZE, Pump
from .tcp import open_stream, serve_tcp, tune_stream

log = logging.getLogger("anpx.receiver")

CONNECT_TIMEOUT = 10.0


class _Threads:
    """Worker threads for a WSGI app (anpx_host.wsgi.Threads) on trio."""

    def __init__(self) -> None:
        self.limiter = trio.CapacityLimiter(40)

    async def run_sync(self, fn: Any) -> Any:
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    def from_thread(self, async_fn: Any, *args: Any) -> Any:
        return trio.from_thread.run(async_fn, *args)


class _ReceiverPump(Pump):
    def __init__(self, core: ReceiverCore, owner: ReceiverClient) -> None:
        super().__init__(core)
        self.owner = owner

    def sync(self) -> None:
        super().sync()
        self.owner._dispatch()


class ReceiverClient:
    """Serve ``app`` (ASGI) or a local HTTP service through the gateway.

    ``await ReceiverClient(settings, app).run()``; cancel it to stop abruptly, or call
    :meth:`shutdown` to drain first. ``tls`` verifies wss:// gateways (a default
    context verifying certificate and host name is used when omitted).
    """

    def __init__(
        self,
        settings: ReceiverSettings | ReceiverConfig | None = None,
        app: Any = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings, policy = receiver_embedding(settings or ReceiverSettings())
        if app is None and self.settings.forward is None and self.settings.tcp_services:
            app = tcp_only_app  # TCP services only: HTTP requests get 404
        if app is None and self.settings.forward is None:
            raise ValueError("give an ASGI app, or a local_url / settings.forward to forward to")
        self.app = app
        if isinstance(app, WsgiApp):
            app.threads = _Threads()
        self.tls = tls if tls is not None else make_context(policy)
        self.core = ReceiverCore(self.settings)
        self.pump = _ReceiverPump(self.core, self)
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self.ready = trio.Event()  # set once a tunnel is open

    def _dispatch(self) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        for request in self.core.pop_connects():
            nursery.start_soon(self._connect, request)
        for call_id, scope in self.core.pop_app_calls():
            nursery.start_soon(serve_http_call, self.app, self.core, call_id, scope, self.pump)
        if self.core.heads_pending:
            self.pump.wakers.fire({HEADS_DUE})
        if not self.ready.is_set() and self.core.connected_links:
            self.ready.set()

    async def run(
        self, *, task_status: trio.TaskStatus[ReceiverClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            lifespan = None
            if self.app is not None:
                lifespan = LifespanCycle()
                nursery.start_soon(serve_lifespan, self.app, lifespan, self.pump.wakers)
                await lifespan_startup(lifespan, self.pump.wakers)
                if lifespan.status == "failed":
                    raise StartupError(f"app startup failed: {lifespan.message}")
                self.core.lifespan_state = lifespan.state
            self._nursery = nursery
            nursery.start_soon(self.pump.run_timers)
            nursery.start_soon(flush_heads_forever, self.core, self.pump)
            self.core.start(self.pump.now(), time.time())
            self.pump.sync()
            task_status.started(self)
            nursery.start_soon(self._watch_give_up)
            await self._stopped.wait()
            if lifespan is not None:
                with trio.move_on_after(5):
                    await lifespan_shutdown(lifespan, self.pump.wakers)
            nursery.cancel_scope.cancel()
        if self.core.given_up:
            raise StartupError(f"gave up connecting to the gateway: {self.core.last_error}")

    async def _watch_give_up(self) -> None:
        core = self.core
        await self.pump.wakers.until(lambda: core.given_up, Signal.GAVE_UP)
        self._stopped.set()

    async def _connect(self, request: ConnectRequest) -> None:
        now = self.pump.now
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if request.tls:
                    context = self.tls or ssl.create_default_context()
                    stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                        request.host, request.port, ssl_context=context, https_compatible=False
                    )
                    await stream.do_handshake()  # type: ignore[attr-defined]
                else:
                    stream = await open_stream(request.host, request.port)
        except (trio.TooSlowError, *STREAM_ERRORS) as exc:
            self.core.connect_failed(request.cid, now(), _describe(exc))
            self.pump.sync()
            return
        except Exception:  # the crash barrier: a connection attempt never ends the receiver
            log.exception("internal error connecting to %s:%d", request.host, request.port)
            self.core.connect_failed(request.cid, now(), "internal error")
            self.pump.sync()
            return
        if request.purpose == "tcp":  # a local TCP service (anpx_trio/tcp.py)
            tune_stream(stream, self.settings.tcp.keepalive)
            self.core.connected(request.cid, now())
            await serve_tcp(self.pump, request.cid, stream)
            return
        self.core.connected(request.cid, now())
        self.pump.sync()
        read_size = TUNNEL_READ_SIZE if request.purpose == "gateway" else READ_SIZE
        await self.pump.serve(request.cid, stream, read_size)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Ask the gateways for no new requests, let in-flight ones finish, close."""
        core = self.core
        await drain(
            core, self.pump, grace, close=core.close, closed=lambda: core.connected_links == 0
        )
        self._stopped.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__  # trio wraps the TLS failure
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    return str(exc) or type(exc).__name__
