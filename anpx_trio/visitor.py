"""The visitor on trio (``python -m anpx_trio connect``): local connections as TCP streams
through the gateway (:mod:`anpx_core.visitor`)."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import time
from typing import Any

import trio

from anpx_core.receiver import ConnectRequest
from anpx_core.visitor import VisitorCore, VisitorSettings
from anpx_host.errors import StartupError
from anpx_host.launch import with_entropy
from anpx_host.tls import describe_error
from anpx_host.visitorcli import VisitorPlan, visitor_main

from ._pump import STREAM_ERRORS, TUNNEL_READ_SIZE, Pump
from .tcp import serve_tcp, tune_stream

log = logging.getLogger("anpx.visitor")

CONNECT_TIMEOUT = 10.0


class _VisitorPump(Pump):
    def __init__(self, core: VisitorCore, owner: Visitor) -> None:
        super().__init__(core)
        self.owner = owner

    def sync(self) -> None:
        super().sync()
        self.owner._dispatch()


class Visitor:
    """``await Visitor(settings).run(listen=(host, port))`` or ``run(stdio=True)``;
    ``nursery.start`` returns the bound port (listen mode)."""

    def __init__(self, settings: VisitorSettings, *, tls: ssl.SSLContext | None = None) -> None:
        self.core = VisitorCore(with_entropy(settings))
        self.pump = _VisitorPump(self.core, self)
        self.tls = tls
        self._nursery: trio.Nursery | None = None

    def _dispatch(self) -> None:
        if self._nursery is not None:
            for request in self.core.pop_connects():
                self._nursery.start_soon(self._connect, request)

    async def run(
        self,
        *,
        listen: tuple[str, int] | None = None,
        stdio: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.pump.run_timers)
            self.core.set_wall_clock(self.pump.now(), time.time())  # auth timestamps
            if stdio:
                task_status.started(0)
                await self._stdio()
            else:
                assert listen is not None
                listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
                port = listeners[0].socket.getsockname()[1]
                log.info("visitor listening on %s:%d for service %s", listen[0], port,
                         self.core.settings.service)  # fmt: skip
                task_status.started(port)
                async with trio.open_nursery() as accepts:
                    for listener in listeners:
                        accepts.start_soon(self._accept, listener, nursery)
            nursery.cancel_scope.cancel()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._local, stream)

    async def _local(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            await stream.aclose()
            return
        tune_stream(stream, self.core.settings.tcp.keepalive)
        cid = self.core.open_local(self.pump.now(), f"{host}:{port}")
        await serve_tcp(self.pump, cid, stream)

    async def _stdio(self) -> None:
        stream = trio.StapledStream(
            trio.lowlevel.FdStream(os.dup(1)), trio.lowlevel.FdStream(os.dup(0))
        )
        cid = self.core.open_local(self.pump.now(), "stdio")
        await serve_tcp(self.pump, cid, stream)

    async def _connect(self, request: ConnectRequest) -> None:
        now = self.pump.now
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if request.tls:
                    context = self.tls or ssl.create_default_context()
                    stream: Any = await trio.open_ssl_over_tcp_stream(
                        request.host, request.port, ssl_context=context, https_compatible=False
                    )
                    await stream.do_handshake()
                else:
                    stream = await trio.open_tcp_stream(request.host, request.port)
        except (trio.TooSlowError, *STREAM_ERRORS) as exc:
            why = "timed out" if isinstance(exc, trio.TooSlowError) else describe_error(exc)
            self.core.connect_failed(request.cid, now(), why)
            self.pump.sync()
            return
        self.core.connected(request.cid, now())
        self.pump.sync()
        await self.pump.serve(request.cid, stream, TUNNEL_READ_SIZE)


def connect_main(argv: list[str], prog: str) -> int:
    """``python -m anpx_trio connect [SERVICE] ...``."""
    return visitor_main(argv, prog, lambda plans: trio.run(_run, plans))


async def _run(plans: list[VisitorPlan]) -> None:
    first = plans[0]
    if first.listen is None:  # --stdio: one visitor, for as long as stdin lasts
        visitor = Visitor(first.settings, tls=first.tls)  # type: ignore[arg-type]
        await visitor.run(stdio=True)
        if visitor.core.last_error:  # ssh shows our stderr: say why there was nothing
            raise StartupError(visitor.core.last_error)
        return
    async with trio.open_nursery() as nursery:
        for plan in plans:  # the first failure (a port in use) ends them all
            visitor = Visitor(plan.settings, tls=plan.tls)  # type: ignore[arg-type]
            await nursery.start(lambda task_status, v=visitor, at=plan.listen: v.run(
                listen=at, task_status=task_status))  # fmt: skip
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
