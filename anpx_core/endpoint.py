"""One end of a tunnel connection: the WebSocket, its stream session, and the write
bookkeeping between them. The gateway's tunnels and the receiver's links are both one
:class:`TunnelEndpoint` (``TunnelEndpoint[WsServer]`` / ``TunnelEndpoint[WsClient]``)
plus what their side knows about the peer (identity and routes, or the gateway address).

API (``ep`` is an endpoint for connection ``cid``; every method is sans-IO):

* ``TunnelEndpoint(cid, ws, high_water)``: ``ws`` is a fresh ``WsServer`` / ``WsClient``;
  ``ep.session`` is None until :meth:`open_session` (after the WebSocket handshake).
* ``ep.receive(data, now)`` / ``ep.timers(now)``: feed bytes read (``b""``: EOF) or run
  the WebSocket's timers; both return a *lazy* iterator of :data:`EndpointEvent`: the
  WebSocket's own events (``HandshakeRequested``/``HandshakeAccepted``/``HandshakeRejected``/
  ``Closed``) as they are, and each message event (binary frame, oversized frame, control
  message) already turned into the session's :data:`~anpx_core.tunnel.StreamEvent` s.
  Lazy, so that a handshake event handled by the caller (which opens the session) takes
  effect for the messages that follow it in the same read. Pending flow-control credit
  is flushed once the iterator is exhausted. After ``timers`` the output may have changed
  without an event (a keepalive ping): the caller wakes ``cid`` anyway.
* ``ep.take_output() -> (data, close)`` and ``ep.written() -> wake-ups``: the driver
  contract's two calls for this connection. ``written`` returns the connection ids to
  wake: ``cid`` itself when reading was paused by :meth:`can_read` and may resume, and
  the producers that :meth:`may_produce` paused once the backlog fell below ``high_water``.
* ``ep.can_read(held=False)``: read the socket only while the peer reads what we owe it
  (``ws.over_backlog``) and the caller does not hold the tunnel (``held``: a v1 peer
  without flow control whose data has nowhere to go).
* ``ep.may_produce(key, rid)``: may the producer ``key`` (a client connection, an app
  call, an upstream) queue more bytes on stream ``rid`` now? When not because the tunnel's
  backlog is over ``high_water``, ``key`` is remembered and returned by ``written`` later;
  a stream without credit is woken by the session's ``StreamWritable`` instead.
* ``ep.abandon() -> wake-ups``: the tunnel is over: forget the session's streams (the
  caller fails its own per-stream state) and return the paused producers to wake.
* ``ep.backlog``: session bytes queued for the peer and not yet written by the driver;
  ``ep.next_deadline()``: the WebSocket's next timer (None: none).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from . import messages as M
from .meta import RequestHead, ResponseHead
from .tunnel import StreamEvent, TunnelSession
from .websocket import (
    BinaryDiscarded,
    BinaryReceived,
    Closed,
    ControlReceived,
    HandshakeAccepted,
    HandshakeRejected,
    HandshakeRequested,
    WsClient,
    WsEvent,
    WsServer,
)

W = TypeVar("W", WsServer, WsClient)

#: What an endpoint reports: the WebSocket's lifecycle events and the session's stream events.
EndpointEvent = HandshakeRequested | HandshakeAccepted | HandshakeRejected | Closed | StreamEvent


class TunnelEndpoint(Generic[W]):
    """The WebSocket + :class:`TunnelSession` of one tunnel connection, with the marks
    that tell how much of the session's output the driver has written."""

    __slots__ = (
        "cid",
        "high_water",
        "paused",
        "read_paused",
        "session",
        "taken_mark",
        "written_mark",
        "ws",
    )

    def __init__(self, cid: int, ws: W, high_water: int) -> None:
        self.cid = cid
        self.ws: W = ws
        self.session: TunnelSession | None = None
        self.high_water = high_water
        self.written_mark = 0  # session.bytes_out the driver has written
        self.taken_mark = 0  # session.bytes_out when take_output last handed bytes out
        self.paused: set[int] = set()  # producers waiting for the backlog to drain
        self.read_paused = False  # can_read said no because of ws.over_backlog

    def open_session(
        self,
        *,
        accepts: type[RequestHead] | type[ResponseHead],
        local_window: int | None,
        peer_window: int | None,
        send_frame_size: int,
        limits: M.Limits,
    ) -> TunnelSession:
        """The handshake is done: start multiplexing streams (see :class:`TunnelSession`)."""
        self.session = TunnelSession(
            self.ws,
            accepts=accepts,
            local_window=local_window,
            peer_window=peer_window,
            send_frame_size=send_frame_size,
            limits=limits,
        )
        self.written_mark = self.taken_mark = 0
        return self.session

    @property
    def backlog(self) -> int:
        """Session bytes queued for the peer that the driver has not written yet."""
        return 0 if self.session is None else self.session.bytes_out - self.written_mark

    # --- input -----------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Iterator[EndpointEvent]:
        """Bytes read from the socket (``b""``: EOF); iterate the result to the end."""
        return self._events(self.ws.receive_data(data, now))

    def timers(self, now: float) -> Iterator[EndpointEvent]:
        """Run the WebSocket's timers (keepalive ping, close and handshake timeouts)."""
        return self._events(self.ws.tick(now))

    def next_deadline(self) -> float | None:
        return self.ws.next_deadline()

    def stalled(self) -> bool:
        """Closed with output the peer never took: a peer that stopped reading (its keepalive
        or close timed out while the driver's write was blocked on it). Such a socket must be
        reset, since closing it politely waits on that write."""
        return self.ws.closed and self.ws.backlog > 0

    def _events(self, events: Iterable[WsEvent]) -> Iterator[EndpointEvent]:
        for event in events:
            if isinstance(event, BinaryReceived):
                if self.session is not None:
                    yield from self.session.receive_binary(event.data)
            elif isinstance(event, BinaryDiscarded):
                if self.session is not None:
                    yield from self.session.receive_discarded(event.prefix, event.size)
            elif isinstance(event, ControlReceived):
                if self.session is not None:
                    yield from self.session.receive_control(event.message)
            elif isinstance(
                event, (HandshakeRequested, HandshakeAccepted, HandshakeRejected, Closed)
            ):
                yield event
        if self.session is not None:
            self.session.flush_credits()

    # --- output ----------------------------------------------------------------------------

    def take_output(self) -> tuple[bytes, bool]:
        """The bytes to write now and whether to close the socket once they are written."""
        data = self.ws.data_to_send()
        if self.session is not None:
            self.taken_mark = self.session.bytes_out
        return data, self.ws.closed

    def written(self) -> set[int]:
        """The driver wrote what ``take_output`` gave it; returns the connections to wake."""
        self.written_mark = self.taken_mark
        self.ws.sent()
        wake: set[int] = set()
        if self.read_paused and not self.ws.over_backlog:
            self.read_paused = False
            wake.add(self.cid)
        if self.paused and self.backlog < self.high_water:
            wake |= self.paused
            self.paused = set()
        return wake

    def can_read(self, held: bool = False) -> bool:
        """Read the socket now? Not while the peer does not read what we owe it."""
        if self.ws.over_backlog:
            self.read_paused = True  # written() wakes us once the output drains
            return False
        return not self.ws.closed and not held

    def may_produce(self, key: int, request_id: str) -> bool:
        """May producer ``key`` queue more on stream ``request_id``? (See the module doc.)"""
        session = self.session
        if session is None:
            return True
        if self.backlog >= self.high_water:
            self.paused.add(key)
            return False
        return session.writable(request_id)

    def unpause(self, key: int) -> None:
        """Producer ``key`` is gone: do not wake it later."""
        self.paused.discard(key)

    def abandon(self) -> set[int]:
        """The tunnel is over: forget every stream; returns the paused producers to wake."""
        if self.session is not None:
            self.session.abandon()
            self.session = None
        wake, self.paused = self.paused, set()
        return wake
