"""Run real gateways and receivers (trio or asyncio) in background threads, on loopback.

Each component gets its own thread and event loop, so tests can use blocking
clients (httpx, curl) and mix drivers freely, as users do across machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import trio

import anpx_asyncio.gateway
import anpx_asyncio.receiver
import anpx_trio.gateway
import anpx_trio.receiver
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

DRIVERS = ("trio", "asyncio")
PAIRINGS = [(g, r) for g in DRIVERS for r in DRIVERS]
START_TIMEOUT = 10.0


class Runner:
    """One driver object (GatewayServer or ReceiverClient) running in its own thread."""

    def __init__(self, driver: str, obj: Any) -> None:
        self.driver = driver
        self.obj = obj
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.finished = threading.Event()
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._trio_scope: trio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self.started.wait(START_TIMEOUT) and self.error is None:
            raise TimeoutError(f"{driver} {type(obj).__name__} did not start")
        if self.error is not None and not self.started.is_set():
            raise self.error

    def _main(self) -> None:
        try:
            if self.driver == "trio":
                trio.run(self._trio_main)
            else:
                asyncio.run(self._asyncio_main())
        except BaseException as exc:  # surfaced to the test through .error
            self.error = exc
        finally:
            self.started.set()
            self.finished.set()

    async def _trio_main(self) -> None:
        self._trio_token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._trio_scope = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(self.obj.run)
                self.started.set()

    async def _asyncio_main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        run = asyncio.ensure_future(self.obj.run())
        started = getattr(self.obj, "started", None)
        if started is not None:  # the gateway reports its bound ports
            waiter = asyncio.ensure_future(started)
            await asyncio.wait([run, waiter], return_when=asyncio.FIRST_COMPLETED)
        self.started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await run

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run an async function of the driver object inside its loop; wait for it."""
        if self.driver == "trio":
            return trio.from_thread.run(fn, trio_token=self._trio_token)
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def stop(self) -> None:
        """Stop at once (cancel), as a crash or kill would from the peer's point of view."""
        if self.finished.is_set():
            return
        try:
            if self.driver == "trio":
                trio.from_thread.run_sync(self._trio_scope.cancel, trio_token=self._trio_token)
            else:
                self._loop.call_soon_threadsafe(self._task.cancel)
        except (trio.RunFinishedError, RuntimeError):
            pass  # it finished by itself meanwhile (e.g. after a drain)
        self.thread.join(10)


def start_gateway(
    driver: str,
    settings: GatewaySettings | None = None,
    *,
    http_port: int = 0,
    tunnel_port: int = 0,
    http_tls=None,
    tunnel_tls=None,
    admin: bool = True,
) -> Runner:
    mod = anpx_trio.gateway if driver == "trio" else anpx_asyncio.gateway
    server = mod.GatewayServer(
        settings or GatewaySettings(),
        http=mod.Listen("127.0.0.1", http_port, http_tls),
        tunnel=mod.Listen("127.0.0.1", tunnel_port, tunnel_tls),
        admin=mod.Listen("127.0.0.1", 0) if admin else None,
    )
    return Runner(driver, server)


def start_receiver(driver: str, settings: ReceiverSettings, app: Any = None, *, tls=None) -> Runner:
    mod = anpx_trio.receiver if driver == "trio" else anpx_asyncio.receiver
    return Runner(driver, mod.ReceiverClient(settings, app, tls=tls))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(0.01)


class _TrioVisitor:
    """A trio visitor in listen mode on 127.0.0.1:0, shaped for :class:`Runner`."""

    def __init__(self, settings: Any) -> None:
        import anpx_trio.visitor

        self.visitor = anpx_trio.visitor.Visitor(settings)
        self.port = 0

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(
                lambda task_status: self.visitor.run(
                    listen=("127.0.0.1", 0), task_status=task_status
                )
            )
            task_status.started()


class _AsyncioVisitor:
    def __init__(self, settings: Any) -> None:
        import anpx_asyncio.visitor

        self.visitor = anpx_asyncio.visitor.Visitor(settings)
        self.port = 0

    @property
    def started(self) -> Any:
        return self.visitor.started

    async def run(self) -> None:
        task = asyncio.ensure_future(self.visitor.run(listen=("127.0.0.1", 0)))
        self.port = await self.visitor.started
        await task


def start_visitor(driver: str, settings: Any) -> Runner:
    """A visitor (``connect SERVICE --listen 127.0.0.1:0``) in its own thread; ``.obj.port``."""
    runner = Runner(
        driver, _TrioVisitor(settings) if driver == "trio" else _AsyncioVisitor(settings)
    )
    if driver == "asyncio":
        wait_until(lambda: runner.obj.port != 0)
    return runner
