"""The driver contract: what a driver's pump needs from a gateway or receiver core."""

from __future__ import annotations

import enum
from typing import Protocol


class Signal(enum.Enum):  # typed wake keys beside connection/call ids (ints)
    DRAINED = "drained"  # begin_drain() was called and nothing is in flight any more
    GAVE_UP = "gave_up"  # receiver: max_reconnect_attempts exhausted (see core.last_error)
    CONNECTS = "connects"  # receiver: pop_connects() has work
    APP_CALLS = "app_calls"  # receiver: pop_app_calls() has work
    TIMER = "timer"  # next_deadline() moved earlier: the timer task re-arms


WakeKey = int | Signal


class DriverCore(Protocol):  # what a driver's pump needs from a gateway or receiver core
    def receive(self, cid: int, data: bytes, now: float) -> None: ...
    def lost(self, cid: int, now: float, reason: str = "") -> None: ...
    def take_output(self, cid: int) -> tuple[bytes, bool]: ...
    def written(self, cid: int, now: float) -> None: ...
    def can_read(self, cid: int) -> bool: ...
    def closed(self, cid: int, now: float) -> None: ...
    def pop_wakeups(self) -> set[WakeKey]: ...
    def pop_aborts(self) -> set[int]: ...
    def next_deadline(self) -> float | None: ...  # earliest `now` at which handle_timer must run
    def handle_timer(self, now: float) -> None: ...  # run every timer due at `now`
    def set_wall_clock(self, now: float, wall: float) -> None: ...
