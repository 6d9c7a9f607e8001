"""The ASGI app's coroutines, wired to the receiver core: the same code for every driver.

These coroutines await only what the driver passes in (``wait(key)``), never an
event loop of their own, so trio, asyncio and the in-memory test harness run
them alike. A driver supplies a *pump*: ``wakers.wait(key)`` (suspend until the
core names ``key``), ``wakers.fire(keys)``, ``sync()`` (propagate the last core
call's wake-ups) and ``now()``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from anpx_core.asgi import LifespanCycle
from anpx_core.receiver import ReceiverCore

from .keys import HostKey
from .wakers import Wakers

log = logging.getLogger("anpx.receiver")

AsgiMessage = dict[str, Any]  # an ASGI event or scope

LIFESPAN_QUEUED = HostKey.LIFESPAN_QUEUED
LIFESPAN_CHANGED = HostKey.LIFESPAN_CHANGED
HEADS_DUE = HostKey.HEADS_DUE


class Pump(Protocol):
    @property
    def wakers(self) -> Wakers: ...

    def sync(self) -> None: ...

    def now(self) -> float: ...


async def serve_http_call(
    app: Any, core: ReceiverCore, call_id: int, scope: AsgiMessage, pump: Pump
) -> None:
    """Run ``app`` for one request; its receive/send go through the receiver core."""

    async def receive() -> AsgiMessage:
        while True:
            message: AsgiMessage | None = core.asgi_receive(call_id)
            pump.sync()
            if message is not None:
                return message
            await pump.wakers.wait(call_id)

    async def send(message: AsgiMessage) -> None:
        core.asgi_send(call_id, message, pump.now())
        pump.sync()
        while not core.asgi_writable(call_id):
            await pump.wakers.wait(call_id)

    exc: BaseException | None = None
    try:
        await app(scope, receive, send)
    except Exception as err:  # the app's failure becomes a 500 or an abort, never ours
        exc = err
    try:
        core.app_finished(call_id, exc, pump.now())
        pump.sync()
    except Exception:  # the crash barrier: never let one call end the driver's task group
        log.exception("internal error ending app call %d", call_id)


async def serve_lifespan(app: Any, cycle: LifespanCycle, wakers: Wakers) -> None:
    """Run the app's lifespan coroutine for as long as it wants."""

    async def receive() -> AsgiMessage:
        while True:
            message = cycle.receive()
            if message is not None:
                return message
            await wakers.wait(LIFESPAN_QUEUED)

    async def send(message: AsgiMessage) -> None:
        cycle.send(message)
        wakers.fire({LIFESPAN_CHANGED})

    exc: BaseException | None = None
    try:
        await app(cycle.scope, receive, send)
    except Exception as err:
        exc = err
    cycle.app_returned(exc)
    wakers.fire({LIFESPAN_CHANGED})
    if cycle.status == "error":
        log.error("app lifespan task failed: %s", cycle.message)


async def lifespan_startup(cycle: LifespanCycle, wakers: Wakers) -> None:
    """Ask for startup and wait until the app answered (or showed it has no lifespan)."""
    cycle.startup()
    wakers.fire({LIFESPAN_QUEUED})
    while not cycle.startup_done:
        await wakers.wait(LIFESPAN_CHANGED)


async def lifespan_shutdown(cycle: LifespanCycle, wakers: Wakers) -> None:
    """Ask for shutdown and wait for the answer (callers bound the wait with a timeout)."""
    cycle.shutdown()
    wakers.fire({LIFESPAN_QUEUED})
    while not cycle.shutdown_done:
        await wakers.wait(LIFESPAN_CHANGED)


async def flush_heads_forever(core: ReceiverCore, pump: Pump) -> None:
    """Send response heads whose body does not follow at once.

    The driver fires ``HEADS_DUE`` when ``core.heads_pending``; this task runs on the
    loop's next turn, by when an app that answers at once has sent its body too (one
    frame), while a head whose body waits (a stream, a slow first token) goes out now.
    """
    while True:
        await pump.wakers.wait(HEADS_DUE)
        try:
            core.flush_heads()
            pump.sync()
        except Exception:  # the crash barrier: this task must outlive any one stream
            log.exception("internal error sending response heads")
