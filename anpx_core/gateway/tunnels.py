"""The gateway's tunnels: one :class:`TunnelConn` per receiver connection, and the
:class:`Tunnels` unit that admits them (WebSocket handshake, authentication with DID
documents parked until fetched, route claims), picks one for a request and fails the
streams of one that goes.

A tunnel's streams belong to the unit that opened them (a :class:`StreamOwner`: today
the HTTP exchange, :class:`~anpx_core.gateway.http.ClientConn`); the tunnel hands each
stream event to its owner and keeps a bug in one owner from reaching the others.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from ..contract import Signal
from ..didwba import DID_REFUSAL
from ..endpoint import EndpointEvent, TunnelEndpoint
from ..headers import get_header
from ..meta import ResponseHead
from ..routing import ROUTES_HEADER, Route, claims_allowed, format_routes, parse_routes_header
from ..siblings import format_tunnel_ports
from ..tcp import is_visitor
from ..tunnel import (
    PeerDraining,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamMessage,
    StreamReset,
    StreamWritable,
    TunnelBroken,
    TunnelSession,
    parse_extensions,
    split_message,
)
from ..websocket import Closed, HandshakeAccepted, HandshakeRejected, HandshakeRequested, WsServer
from ..wsstream import offer_ws_extensions, ws_in_effect
from .tcp import TcpRefusal, VisitorLink

if TYPE_CHECKING:
    from .core import GatewayCore

log = logging.getLogger("anpx.gateway")

OwnStreamEvent = StreamHead | StreamData | StreamEnd | StreamReset | StreamWritable
#: The event classes above (exact types: the tunnel layer makes no subclasses of them).
_OWN_EVENTS = frozenset({StreamHead, StreamData, StreamEnd, StreamReset, StreamWritable})


class StreamOwner(Protocol):
    """The unit side of one stream the gateway opened on a tunnel (one per stream kind).

    An owner may also define ``stream_message(tunnel, event)`` for a whole
    :class:`~anpx_core.tunnel.StreamMessage`; one that does not gets its three events
    (:func:`~anpx_core.tunnel.split_message`), each dispatched as if it came alone.
    """

    @property
    def cid(self) -> int: ...  # the client connection the stream serves

    def stream_event(self, tunnel: TunnelConn, event: OwnStreamEvent) -> None: ...

    def tunnel_failed(self, why: str) -> None:
        """The tunnel is gone (or reset the stream): end the exchange, tell the client."""
        ...


class TunnelConn:
    """A receiver's tunnel: the shared endpoint plus what the gateway knows of the receiver."""

    __slots__ = (
        "congested",
        "connected_at",
        "delegate",
        "end",
        "identity",
        "peer",
        "peer_host",
        "routes",
        "services",
        "streams",
        "unit",
        "websockets",
        "ws_streams",
    )

    def __init__(
        self, unit: Tunnels, end: TunnelEndpoint[WsServer], peer: str, peer_host: str, now: float
    ) -> None:
        self.unit = unit
        self.end = end
        self.peer = peer  # for logs: "host:port", or the client behind a trusted proxy
        self.peer_host = peer_host  # the socket's address, without the port
        self.identity = ""
        self.streams: dict[str, StreamOwner] = {}
        self.congested: set[int] = set()  # v1: clients with a full backlog hold our reading
        self.connected_at = now
        self.routes: list[Route] = []
        self.ws_streams = False  # the ws extension is in effect (WebSockets may be opened)
        self.websockets = 0  # WebSocket sessions open on this tunnel (also in streams)
        self.services: list[str] = []  # TCP services offered (protocol.md §21)
        self.delegate: VisitorLink | None = None  # a visitor's connection, not a receiver's

    @property
    def cid(self) -> int:
        return self.end.cid

    @property
    def ws(self) -> WsServer:
        return self.end.ws

    @property
    def session(self) -> TunnelSession | None:
        return self.end.session

    @property
    def paused(self) -> set[int]:
        return self.end.paused

    # --- the coordinator's calls -----------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        for event in self.end.receive(data, now):
            self._event(event, now)

    def resume(self, now: float) -> None:
        pass

    def take_output(self) -> tuple[bytes, bool]:
        return self.end.take_output()

    def written(self, now: float) -> None:
        self.unit.core.wake_all(self.end.written())

    def can_read(self) -> bool:
        return self.end.can_read(held=bool(self.congested))

    def closed(self, now: float) -> None:
        self.unit.parked.pop(self.cid, None)
        if self.delegate is not None:
            self.delegate.gone("visitor disconnected")
        self.unit.gone(self, "receiver disconnected")

    def deadline_at(self, now: float) -> float | None:
        return self.end.next_deadline()

    def on_timer(self, now: float) -> None:
        open_before = not self.end.ws.closed
        for event in self.end.timers(now):
            self._event(event, now)
        if open_before and self.end.stalled():
            # Ended by a timeout with output unwritten: the peer stopped reading and the
            # driver's write may be blocked on it for ever. Reset the socket instead.
            self.unit.core.abort(self.cid)
        # a keepalive ping or a close timeout changes the output without an event
        self.unit.core.wake(self.cid)

    # --- events ----------------------------------------------------------------------------

    def _event(self, event: EndpointEvent, now: float) -> None:
        # No wake(self.cid) here: both callers woke this connection already (the
        # coordinator before receive(), on_timer() after its events).
        kind = type(event)
        if kind is StreamMessage and self.delegate is None:  # the common case first
            owner = self.streams.get(event.request_id)  # type: ignore[union-attr]
            if owner is None:  # a stream that ended already, or one we never opened
                return
            if hasattr(owner, "stream_message"):
                self._guarded_stream_event(event, owner)
                return
        if kind is StreamMessage:  # for an owner without stream_message, or the delegate
            for part in split_message(event):  # type: ignore[arg-type]
                self._event(part, now)
        elif self.delegate is not None:
            self.delegate.event(event, now)
        elif kind in _OWN_EVENTS:  # a stream's event
            owner = self.streams.get(event.request_id)  # type: ignore[union-attr]
            if owner is not None:  # else: a stream that ended already, or one we never opened
                self._guarded_stream_event(event, owner)
        elif isinstance(event, HandshakeRequested):
            self.unit.handshake(self, event, now)
        elif isinstance(event, Closed):
            self.unit.gone(self, f"receiver disconnected ({event.code})")
        elif isinstance(event, HandshakeAccepted | HandshakeRejected):
            pass  # client-side events; a server never sees them
        else:
            self._guarded_stream_event(event, None)

    def _guarded_stream_event(self, event: Any, owner: StreamOwner | None) -> None:
        """The crash barrier for one stream: an unexpected exception resets that stream
        (and its client connection, whose response is in an unknown state), not the tunnel.
        ``owner``: the stream's owner, looked up already (None: look it up)."""
        try:
            if owner is None:
                self._stream_event(event)
            elif type(event) is StreamMessage:
                owner.stream_message(self, event)  # type: ignore[attr-defined]
            else:
                owner.stream_event(self, event)
        except Exception as exc:
            core = self.unit.core
            rid = getattr(event, "request_id", None)
            owner = self.streams.pop(rid, None) if rid is not None else None
            if owner is None:
                if rid is None or self.session is None:
                    core.contain(self.cid, exc, "a tunnel event")
                    return
                log.error("internal error on stream %s; resetting it", rid, exc_info=exc)
            elif hasattr(owner, "crashed"):  # a visitor's relay: that stream only, both sides
                owner.crashed(exc, f"stream {rid}")
            else:
                core.contain(owner.cid, exc, f"stream {rid}")
            if self.session is not None and rid is not None:
                self.session.cancel(rid, "internal error")
            core.wake(self.cid)

    def _stream_event(self, event: Any) -> None:
        if isinstance(event, TunnelBroken):
            log.warning("receiver %s sent unframeable data: %s", self.identity, event.reason)
            self.ws.close(1002, "bad ANPX frame")
            self.unit.gone(self, "receiver sent a malformed frame")
            return
        if isinstance(event, PeerDraining):
            log.info("receiver %s is draining", self.identity)
            return
        owner = self.streams.get(event.request_id)
        if owner is not None:  # else: a stream that ended already, or one we never opened
            owner.stream_event(self, event)


class Tunnels:
    """The tunnel unit's shared state: the open tunnels and the parked handshakes."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.open: list[TunnelConn] = []  # handshake done, not gone
        # Tunnel handshakes waiting for the authenticator (a DID document being fetched);
        # the driver bounds the fetch and calls resume_handshakes either way.
        self.parked: dict[int, tuple[TunnelConn, HandshakeRequested]] = {}

    def new(self, cid: int, now: float, peer: tuple[str, int] | None) -> TunnelConn:
        settings = self.core.settings
        end = TunnelEndpoint(cid, WsServer(settings.ws, now), settings.high_water)
        return TunnelConn(self, end, _addr(peer), peer[0] if peer else "-", now)

    def handshake(self, tunnel: TunnelConn, event: HandshakeRequested, now: float) -> None:
        core, settings = self.core, self.core.settings
        if is_visitor(event.headers):
            core.tcp.visitor_handshake(tunnel, event, now)
            return
        client = core.proxies.client(tunnel.peer_host, get_header(event.headers, "x-forwarded-for"))
        if client != tunnel.peer_host:
            tunnel.peer = client  # else keep the port too, for the logs
        verdict = settings.auth.check_request(
            event.host, event.path, event.headers, tunnel.peer, now + core.wall_offset
        )
        if verdict.wait:  # the authenticator needs a DID document first: resume_parked
            self.parked[tunnel.cid] = (tunnel, event)
            return
        ws = tunnel.ws
        if not verdict.ok:
            core.stats.auth_failures += 1
            log.warning(
                "tunnel handshake from %s refused: %s",
                tunnel.peer,
                verdict.reason or verdict.status,
            )
            if verdict.status >= 4000:  # DID-WBA: close the upgraded socket, as anp-proxy does
                ws.accept()
                ws.close(verdict.status, DID_REFUSAL)
            else:
                ws.reject(verdict.status, "", verdict.headers)
            return
        try:
            routes = parse_routes_header(get_header(event.headers, ROUTES_HEADER))
        except ValueError as exc:
            log.warning(
                "tunnel handshake from %s refused: bad %s: %s", tunnel.peer, ROUTES_HEADER, exc
            )
            ws.reject(400, f"bad {ROUTES_HEADER}: {exc}")
            return
        allowed = settings.route_claims
        if allowed is not None:
            denied = claims_allowed(routes, allowed.get(verdict.identity, []))
            if denied is not None:
                why = f"receiver {verdict.identity!r} may not claim route {denied}"
                log.warning("tunnel handshake from %s refused: %s", tunnel.peer, why)
                ws.reject(403, why)
                return
        try:
            services = core.tcp.admit(verdict.identity, event.headers)
        except TcpRefusal as exc:
            log.warning("tunnel handshake from %s refused: %s", tunnel.peer, exc)
            ws.reject(exc.status, str(exc))
            return
        peer_window = parse_extensions(event.headers)
        local_window = settings.stream_window if peer_window is not None else None
        ws_on = settings.websocket.enabled
        extra = format_tunnel_ports(settings.tunnel_ports) + core.tcp.accept_headers(services)
        ws.accept(verdict.headers + offer_ws_extensions(local_window, ws=ws_on) + extra)
        tunnel.ws_streams = ws_on and ws_in_effect(local_window, peer_window, event.headers)
        tunnel.services = services
        tunnel.identity = verdict.identity
        session = tunnel.end.open_session(
            accepts=ResponseHead,
            local_window=local_window,
            peer_window=peer_window,
            send_frame_size=settings.send_frame_size,
            limits=settings.codec,
        )
        self.open.append(tunnel)
        tunnel.routes = routes
        core.routes.add(tunnel, routes)
        core.stats.tunnel_opened(tunnel.identity)
        core.signal(Signal.RECEIVERS)
        log.info(
            "receiver %s connected from %s (%s), routes %s%s",
            tunnel.identity,
            tunnel.peer,
            ("flow control, websocket" if tunnel.ws_streams else "flow control")
            if session.flow
            else "v1 peer",
            format_routes(routes),
            f", tcp services {', '.join(services)}" if services else "",
        )

    def resume_parked(self, now: float) -> None:
        """The authenticator got what it waited for: decide the parked handshakes."""
        parked, self.parked = self.parked, {}
        for cid, (tunnel, event) in parked.items():
            if self.core.connection(cid) is tunnel:
                self.core.wake(cid)
                self.handshake(tunnel, event, now)

    def gone(self, tunnel: TunnelConn, why: str) -> None:
        """The tunnel is over: fail its streams, forget its routes."""
        if tunnel in self.open:
            self.open.remove(tunnel)
            self.core.routes.remove(tunnel, tunnel.routes)
            log.info("receiver %s gone: %s", tunnel.identity or tunnel.peer, why)
        self.core.wake_all(tunnel.end.abandon())
        for owner in list(tunnel.streams.values()):
            owner.tunnel_failed(why)
        tunnel.streams.clear()
        self.core.wake(tunnel.cid)

    def pick(self, route: Route) -> TunnelConn | None:
        """Fewest streams first; a receiver at its limit or draining is skipped."""
        best: TunnelConn | None = None
        limit = self.core.settings.max_streams_per_receiver
        for tunnel in self.core.routes.receivers(route):
            assert isinstance(tunnel, TunnelConn)
            session = tunnel.session
            if session is None or session.peer_draining or tunnel.ws.state != "open":
                continue
            # WebSockets have their own cap (pick_websocket): they take no request's place
            busy = len(tunnel.streams) - tunnel.websockets
            if busy >= limit:
                continue
            if best is None or busy < len(best.streams) - best.websockets:
                best = tunnel
        return best

    def pick_websocket(self, route: Route) -> TunnelConn | None:
        """A receiver for a WebSocket: one that carries them (the ws extension) first, then
        the fewest open WebSockets; a draining one is skipped. None: no receiver at all."""
        best: TunnelConn | None = None
        for tunnel in self.core.routes.receivers(route):
            assert isinstance(tunnel, TunnelConn)
            session = tunnel.session
            if session is None or session.peer_draining or tunnel.ws.state != "open":
                continue
            rank = (not tunnel.ws_streams, tunnel.websockets)
            if best is None or rank < (not best.ws_streams, best.websockets):
                best = tunnel
        return best

    def serving(self, route: Route) -> bool:
        """Is any receiver of ``route`` connected (busy or not)?"""
        return any(
            isinstance(t, TunnelConn) and t.session is not None
            for t in self.core.routes.receivers(route)
        )

    @property
    def in_flight(self) -> int:
        return sum(len(t.streams) for t in self.open)

    def close_all(self, code: int, reason: str) -> None:
        for tunnel in self.open:
            tunnel.ws.close(code, reason)
            self.core.wake(tunnel.cid)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "id": t.identity,
                "peer": t.peer,
                "streams": len(t.streams),
                "websockets": t.websockets,  # open WebSocket sessions (counted in streams too)
                "websocket": t.ws_streams,  # the ws extension is in effect
                "flow": t.session.flow,
                "draining": t.session.peer_draining,
                "routes": [str(r) for r in t.routes],
                "services": list(t.services),
            }
            for t in self.open
            if t.session is not None
        ]


def _addr(addr: tuple[str, int] | None) -> str:
    if not addr:
        return "-"
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"
