"""The receiver's TCP stream kind (protocol.md §21): a stream opening one of our services
becomes a connection to its local address, bridged by a :class:`~anpx_core.tcp.TcpPipe`.

The answer (``200 connected``) goes out once the driver has connected; a failed connect
resets the stream with a one-word reason (``connect failed: refused``), the full OS error
going to our log. Bytes that arrive before the connection is up wait here, bounded by the
session's window (the stream's wider ``tcp_stream_window`` is granted with the answer; credit
returns only as the service's socket takes them).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..meta import RequestHead
from ..tcp import (
    CONNECT_FAILED,
    CONNECTED,
    PEER_HEADER,
    TCP_METHOD,
    TcpPipe,
    service_of,
    short_reason,
)
from .context import ReceiverContext
from .settings import ConnectRequest

if TYPE_CHECKING:
    from .links import GatewayLink

log = logging.getLogger("anpx.receiver.tcp")


class LocalConn:
    """One connection to a local service: a receiver connection, a stream and a timer owner."""

    __slots__ = ("cid", "connected_now", "kind", "link", "pipe", "rid", "what")

    def __init__(
        self, kind: TcpStreams, cid: int, link: GatewayLink, rid: str, pipe: TcpPipe, what: str
    ) -> None:
        self.kind = kind
        self.cid = cid
        self.link = link
        self.rid = rid
        self.pipe = pipe
        self.what = what
        self.connected_now = False

    def __hash__(self) -> int:
        return id(self)

    def _arm(self) -> None:
        self.kind.ctx.arm(self, self.pipe.deadline())

    # --- the driver's calls for our socket -------------------------------------------------

    def connected(self, now: float) -> None:
        self.connected_now = True
        pipe, ctx = self.pipe, self.kind.ctx
        if pipe.dead:  # reset while connecting
            ctx.abort(self.cid)
            return
        session = self.link.session
        if session is not None and session.has_stream(self.rid):
            session.start(self.rid, CONNECTED)
            session.flush(self.rid)
            # The stream's own window is granted with the answer, in the same tunnel write:
            # granted at open it cost the gateway a wake-up of its own per connection, and
            # until the service is connected bytes wait here within the session's window.
            session.widen(self.rid, ctx.settings.tcp.window)
            session.flush_credits()
            ctx.wake(self.link.cid)
        pipe.last = now
        log.debug("%s: connected", self.what)
        ctx.wake(self.cid)
        self._arm()

    def connect_failed(self, now: float, reason: str) -> None:
        log.warning("%s: connect failed: %s", self.what, reason)
        self.pipe.dead = True
        self.link.cancel_stream(self.rid, f"{CONNECT_FAILED}: {short_reason(reason)}")
        self._forget()

    def note_lost(self, reason: str) -> None:
        self.pipe.sock_lost(reason)
        self._arm()

    def receive(self, data: bytes, now: float) -> None:
        self.pipe.sock_data(data, now)
        self._arm()

    def take_output(self) -> tuple[bytes, bool]:
        if not self.connected_now:
            return b"", False
        return self.pipe.take_output()

    def written(self, now: float) -> None:
        self.pipe.written(now)
        self._arm()

    def can_read(self) -> bool:
        return self.connected_now and self.pipe.can_read()

    def closed(self, now: float) -> None:
        self.pipe.closed()
        self._forget()

    def on_timer(self, now: float) -> None:
        self.pipe.on_timer(now)
        self._arm()

    def _forget(self) -> None:
        self.kind.live.discard(self)
        self.kind.ctx.timers.set(self, None)
        if self.link.streams.get(self.rid) is self:
            del self.link.streams[self.rid]


class TcpStreams:
    """The stream kind: claims ``ANPX-TCP`` heads (registered only when services are set)."""

    def __init__(self, ctx: ReceiverContext) -> None:
        self.ctx = ctx
        self.opened = 0
        self.live: set[LocalConn] = set()  # streams not yet over

    @property
    def services(self) -> dict[str, tuple[str, int]]:
        return self.ctx.settings.tcp_services

    @property
    def in_flight(self) -> int:
        return len(self.live)

    def claims(self, link: GatewayLink, head: RequestHead) -> bool:
        return head.method == TCP_METHOD  # open() refuses it where tcp was not negotiated

    def stop(self) -> None:
        """The receiver closes its tunnels next, which resets every TCP stream on them:
        a TCP connection has no going-away message to send first."""

    def open(self, link: GatewayLink, rid: str, head: RequestHead, now: float) -> None:
        if not link.tcp:
            link.cancel_stream(rid, "tcp streams were not negotiated")
            return
        service = service_of(head)
        target = self.services.get(service) if service is not None else None
        if service is None or target is None:
            log.warning("tcp stream %s for unknown service %r refused", rid, head.target[:64])
            link.cancel_stream(rid, "no such service")
            return
        if link.cid is None or link.session is None:
            return
        peer = next((v for n, v in head.headers if n == PEER_HEADER), "-")
        what = f"tcp {service} ({target[0]}:{target[1]}) for {peer[:80]}"
        ctx = self.ctx
        cid = ctx.new_id()
        pipe = TcpPipe(
            cid, rid, link, link.cid, ctx, ctx.settings.tcp, now, answered=True, what=what
        )
        conn = LocalConn(self, cid, link, rid, pipe, what)
        ctx.conns[cid] = conn
        link.streams[rid] = conn
        self.live.add(conn)
        self.opened += 1
        ctx.connect(ConnectRequest(cid, target[0], target[1], False, "tcp"))
        conn._arm()

    def data(self, stream: LocalConn, data: bytes, now: float) -> None:
        stream.pipe.stream_data(data, now)
        stream._arm()

    def end(self, stream: LocalConn, now: float) -> None:
        stream.pipe.stream_end()

    def reset(self, stream: LocalConn, reason: str) -> None:
        stream.pipe.stream_reset(reason)
        stream._forget()

    def writable(self, stream: LocalConn) -> None:
        stream.pipe.writable()

    def holding_body(self, stream: LocalConn, limit: int) -> bool:
        return False  # tcp streams need flow control: credit bounds what waits here

    def contain(self, stream: LocalConn, exc: BaseException, where: str) -> None:
        log.error("internal error on %s (%s); resetting it", stream.what, where, exc_info=exc)
        stream.pipe.reset("internal error")
        stream._forget()
