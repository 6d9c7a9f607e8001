"""The drain-then-close sequence both drivers run on shutdown, on either loop (anyio)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio

from anpx_core.contract import Signal

from .appcalls import Pump
from .keys import HostKey

CLOSE_GRACE = 1.0  # seconds the tunnels get to complete their closing handshake


class Draining(Protocol):
    @property
    def in_flight(self) -> int: ...

    def begin_drain(self) -> None: ...


async def drain(
    core: Draining,
    pump: Pump,
    grace: float,
    *,
    close: Callable[[], None],
    closed: Callable[[], bool],
) -> None:
    """No new requests; in-flight ones get ``grace`` seconds; then ``close()`` the tunnels
    and give them :data:`CLOSE_GRACE` to finish their closing handshake (``closed()``)."""
    core.begin_drain()
    pump.sync()
    with anyio.move_on_after(grace):
        await pump.wakers.until(lambda: core.in_flight == 0, Signal.DRAINED)
    close()
    pump.sync()
    with anyio.move_on_after(CLOSE_GRACE):
        await pump.wakers.until(closed, HostKey.CLOSED)
