"""The receiver on asyncio: tunnels to the gateway, the ASGI app or forwarding, reconnects.

Embed it in a running app, e.g. in a FastAPI lifespan::

    task = asyncio.create_task(ReceiverClient(ReceiverSettings(...), app).run())
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

from ._pump import READ_SIZE, STREAM_ERRORS, TUNNEL_READ_SIZE, Pump, TaskSet
from .tcp import serve_tcp, tune_writer

log = logging.getLogger("anpx.receiver")

CONNECT_TIMEOUT = 10.0


class _Threads:
    """Worker threads for a WSGI app (anpx_host.wsgi.Threads) on asyncio."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=40, thread_name_prefix="anpx-wsgi")
        self.loop: asyncio.AbstractEventLoop | None = None

    async def run_sync(self, fn: Any) -> Any:
        self.loop = asyncio.get_running_loop()
        return await self.loop.run_in_executor(self.pool, fn)

    def from_thread(self, async_fn: Any, *args: Any) -> Any:
        assert self.loop is not None  # set by run_sync, which started this thread's work
        return asyncio.run_coroutine_threadsafe(async_fn(*args), self.loop).result()


class _ReceiverPump(Pump):
    def __init__(self, core: ReceiverCore, owner: ReceiverClient) -> None:
        super().__init__(core)
        self.owner = owner

    def sync(self) -> None:
        super().sync()
        self.owner._dispatch()


class ReceiverClient:
    """Serve ``app`` (ASGI) or a local HTTP service through the gateway.

    ``await ReceiverClient(settings, app).run()``; cancel the task to stop at once, or
    call :meth:`shutdown` to drain first. ``run_lifespan=False`` when the app's lifespan
    is already run by its own server (embedding in uvicorn).
    """

    def __init__(
        self,
        settings: ReceiverSettings | ReceiverConfig | None = None,
        app: Any = None,
        *,
        tls: ssl.SSLContext | None = None,
        run_lifespan: bool = True,
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
        self.run_lifespan = run_lifespan
        self.core = ReceiverCore(self.settings)
        self.pump = _ReceiverPump(self.core, self)
        self._tasks: TaskSet | None = None
        self._stopped: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None

    @property
    def ready(self) -> asyncio.Event:
        """Set once a tunnel is open."""
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    def _dispatch(self) -> None:
        tasks = self._tasks
        if tasks is None:
            return
        for request in self.core.pop_connects():
            tasks.spawn(self._connect(request))
        for call_id, scope in self.core.pop_app_calls():
            tasks.spawn(serve_http_call(self.app, self.core, call_id, scope, self.pump))
        if self.core.heads_pending:
            self.pump.wakers.fire({HEADS_DUE})
        if not self.ready.is_set() and self.core.connected_links:
            self.ready.set()

    async def run(self) -> None:
        self._stopped = asyncio.Event()
        tasks = TaskSet()
        try:
            lifespan = None
            if self.app is not None and self.run_lifespan:
                lifespan = LifespanCycle()
                tasks.spawn(serve_lifespan(self.app, lifespan, self.pump.wakers))
                await lifespan_startup(lifespan, self.pump.wakers)
                if lifespan.status == "failed":
                    raise StartupError(f"app startup failed: {lifespan.message}")
                self.core.lifespan_state = lifespan.state
            self._tasks = tasks
            tasks.spawn(self.pump.run_timers())
            tasks.spawn(flush_heads_forever(self.core, self.pump))
            self.core.start(self.pump.now(), time.time())
            self.pump.sync()
            tasks.spawn(self._watch_give_up())
            await self._stopped.wait()
            if lifespan is not None:
                try:
                    await asyncio.wait_for(lifespan_shutdown(lifespan, self.pump.wakers), 5)
                except asyncio.TimeoutError:
                    log.warning("app lifespan shutdown did not finish in 5s")
        finally:
            self._tasks = None
            await tasks.cancel_all()
        if self.core.given_up:
            raise StartupError(f"gave up connecting to the gateway: {self.core.last_error}")

    async def _watch_give_up(self) -> None:
        core = self.core
        await self.pump.wakers.until(lambda: core.given_up, Signal.GAVE_UP)
        if self._stopped is not None:
            self._stopped.set()

    async def _connect(self, request: ConnectRequest) -> None:
        read_size = TUNNEL_READ_SIZE if request.purpose == "gateway" else READ_SIZE
        try:
            if request.tls:
                context = self.tls or ssl.create_default_context()
                opened = asyncio.open_connection(
                    request.host,
                    request.port,
                    ssl=context,
                    server_hostname=request.host,
                    limit=read_size,
                )
            else:
                opened = asyncio.open_connection(request.host, request.port, limit=read_size)
            reader, writer = await asyncio.wait_for(opened, CONNECT_TIMEOUT)
        except (asyncio.TimeoutError, *STREAM_ERRORS) as exc:
            self.core.connect_failed(request.cid, self.pump.now(), _describe(exc))
            self.pump.sync()
            return
        except Exception:  # the crash barrier: a connection attempt never ends the receiver
            log.exception("internal error connecting to %s:%d", request.host, request.port)
            self.core.connect_failed(request.cid, self.pump.now(), "internal error")
            self.pump.sync()
            return
        if request.purpose == "tcp":  # a local TCP service (anpx_asyncio/tcp.py)
            tune_writer(writer, self.settings.tcp.keepalive)
            self.core.connected(request.cid, self.pump.now())
            await serve_tcp(self.pump, request.cid, reader, writer)
            return
        self.core.connected(request.cid, self.pump.now())
        self.pump.sync()
        await self.pump.serve(request.cid, reader, writer, read_size)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Ask the gateways for no new requests, let in-flight ones finish, close."""
        core = self.core
        await drain(
            core, self.pump, grace, close=core.close, closed=lambda: core.connected_links == 0
        )
        if self._stopped is not None:
            self._stopped.set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    return str(exc) or type(exc).__name__
