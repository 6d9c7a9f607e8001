"""The gateway's WebSocket stream kind: a client's upgrade carried as one tunnel stream.

A request head with ``Upgrade: websocket`` arrives like any other on a
:class:`~anpx_core.gateway.http.ClientConn`; after the route is matched, the HTTP unit hands
it to :meth:`WebSockets.start`. That picks a receiver of the route, asks
:func:`~anpx_core.ws_gateway.upgrade_decision` (malformed, a receiver without the ``ws``
extension: 501, over a limit) and either answers with an HTTP error on the same connection or
replaces the connection in the coordinator's table by a :class:`WsClientConn`: the client
connection and the stream's owner at once, driving a
:class:`~anpx_core.ws_gateway.GatewayWebSocket`. A denial the client may follow with more
HTTP requests hands the connection back to its ``ClientConn``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import ProtocolError
from ..http1 import RequestStarted
from ..meta import ResponseHead
from ..ratelimit import address_key
from ..routing import Route
from ..tunnel import StreamData, StreamEnd, StreamHead, StreamReset, StreamWritable
from ..ws_gateway import GatewayWebSocket, Open, upgrade_decision
from ..wsstream import StreamCancel, StreamConsumed, StreamOp, StreamSend, StreamStart
from .http import REQUEST_ID_HEADER, OwnStreamEvent

if TYPE_CHECKING:
    from .core import GatewayCore
    from .http import ClientConn
    from .tunnels import TunnelConn

log = logging.getLogger("anpx.gateway")
access_log = logging.getLogger("anpx.access.gateway")


class WebSockets:
    """The unit's shared state: open sessions, per-address counts."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.sessions: dict[int, WsClientConn] = {}  # by client connection id
        self.by_address: dict[str, int] = {}
        self.closing = False  # going_away() ran: a lost tunnel means 1001, not 1011

    def start(self, http: ClientConn, event: RequestStarted, route: Route, now: float) -> bool:
        """Take a request head that asks for an upgrade: True when it was a WebSocket
        upgrade (answered with an error, or switched to a session), False to serve it as
        HTTP (another protocol's upgrade: its Upgrade field is already stripped)."""
        if event.upgrade is None:
            return False
        core = self.core
        settings = core.settings.websocket
        tunnel = core.tunnels.pick_websocket(route)
        key = address_key(http.peer)
        decision = upgrade_decision(
            event,
            ws_on_tunnel=tunnel is not None and tunnel.ws_streams,
            open_on_tunnel=0 if tunnel is None else tunnel.websockets,
            open_for_client=self.by_address.get(key, 0),
            settings=settings,
        )
        if decision is None:
            return False
        if not isinstance(decision, Open):
            if decision.status == 501 and tunnel is None:
                # no receiver at all: the same answer as for HTTP
                if core.tunnels.serving(route):
                    http.refuse(503, f"all receivers of route {route} are busy", [])
                else:
                    http.refuse(503, f"no receiver connected for route {route}", [])
                return True
            if decision.status == 429:
                core.stats.rate_limited += 1
            http.refuse(decision.status, decision.text, list(decision.headers))
            return True
        assert tunnel is not None and tunnel.session is not None
        rid = core.settings.new_request_id()
        conn = WsClientConn(self, http, tunnel, rid, key, decision, now)
        tunnel.streams[rid] = conn
        tunnel.websockets += 1
        self.by_address[key] = self.by_address.get(key, 0) + 1
        self.sessions[http.cid] = conn
        core.replace(http.cid, conn)
        conn.sync(now)
        return True

    def going_away(self, now: float) -> None:
        """The gateway shuts down: close every session with 1001."""
        self.closing = True
        for conn in list(self.sessions.values()):
            conn.session.drain(now)
            conn.sync(now)


class WsClientConn:
    """One client connection switched to a WebSocket session (a coordinator connection and
    the owner of its tunnel stream)."""

    def __init__(
        self,
        unit: WebSockets,
        http: ClientConn,
        tunnel: TunnelConn,
        rid: str,
        address_key: str,
        opening: Open,
        now: float,
    ) -> None:
        self.unit = unit
        self.http = http  # the connection's HTTP side: its accounting, and a denial's sequel
        self.cid = http.cid
        self.tunnel: TunnelConn | None = tunnel
        self.rid = rid
        self.key: str | None = address_key
        self.started = now
        self.request_id = http.request_id or rid
        self.target = opening.head.target
        head = opening.head
        if not http.request_id:
            head.headers.append((REQUEST_ID_HEADER, rid))
        self.session = GatewayWebSocket(http.front, opening, unit.core.settings.websocket, now)

    @property
    def core(self) -> GatewayCore:
        return self.unit.core

    # --- the coordinator's calls -----------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        self.session.receive_data(data, now)
        self.sync(now)

    def resume(self, now: float) -> None:
        pass

    def take_output(self) -> tuple[bytes, bool]:
        data = self.session.data_to_send()
        return data, self.session.closed

    def written(self, now: float) -> None:
        self.session.written()
        self.sync(now)

    def can_read(self) -> bool:
        if not self.session.wants_read:
            return False
        tunnel = self.tunnel
        if tunnel is not None and self.session.phase == "open":
            return tunnel.end.may_produce(self.cid, self.rid)
        return True

    def closed(self, now: float) -> None:
        if not self.session.closed:
            self.session.receive_data(b"", now)  # the client vanished
            self.sync(now)
        tunnel = self.tunnel
        if tunnel is not None and tunnel.session is not None and not self.session.closed:
            tunnel.session.cancel(self.rid, "client connection closed")
            self.core.wake(tunnel.cid)
        self._release(now)
        self.http.closed(now)

    def deadline_at(self, now: float) -> float | None:
        return self.session.next_deadline()

    def on_timer(self, now: float) -> None:
        self.session.handle_timer(now)
        self.sync(now)

    # --- StreamOwner -----------------------------------------------------------------------

    def stream_event(self, tunnel: TunnelConn, event: OwnStreamEvent) -> None:
        now = self.core.now
        if isinstance(event, StreamHead):
            assert isinstance(event.head, ResponseHead)
            self.session.stream_head(event.head, now)
        elif isinstance(event, StreamData):
            self.session.stream_data(event.data, now)
        elif isinstance(event, StreamEnd):
            self.session.stream_end(now)
        elif isinstance(event, StreamReset):
            # the reason may describe the receiver's inside: the log has it, the client 1011
            log.info("WebSocket %s reset by the receiver: %s", self.request_id, event.reason)
            self.session.stream_reset(event.reason, now)
        elif isinstance(event, StreamWritable):
            pass  # sync() below updates the relay; reading resumes at the wake-up
        self.sync(now)

    def tunnel_failed(self, why: str) -> None:
        now = self.core.now
        self.session.tunnel_lost(now, going_away=self.unit.closing or self.core.draining)
        self.tunnel = None  # the stream is gone with the tunnel
        self.sync(now)

    # --- internals -----------------------------------------------------------------------------

    def sync(self, now: float) -> None:
        """After every call: carry the session's stream operations out, let the relay know
        whether the stream takes more, hand a denied connection back to HTTP."""
        core, session = self.core, self.session
        ops = session.take_ops()
        tunnel = self.tunnel
        if tunnel is not None and tunnel.session is not None and self.rid in tunnel.streams:
            if ops:
                self._apply(tunnel, ops, now)
            if tunnel.session is not None:
                session.set_stream_writable(tunnel.session.writable(self.rid))
        core.wake(self.cid)
        if session.closed or session.http_continues:
            self._release(now)
        if session.http_continues and core.connection(self.cid) is self:
            core.replace(self.cid, self.http)
            core.defer(self.http)  # serve what the client pipelined after its upgrade

    def _apply(self, tunnel: TunnelConn, ops: list[StreamOp], now: float) -> None:
        end = tunnel.session
        assert end is not None
        rid = self.rid
        try:
            for op in ops:
                if isinstance(op, StreamSend):
                    end.send(rid, op.data)
                    end.flush(rid)
                elif isinstance(op, StreamConsumed):
                    end.consumed(rid, op.nbytes)
                elif isinstance(op, StreamStart):
                    end.start(rid, op.head)
                    end.flush(rid)
                elif isinstance(op, StreamCancel):
                    end.cancel(rid, op.reason)
                else:
                    end.end(rid)
        except ProtocolError as exc:  # a head the tunnel cannot carry (too large)
            log.info("WebSocket %s cannot be carried: %s", self.request_id, exc)
            end.cancel(rid, "request head too large")
            self.session.tunnel_lost(now)
            self.session.take_ops()
        end.flush_credits()
        self.core.wake(tunnel.cid)

    def _release(self, now: float) -> None:
        """The stream is over: free its places (once)."""
        unit = self.unit
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            if tunnel.streams.get(self.rid) is self:
                del tunnel.streams[self.rid]
            tunnel.websockets -= 1
            tunnel.end.unpause(self.cid)
        if self.key is not None:
            left = unit.by_address.get(self.key, 0) - 1
            if left > 0:
                unit.by_address[self.key] = left
            else:
                unit.by_address.pop(self.key, None)
            self.key = None
            if unit.sessions.get(self.cid) is self:
                del unit.sessions[self.cid]
            self._log_access(now)

    def _log_access(self, now: float) -> None:
        session = self.session
        status = session.status or 0
        self.core.stats.record(self.http.route, status or 499, now - self.started)
        access_log.info(
            "%s %s WS %s %d close=%s %.1fms route=%s",
            self.request_id,
            self.http.peer,
            self.target,
            status,
            session.close_code if session.close_code is not None else "-",
            (now - self.started) * 1000,
            self.http.route,
        )
