"""The drivers' timer task (``Pump.run_timers``) against a scripted core: it sleeps until
``next_deadline()``, re-arms when the core names ``Signal.TIMER``, and never polls an idle
core. trio runs in virtual time (MockClock); asyncio on the real clock, asserting order only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import trio
import trio.testing

from anpx_asyncio._pump import Pump as AsyncioPump
from anpx_core.contract import DriverCore, Signal, WakeKey
from anpx_trio._pump import Pump as TrioPump


class ScriptedCore:
    """Only the timer half of :class:`DriverCore`; a test sets ``deadline``."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.handled: list[float] = []
        self.walls: list[tuple[float, float]] = []
        self.deadline_reads = 0
        self.wakeups: set[WakeKey] = set()
        self.on_timer: Callable[[], None] = lambda: None

    def next_deadline(self) -> float | None:
        self.deadline_reads += 1
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.handled.append(now)
        self.deadline = None  # nothing armed until the test arms it again
        self.on_timer()

    def set_wall_clock(self, now: float, wall: float) -> None:
        self.walls.append((now, wall))

    def arm(self, deadline: float) -> None:
        """What a core does when a new deadline is earlier than the one it had."""
        self.deadline = deadline
        self.wakeups.add(Signal.TIMER)

    def pop_wakeups(self) -> set[WakeKey]:
        out, self.wakeups = self.wakeups, set()
        return out

    def pop_aborts(self) -> set[int]:
        return set()

    def receive(self, cid: int, data: bytes, now: float) -> None: ...
    def lost(self, cid: int, now: float, reason: str = "") -> None: ...
    def take_output(self, cid: int) -> tuple[bytes, bool]:
        return b"", False

    def written(self, cid: int, now: float) -> None: ...
    def can_read(self, cid: int) -> bool:
        return True

    def closed(self, cid: int, now: float) -> None: ...


def test_the_scripted_core_satisfies_the_contract() -> None:
    core: DriverCore = ScriptedCore()  # checked by mypy --strict (tests/test_typing.py)
    assert core.next_deadline() is None


def test_trio_timer_fires_at_the_deadline_and_sleeps_while_idle() -> None:
    core = ScriptedCore()
    pump = TrioPump(core)

    async def main() -> None:
        start = trio.current_time()
        core.deadline = start + 30.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_timers)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(29.999)
            assert core.handled == []
            await trio.sleep(0.002)
            assert core.handled == [start + 30.0]  # exactly on time, in virtual time
            assert core.walls and core.walls[0][0] == start + 30.0
            # nothing armed: an hour passes without a single look at the core
            reads = core.deadline_reads
            await trio.sleep(3600)
            assert core.deadline_reads == reads and len(core.handled) == 1
            # a deadline armed earlier than none at all: Signal.TIMER re-arms the sleep
            armed_at = trio.current_time()
            core.arm(armed_at + 5.0)
            pump.sync()
            await trio.sleep(5.001)
            assert core.handled[1:] == [armed_at + 5.0]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_asyncio_timer_fires_after_the_deadline_and_rearms_on_the_signal() -> None:
    core = ScriptedCore()
    pump = AsyncioPump(core)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ran = asyncio.Event()
        core.on_timer = ran.set
        core.deadline = loop.time() + 0.01
        task = loop.create_task(pump.run_timers())
        try:
            await asyncio.wait_for(ran.wait(), 5)
            ran.clear()
            assert len(core.handled) == 1 and core.walls
            # idle: the task is parked, not polling
            reads = core.deadline_reads
            for _ in range(100):
                await asyncio.sleep(0)
            assert core.deadline_reads == reads
            core.arm(loop.time() + 0.01)
            pump.sync()
            await asyncio.wait_for(ran.wait(), 5)
            assert len(core.handled) == 2
        finally:
            task.cancel()

    asyncio.run(main())
