"""The visitor on asyncio (``python -m anpx_asyncio connect``): the twin of
``anpx_trio.visitor`` (:mod:`anpx_core.visitor`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from typing import Any

from anpx_core.receiver import ConnectRequest
from anpx_core.visitor import VisitorCore, VisitorSettings
from anpx_host.errors import StartupError
from anpx_host.launch import with_entropy
from anpx_host.tls import describe_error
from anpx_host.visitorcli import VisitorPlan, visitor_main

from ._pump import STREAM_ERRORS, TUNNEL_READ_SIZE, Pump, TaskSet
from .tcp import serve_tcp, tune_writer

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
    ``await visitor.started`` gives the bound port (listen mode)."""

    def __init__(self, settings: VisitorSettings, *, tls: ssl.SSLContext | None = None) -> None:
        self.core = VisitorCore(with_entropy(settings))
        self.pump = _VisitorPump(self.core, self)
        self.tls = tls
        self._tasks: TaskSet | None = None
        self._started: asyncio.Future[int] | None = None

    @property
    def started(self) -> asyncio.Future[int]:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
        return self._started

    def _dispatch(self) -> None:
        if self._tasks is not None:
            for request in self.core.pop_connects():
                self._tasks.spawn(self._connect(request))

    async def run(self, *, listen: tuple[str, int] | None = None, stdio: bool = False) -> None:
        tasks = self._tasks = TaskSet()
        server = None
        try:
            tasks.spawn(self.pump.run_timers())
            self.core.set_wall_clock(self.pump.now(), time.time())  # auth timestamps
            if stdio:
                self.started.set_result(0)
                await self._stdio()
                return
            assert listen is not None
            server = await asyncio.start_server(self._local, listen[0], listen[1])
            port = server.sockets[0].getsockname()[1]
            log.info("visitor listening on %s:%d for service %s", listen[0], port,
                     self.core.settings.service)  # fmt: skip
            self.started.set_result(port)
            await asyncio.Event().wait()  # until cancelled
        finally:
            if server is not None:
                server.close()
            self._tasks = None
            await tasks.cancel_all()

    async def _local(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if peer is None:
            writer.close()
            return
        tune_writer(writer, self.core.settings.tcp.keepalive)
        cid = self.core.open_local(self.pump.now(), f"{peer[0]}:{peer[1]}")
        try:
            await serve_tcp(self.pump, cid, reader, writer)
        except asyncio.CancelledError:
            return

    async def _stdio(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), sys.stdout
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        cid = self.core.open_local(self.pump.now(), "stdio")
        await serve_tcp(self.pump, cid, reader, writer)

    async def _connect(self, request: ConnectRequest) -> None:
        try:
            if request.tls:
                context = self.tls or ssl.create_default_context()
                opened: Any = asyncio.open_connection(
                    request.host,
                    request.port,
                    ssl=context,
                    server_hostname=request.host,
                    limit=TUNNEL_READ_SIZE,
                )
            else:
                opened = asyncio.open_connection(request.host, request.port, limit=TUNNEL_READ_SIZE)
            reader, writer = await asyncio.wait_for(opened, CONNECT_TIMEOUT)
        except (asyncio.TimeoutError, *STREAM_ERRORS) as exc:
            why = "timed out" if isinstance(exc, asyncio.TimeoutError) else describe_error(exc)
            self.core.connect_failed(request.cid, self.pump.now(), why)
            self.pump.sync()
            return
        self.core.connected(request.cid, self.pump.now())
        self.pump.sync()
        await self.pump.serve(request.cid, reader, writer, TUNNEL_READ_SIZE)


def connect_main(argv: list[str], prog: str) -> int:
    """``python -m anpx_asyncio connect [SERVICE] ...``."""
    return visitor_main(argv, prog, lambda plans: asyncio.run(_run(plans)))


async def _run(plans: list[VisitorPlan]) -> None:
    first = plans[0]
    if first.listen is None:  # --stdio: one visitor, for as long as stdin lasts
        visitor = Visitor(first.settings, tls=first.tls)  # type: ignore[arg-type]
        await visitor.run(stdio=True)
        if visitor.core.last_error:  # ssh shows our stderr: say why there was nothing
            raise StartupError(visitor.core.last_error)
        return
    loop = asyncio.get_running_loop()
    tasks = [
        asyncio.ensure_future(
            Visitor(plan.settings, tls=plan.tls).run(listen=plan.listen)  # type: ignore[arg-type]
        )
        for plan in plans
    ]

    def stop() -> None:
        for task in tasks:
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)  # the first failure (a port in use) ends them all
    finally:
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)
