"""Gateway links: one tunnel per gateway URL, dialled, authenticated and re-dialled.

A :class:`GatewayLink` is a connection of the receiver (it answers the driver's calls for
its socket) and a timer owner (WebSocket handshake, ping and close timeouts, the JSON pings
a v1 gateway needs, and the reconnect backoff). The streams its tunnel carries go to the
:class:`LinkOwner` (the coordinator), which hands them to a stream kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth import H_CLIENT_ID
from ..meta import RequestHead
from ..routing import ROUTES_HEADER
from ..tunnel import StreamEvent, TunnelSession, offer_extensions, parse_extensions
from ..websocket import (
    BinaryDiscarded,
    BinaryReceived,
    Closed,
    ControlReceived,
    HandshakeAccepted,
    HandshakeRejected,
    WsClient,
    WsEvent,
)
from .context import ReceiverContext
from .settings import MAX_RECONNECT_DELAY, ConnectRequest, GatewayAddress

log = logging.getLogger("anpx.receiver")


class LinkOwner(Protocol):
    """What a link needs from the coordinator."""

    def stream_event(self, link: GatewayLink, event: StreamEvent, now: float) -> None: ...
    def link_lost(self, link: GatewayLink) -> None: ...  # the tunnel is over: fail its streams
    def holding_body(self, link: GatewayLink) -> bool: ...  # v1: a request body waits
    def link_gave_up(self) -> None: ...


@dataclass(slots=True, eq=False)
class GatewayLink:
    """One gateway we keep a tunnel to."""

    address: GatewayAddress
    ctx: ReceiverContext
    owner: LinkOwner
    cid: int | None = None
    ws: WsClient | None = None
    session: TunnelSession | None = None
    attempts: int = 0  # failures since the last successful handshake
    retry_at: float | None = 0.0  # when to connect next; None: connected or given up
    state: str = "idle"  # idle | connecting | handshake | open | closed (flushing its Close)
    close_reason: str = ""
    lost_reason: str = ""  # the socket error that ended it, if any (e.g. a TLS alert)
    streams: dict[str, Any] = field(default_factory=dict)  # request id -> a stream kind's stream
    written_mark: int = 0  # session.bytes_out the driver has written
    taken_mark: int = 0
    paused: set[int] = field(default_factory=set)  # producers waiting for our backlog to drain
    read_paused: bool = False  # can_read said no because of ws.over_backlog

    @property
    def backlog(self) -> int:
        """Frames we queued for the gateway that the driver has not written yet."""
        return 0 if self.session is None else self.session.bytes_out - self.written_mark

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def over_high_water(self, producer: int) -> bool:
        """True (and ``producer`` is woken once the backlog drains) if it must pause."""
        if self.backlog >= self.ctx.settings.high_water:
            self.paused.add(producer)
            return True
        return False

    # --- timers ----------------------------------------------------------------------------

    def deadline(self) -> float | None:
        if self.ws is not None:
            return None if self.cid in self.ctx.doomed else self.ws.next_deadline()
        if self.state == "idle" and not self.ctx.stopping:
            return self.retry_at
        return None

    def rearm(self) -> None:
        self.ctx.arm(self, self.deadline())

    def on_timer(self, now: float) -> None:
        if self.cid in self.ctx.doomed:
            return
        if self.ws is not None:
            self._ws_events(self.ws.tick(now), now)
            self.ctx.wake(self.cid)
        elif (
            self.state == "idle"
            and self.retry_at is not None
            and now >= self.retry_at
            and not self.ctx.stopping
        ):
            self.dial()
        self.rearm()

    # --- the driver's calls for our socket --------------------------------------------------

    def dial(self) -> None:
        ctx = self.ctx
        cid = ctx.new_id()
        self.cid, self.state, self.retry_at = cid, "connecting", None
        ctx.conns[cid] = self
        addr = self.address
        ctx.connect(ConnectRequest(cid, addr.host, addr.port, addr.tls, "gateway"))
        self.rearm()

    def connected(self, now: float) -> None:
        self.state = "handshake"
        self.ws = WsClient(
            self.address.host_header,
            self.address.path,
            self.ctx.settings.ws,
            now,
            headers=self._handshake_headers(now),
        )
        self.rearm()

    def _handshake_headers(self, now: float) -> list[tuple[str, str]]:
        settings, addr = self.ctx.settings, self.address
        wall = now + self.ctx.wall_offset
        headers = list(settings.auth.request_headers(addr.host_header, addr.path, wall))
        if settings.client_id and not any(n == H_CLIENT_ID for n, _ in headers):
            headers.append((H_CLIENT_ID, settings.client_id))
        headers += offer_extensions(settings.stream_window)
        if settings.routes:
            headers.append((ROUTES_HEADER, ", ".join(settings.routes)))
        return headers

    def connect_failed(self, now: float, reason: str) -> None:
        addr = self.address
        self.down(now, f"cannot connect to {addr.host}:{addr.port}: {reason}")

    def note_lost(self, reason: str) -> None:
        if reason:
            self.lost_reason = reason

    def receive(self, data: bytes, now: float) -> None:
        if self.ws is None:
            return
        self._ws_events(self.ws.receive_data(data, now), now)
        if self.session is not None:
            self.session.flush_credits()
        self.rearm()

    def take_output(self) -> tuple[bytes, bool]:
        if self.ws is None:
            return b"", False
        if self.session is not None:
            self.taken_mark = self.session.bytes_out
        return self.ws.data_to_send(), self.ws.closed

    def written(self, now: float) -> None:
        self.written_mark = self.taken_mark
        if self.ws is not None:
            self.ws.sent()
            if self.read_paused and not self.ws.over_backlog:
                self.read_paused = False
                self.ctx.wake(self.cid)
        if self.paused and self.backlog < self.ctx.settings.high_water:
            self.ctx.wakeups.update(self.paused)
            self.paused.clear()

    def can_read(self) -> bool:
        ws = self.ws
        if ws is not None and ws.over_backlog:
            self.read_paused = True  # the gateway does not read what we owe it
            return False
        return ws is not None and not ws.closed and not self.owner.holding_body(self)

    def closed(self, now: float) -> None:
        self.down(now, (self.ws and "tunnel closed") or "connection closed")

    # --- what the coordinator asks of every link -------------------------------------------

    def send_drain(self) -> None:
        if self.session is not None:
            self.session.send_drain()
            self.ctx.wake(self.cid)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close(1001, "receiver shutting down")
            self.ctx.wake(self.cid)
        self.retry_at = None
        self.rearm()

    def fail(self, code: int, reason: str) -> None:
        """Close the tunnel with ``code`` (e.g. 1002 for frames we cannot parse)."""
        if self.ws is not None:
            self.ws.close(code, reason)
            self.ctx.wake(self.cid)

    def cancel_stream(self, rid: str, reason: str) -> None:
        if self.session is not None:
            self.session.cancel(rid, reason)
            self.ctx.wake(self.cid)

    # --- the tunnel's life ------------------------------------------------------------------

    def lose(self) -> None:
        """The tunnel is over (its socket may still be flushing a Close): fail its streams."""
        if self.session is not None:
            self.session.abandon()
            self.session = None
        self.owner.link_lost(self)
        self.streams.clear()
        self.ctx.wakeups.update(self.paused)
        self.paused.clear()

    def down(self, now: float, why: str) -> None:
        """The socket is gone: forget it and schedule the next attempt."""
        ctx = self.ctx
        was_open = self.state in ("open", "closed")
        self.lose()
        if self.cid is not None:
            ctx.conns.pop(self.cid, None)
        self.state, self.ws, self.cid = "idle", None, None
        why = self.close_reason or why
        if self.lost_reason:
            why += f" ({self.lost_reason})"
        self.close_reason = self.lost_reason = ""
        if was_open:
            level = logging.INFO if ctx.stopping else logging.WARNING
            log.log(level, "tunnel to %s closed: %s", self.address.host_header, why)
            self.attempts = 0
        else:
            ctx.last_error = why
        self.attempts += 1
        self._schedule_retry(now, why)
        self.rearm()

    def _schedule_retry(self, now: float, why: str) -> None:
        settings = self.ctx.settings
        limit = settings.max_reconnect_attempts
        if self.ctx.stopping:
            self.retry_at = None
        elif not settings.reconnect_enabled or (limit and self.attempts > limit):
            self.retry_at = None
            log.error(
                "giving up on %s after %d attempts: %s",
                self.address.host_header,
                self.attempts,
                why,
            )
            self.owner.link_gave_up()
        else:
            delay = backoff(settings.reconnect_delay, self.attempts, settings.jitter())
            self.retry_at = now + delay
            log.info(
                "reconnecting to %s in %.1fs (attempt %d): %s",
                self.address.host_header,
                delay,
                self.attempts,
                why,
            )

    def _ws_events(self, events: list[WsEvent], now: float) -> None:
        for event in events:
            self._ws_event(event, now)

    def _ws_event(self, event: WsEvent, now: float) -> None:
        session = self.session
        if isinstance(event, BinaryReceived):
            if session is not None:
                self._streams(session.receive_binary(event.data), now)
        elif isinstance(event, BinaryDiscarded):
            if session is not None:
                self._streams(session.receive_discarded(event.prefix, event.size), now)
        elif isinstance(event, ControlReceived):
            if session is not None:
                self._streams(session.receive_control(event.message), now)
        elif isinstance(event, HandshakeAccepted):
            self._accepted(event, now)
        elif isinstance(event, HandshakeRejected):
            lines = event.body.decode("utf-8", "replace").strip().splitlines()
            detail = lines[0][:200] if lines else ""  # one log line, whatever the server sent
            why = f"gateway refused the tunnel: HTTP {event.status}" + (
                f": {detail}" if detail else ""
            )
            log.error("%s", why)
            self.ctx.last_error = self.close_reason = why
        elif isinstance(event, Closed):
            # Streams fail now; the socket stays until the driver has written our Close
            # frame (take_output reports close) and called closed().
            if not self.close_reason:  # a refusal we logged already says more
                self.close_reason = f"closed ({event.code} {event.reason})".strip()
            if self.state == "open":
                self.state = "closed"
            self.lose()

    def _streams(self, events: list[StreamEvent], now: float) -> None:
        for event in events:
            self.owner.stream_event(self, event, now)

    def _accepted(self, event: HandshakeAccepted, now: float) -> None:
        ws, settings = self.ws, self.ctx.settings
        assert ws is not None
        problem = settings.auth.check_response(event.headers)
        if problem is not None:
            log.error("refusing gateway %s: %s", self.address.host_header, problem)
            self.ctx.last_error = self.close_reason = problem
            ws.close(1008, "gateway failed authentication")
            return
        peer_window = parse_extensions(event.headers)
        local_window = settings.stream_window if peer_window is not None else None
        self.session = TunnelSession(
            ws,
            accepts=RequestHead,
            local_window=local_window,
            peer_window=peer_window,
            send_frame_size=settings.send_frame_size,
            limits=settings.codec,
        )
        self.written_mark = self.taken_mark = 0
        if peer_window is None:
            self.session.greet_v1_gateway()
            # a v1 gateway drops receivers whose JSON pings stop for 2 x its ping interval
            ws.ping_every(settings.v1_ping_interval, now)
        self.state = "open"
        self.attempts = 0
        log.info(
            "tunnel to %s open (%s)",
            self.address.host_header,
            "flow control" if self.session.flow else "v1 gateway",
        )


def backoff(first: float, attempts: int, jitter: float) -> float:
    """The wait before attempt ``attempts + 1``: ``first`` doubling per failure up to
    MAX_RECONNECT_DELAY, scaled by 0.5 + ``jitter`` (``jitter`` in [0, 1): x0.5 .. x1.5)."""
    base = first * 2.0 ** min(attempts - 1, 16)
    jitter = min(max(jitter, 0.0), 1.0)
    return min(base, MAX_RECONNECT_DELAY) * (0.5 + jitter)
