"""A restarted gateway worker's public port opens once a receiver is back on its tunnel.

With ``[gateway] workers > 1`` the kernel hands each new public connection to any listening
worker. A worker restarted after a crash would take its share as soon as it listens, a moment
before the receivers reconnect to its tunnel (their backoff), and answer those requests
``503 no receiver``. So a restarted worker opens its tunnel listener first and its public one
only once a receiver is connected, or after ``[gateway] worker_receiver_wait`` seconds (a
gateway whose receivers are all gone still comes up); meanwhile its siblings serve the port.
Both drivers await :func:`hold_for_receiver` (anyio, either loop) before opening the listener.
"""

from __future__ import annotations

import logging
from typing import Protocol

import anyio

from anpx_core.contract import Signal

from .appcalls import Pump

log = logging.getLogger("anpx.gateway")


class HasReceivers(Protocol):
    @property
    def receivers(self) -> list[dict[str, object]]: ...


async def hold_for_receiver(core: HasReceivers, pump: Pump, wait: float) -> None:
    """Return once ``core`` has a receiver, or after ``wait`` seconds; log which."""
    if wait <= 0 or core.receivers:
        return
    log.info("public port held until a receiver is connected (at most %gs)", wait)
    with anyio.move_on_after(wait):
        await pump.wakers.until(lambda: bool(core.receivers), Signal.RECEIVERS)
    if core.receivers:
        log.info("a receiver is connected: taking public connections")
    else:
        log.warning("no receiver after %gs: taking public connections anyway", wait)
