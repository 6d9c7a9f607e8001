"""What the receiver's units share, and the seams between them.

:class:`ReceiverContext` is the runtime every unit gets: settings, the connection table,
the queues the driver pops, wake-ups, deadlines and the clock. The protocols name what the
coordinator (:mod:`.core`) asks of a connection, of a timer owner and of a stream kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..contract import Signal, WakeKey
from ..meta import RequestHead
from ..timers import Deadlines
from .settings import ConnectRequest, ReceiverSettings

if TYPE_CHECKING:
    from .links import GatewayLink

Scope = dict[str, Any]


class Timed(Protocol):
    """Owns a deadline in :attr:`ReceiverContext.timers` (keyed by identity)."""

    def __hash__(self) -> int: ...
    def on_timer(self, now: float) -> None: ...


class Connection(Protocol):
    """One socket the driver serves for us: a gateway link or an upstream connection."""

    def connected(self, now: float) -> None: ...
    def connect_failed(self, now: float, reason: str) -> None: ...
    def note_lost(self, reason: str) -> None: ...
    def receive(self, data: bytes, now: float) -> None: ...
    def take_output(self) -> tuple[bytes, bool]: ...
    def written(self, now: float) -> None: ...
    def can_read(self) -> bool: ...
    def closed(self, now: float) -> None: ...


class AppCallHandler(Protocol):
    """Serves the ``receive``/``send`` of app calls other than HTTP requests (a WebSocket)."""

    def receive(self, call_id: int) -> dict[str, Any] | None: ...
    def send(self, call_id: int, message: dict[str, Any]) -> None: ...
    def writable_now(self, call_id: int) -> bool: ...
    def finished(self, call_id: int, exc: BaseException | None) -> None: ...


class Stream(Protocol):
    """One tunnel stream being served by a stream kind."""

    rid: str
    link: GatewayLink
    kind: StreamKind


class StreamKind(Protocol):
    """A handler unit for one kind of tunnel stream (HTTP today). The coordinator opens a
    stream with the first kind that claims its head and routes its events to that kind."""

    def claims(self, link: GatewayLink, head: RequestHead) -> bool: ...
    def open(self, link: GatewayLink, rid: str, head: RequestHead, now: float) -> None: ...
    def data(self, stream: Any, data: bytes, now: float) -> None: ...
    def end(self, stream: Any, now: float) -> None: ...
    def reset(self, stream: Any, reason: str) -> None: ...
    def writable(self, stream: Any) -> None: ...
    def holding_body(self, stream: Any, limit: int) -> bool: ...
    def contain(self, stream: Any, exc: BaseException, where: str) -> None: ...
    def stop(self) -> None: ...  # the receiver closes its tunnels next
    @property
    def in_flight(self) -> int: ...


class ReceiverContext:
    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self.conns: dict[int, Connection] = {}
        self.doomed: set[int] = set()  # reset by the crash barrier, socket not closed yet
        self.wakeups: set[WakeKey] = set()
        self.connects: list[ConnectRequest] = []
        self.aborts: set[int] = set()  # sockets to reset (TCP streams)
        self.app_calls: list[tuple[int, Scope]] = []
        # app calls whose receive/send a stream kind other than HTTP serves, by call id
        self.app_handlers: dict[int, AppCallHandler] = {}
        self.timers: Deadlines[Timed] = Deadlines()
        self.now = 0.0  # the time of the call being handled, for access-log durations
        self.wall_offset = 0.0  # Unix time minus the driver's clock (for auth timestamps)
        self.stopping = False
        self.given_up = False
        self.last_error = ""
        self._next_id = 1

    def new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def wake(self, key: WakeKey | None) -> None:
        if key is not None:
            self.wakeups.add(key)

    def abort(self, cid: int) -> None:
        """Have the driver reset socket ``cid`` (a TCP stream's local connection)."""
        self.aborts.add(cid)
        self.wakeups.add(cid)

    def arm(self, owner: Timed, when: float | None) -> None:
        """(Re-)arm ``owner``'s deadline; wake the driver's timer if it moved earlier."""
        timers = self.timers
        current = timers.get(owner)
        if when == current:
            return  # unchanged (a link re-armed after each read, its keepalive as it was)
        if when is None or (current is not None and when > current):
            timers.set(owner, when)  # later or off: the earliest deadline cannot move earlier
            return
        before = timers.next()
        timers.set(owner, when)
        if before is None or when < before:
            self.wakeups.add(Signal.TIMER)

    def connect(self, request: ConnectRequest) -> None:
        self.connects.append(request)
        self.wakeups.add(Signal.CONNECTS)

    def start_app_call(
        self, call_id: int, scope: Scope, handler: AppCallHandler | None = None
    ) -> None:
        """Have the driver run the app for ``scope``; its receive/send go to ``handler``
        (None: the HTTP stream kind's ASGI backend)."""
        if handler is not None:
            self.app_handlers[call_id] = handler
        self.app_calls.append((call_id, scope))
        self.wakeups.add(Signal.APP_CALLS)
