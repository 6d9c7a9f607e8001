"""The driver contract: what a driver's pump needs from a gateway or receiver core.

A driver owns sockets, tasks and a monotonic clock; a core owns every decision. The driver

* feeds bytes in (``receive``, ``b""`` at EOF; ``lost`` on a socket error), reads only while
  ``can_read(cid)``, writes what ``take_output(cid)`` hands out and then calls ``written``;
  once the output is empty and ``close`` is true it closes the socket and calls ``closed``;
* after every core call, wakes the tasks waiting on the keys ``pop_wakeups()`` names and
  resets (aborts, even mid-write) the sockets ``pop_aborts()`` names;
* runs one timer task per core: it sleeps until ``next_deadline()`` (for ever when None) or
  until :attr:`Signal.TIMER` is woken, then calls ``handle_timer(now)`` and
  ``set_wall_clock(now, time.time())``. Nothing else wakes periodically.

Wake keys are connection or call ids (ints) and the :class:`Signal` members below. A task
checks its condition first and only then waits on the key, so a wake-up cannot be lost: both
drivers (and the test harness) never switch tasks between the check and the wait.
"""

from __future__ import annotations

import enum
from typing import Protocol, TypeAlias

__all__ = ["DriverCore", "Signal", "WakeKey"]


class Signal(enum.Enum):
    """Typed wake keys beside connection and call ids."""

    #: ``begin_drain()`` was called and nothing is in flight any more (``core.in_flight == 0``).
    DRAINED = "drained"
    #: Receiver: ``max_reconnect_attempts`` exhausted (``core.given_up``; see ``core.last_error``).
    GAVE_UP = "gave_up"
    #: Receiver: ``pop_connects()`` has work (connections to open).
    CONNECTS = "connects"
    #: Receiver: ``pop_app_calls()`` has work (app calls to start).
    APP_CALLS = "app_calls"
    #: ``next_deadline()`` moved earlier: the timer task wakes and re-arms its sleep.
    TIMER = "timer"
    #: Gateway: a receiver's tunnel opened (``core.receivers`` grew).
    RECEIVERS = "receivers"


#: What ``pop_wakeups()`` names and a driver's tasks wait on.
WakeKey: TypeAlias = int | Signal


class DriverCore(Protocol):
    """What a driver's pump needs from a core (:class:`~anpx_core.gateway.GatewayCore` or
    :class:`~anpx_core.receiver.ReceiverCore`). ``now`` is always the driver's monotonic
    clock in seconds; ``cid`` a connection id the core handed out."""

    def receive(self, cid: int, data: bytes, now: float) -> None:
        """Bytes read from ``cid``; ``b""`` is EOF."""
        ...

    def lost(self, cid: int, now: float, reason: str = "") -> None:
        """Reading or writing ``cid`` failed (``reason`` for the log only)."""
        ...

    def take_output(self, cid: int) -> tuple[bytes, bool]:
        """Bytes to write to ``cid`` and whether to close it once they are written."""
        ...

    def written(self, cid: int, now: float) -> None:
        """Everything the last ``take_output(cid)`` handed out has been written."""
        ...

    def can_read(self, cid: int) -> bool:
        """Whether the driver may read from ``cid`` now (back-pressure otherwise)."""
        ...

    def closed(self, cid: int, now: float) -> None:
        """The socket of ``cid`` is closed; the core forgets it."""
        ...

    def pop_wakeups(self) -> set[WakeKey]:
        """Keys whose state changed since the last call: wake the tasks waiting on them."""
        ...

    def pop_aborts(self) -> set[int]:
        """Connections to reset now (close without flushing, a pending write too)."""
        ...

    def next_deadline(self) -> float | None:
        """Earliest ``now`` at which :meth:`handle_timer` must run; None: no timer armed."""
        ...

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now`` (cheap when none is)."""
        ...

    def set_wall_clock(self, now: float, wall: float) -> None:
        """The Unix time is ``wall`` at driver time ``now`` (for auth timestamps)."""
        ...
