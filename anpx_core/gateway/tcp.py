"""The gateway's TCP stream kind (protocol.md §21): public TCP listeners, visitors, services.

* Receivers offer services in their tunnel handshake (:meth:`GatewayTcp.admit`); the
  offer is checked against ``service_claims`` (from ``[gateway] route_claims`` entries
  ``tcp:NAME`` / ``tcp:*``) and remembered on the tunnel.
* A connection accepted on a ``[[gateway.tcp]]`` listener is a :class:`TcpClientConn`:
  its socket is bridged (:class:`~anpx_core.tcp.TcpPipe`) to a stream on the least busy
  tunnel offering the listener's service. No such tunnel, or an address outside the
  listener's allow-list: the socket is reset at once, with a log line.
* A visitor (``anpx-role: visitor`` in the upgrade, authenticated with the visitor
  credential) opens TCP streams itself; :class:`VisitorLink` bridges each of them to a
  stream on a receiver's tunnel (:class:`Relay`), credit flowing end to end.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..auth import ServerAuth
from ..endpoint import EndpointEvent
from ..meta import RequestHead, ResponseHead
from ..ratelimit import address_key
from ..stats import TcpCounters
from ..tcp import (
    CONNECT_FAILED,
    TCP_EXTENSION,
    TcpPipe,
    TcpSettings,
    has_tcp,
    open_head,
    parse_services,
    service_of,
)
from ..tunnel import (
    EXTENSIONS_HEADER,
    PeerDraining,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamReset,
    StreamWritable,
    TunnelBroken,
    offer_extensions,
    parse_extensions,
)
from ..websocket import Closed, HandshakeRequested
from .proxy import IPNetwork

if TYPE_CHECKING:
    from .core import GatewayCore
    from .tunnels import OwnStreamEvent, TunnelConn

log = logging.getLogger("anpx.gateway.tcp")

TOKEN_PARAM = "token"


@dataclass(slots=True)
class TcpListen:
    """One ``[[gateway.tcp]]`` listener: the driver binds it and calls ``open_tcp``."""

    port: int
    service: str
    host: str = "0.0.0.0"
    allow: list[IPNetwork] = field(default_factory=list)  # empty: any client address


@dataclass(slots=True)
class GatewayTcpSettings:
    limits: TcpSettings = field(default_factory=TcpSettings)
    listeners: list[TcpListen] = field(default_factory=list)
    #: receiver id -> services it may offer (None: any receiver may offer any service)
    service_claims: dict[str, list[str]] | None = None
    #: how visitors authenticate; None: visitors are refused (403)
    visitor_auth: ServerAuth | None = None


class TcpRefusal(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def allowed(client: str, allow: list[IPNetwork]) -> bool:
    if not allow:
        return True
    try:
        address = ipaddress.ip_address(client.partition("%")[0])
    except ValueError:
        return False
    return any(address in net for net in allow)


class GatewayTcp:
    """The unit: admission of offered services, picking a tunnel, opening connections."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.clients = 0  # public TCP connections open
        self.by_address: dict[str, int] = {}  # open public connections per address key

    @property
    def settings(self) -> GatewayTcpSettings:
        return self.core.settings.tcp

    # --- receivers' offers -----------------------------------------------------------------

    def admit(self, identity: str, headers: list[tuple[str, str]]) -> list[str]:
        """The services a receiver's handshake offers, once allowed; TcpRefusal otherwise."""
        try:
            services = parse_services(headers)
        except ValueError as exc:
            raise TcpRefusal(400, f"bad anpx-tcp-services: {exc}") from None
        if services and parse_extensions(headers) is None:
            raise TcpRefusal(400, "tcp=1 needs the flow extension")
        claims = self.settings.service_claims
        if claims is not None:
            allowed_names = claims.get(identity, [])
            for name in services:
                if name not in allowed_names and "*" not in allowed_names:
                    raise TcpRefusal(403, f"receiver {identity!r} may not offer service {name}")
        return services

    @staticmethod
    def accept_headers(services: list[str]) -> list[tuple[str, str]]:
        return [(EXTENSIONS_HEADER, TCP_EXTENSION + "=1")] if services else []

    def pick(self, service: str) -> TunnelConn | None:
        """The least busy open tunnel offering ``service`` (not draining, not full)."""
        best: TunnelConn | None = None
        limit = self.core.settings.max_streams_per_receiver
        for tunnel in self.core.tunnels.open:
            session = tunnel.session
            if service not in tunnel.services or session is None or session.peer_draining:
                continue
            if tunnel.ws.state != "open" or len(tunnel.streams) >= limit:
                continue
            if best is None or len(tunnel.streams) < len(best.streams):
                best = tunnel
        return best

    def by_token(self, target: str) -> TunnelConn | None:
        """``?token=<client_id>``: the open tunnel of that receiver (AgentX's routing)."""
        query = target.partition("?")[2]
        if not query:
            return None
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if key == TOKEN_PARAM and eq and value:
                limit = self.core.settings.max_streams_per_receiver
                for tunnel in self.core.tunnels.open:
                    session = tunnel.session
                    if tunnel.identity != value or session is None or session.peer_draining:
                        continue
                    if tunnel.ws.state == "open" and len(tunnel.streams) < limit:
                        return tunnel
                return None
        return None

    def open_streams(self) -> dict[str, int]:
        """TCP streams open now per service (public connections and visitors' relays)."""
        out: dict[str, int] = {}
        for tunnel in self.core.tunnels.open:
            for owner in tunnel.streams.values():
                if isinstance(owner, TcpClientConn | Relay):
                    # every opened stream's service has counters, or counts as "other"
                    label = owner.service if owner.service in self.core.stats.tcp else "other"
                    out[label] = out.get(label, 0) + 1
        return out

    # --- public listeners ------------------------------------------------------------------

    def open(
        self, cid: int, now: float, client: tuple[str, int] | None, listen: TcpListen
    ) -> TcpClientConn:
        peer = f"{client[0]}:{client[1]}" if client else "-"
        conn = TcpClientConn(self, cid, peer, listen.service)
        counters = self.core.stats.tcp_service(listen.service)
        self.clients += 1
        if client is not None:
            conn.key = address_key(client[0])
            self.by_address[conn.key] = self.by_address.get(conn.key, 0) + 1
        per_address = self.core.settings.max_connections_per_address
        if per_address and conn.key is not None and self.by_address[conn.key] > per_address:
            log.warning(
                "tcp %s: connection from %s refused: more than %d from that address",
                listen.service, peer, per_address,
            )  # fmt: skip
            self.core.abort(cid)
            return conn
        if client is None or not allowed(client[0], listen.allow):
            log.warning(
                "tcp %s: connection from %s refused: not in the allow-list", listen.service, peer
            )
            self.core.abort(cid)
            return conn
        if self.core.draining:
            log.info("tcp %s: connection from %s refused: shutting down", listen.service, peer)
            self.core.abort(cid)
            return conn
        if self.clients > self.core.settings.max_connections:
            log.warning("tcp %s: connection from %s refused: too many", listen.service, peer)
            self.core.abort(cid)
            return conn
        tunnel = self.pick(listen.service)
        if tunnel is None or tunnel.session is None:
            log.warning(
                "tcp %s: connection from %s closed: no receiver offers the service",
                listen.service,
                peer,
            )
            counters.connect_failures += 1
            self.core.abort(cid)
            return conn
        counters.opened += 1
        conn.counters = counters
        rid = self.core.settings.new_request_id()
        tunnel.streams[rid] = conn
        tunnel.session.start(rid, open_head(listen.service, peer))
        tunnel.session.flush(rid)
        tunnel.session.widen(rid, self.settings.limits.window)
        tunnel.session.flush_credits()
        what = f"tcp {listen.service} for {peer} via {tunnel.identity or tunnel.peer}"
        conn.tunnel = tunnel
        conn.pipe = TcpPipe(
            cid, rid, tunnel.end, tunnel.cid, self.core, self.settings.limits, now,
            answered=False, what=what,
        )  # fmt: skip
        self.core.wake(tunnel.cid)
        log.debug("%s: opened stream %s", what, rid)
        return conn

    # --- visitors --------------------------------------------------------------------------

    def visitor_handshake(self, tunnel: TunnelConn, event: HandshakeRequested, now: float) -> None:
        core, settings = self.core, self.core.settings
        ws = tunnel.ws
        auth = self.settings.visitor_auth
        if auth is None:
            log.warning("visitor from %s refused: visitors are not enabled", tunnel.peer)
            ws.reject(403, "visitors are not enabled on this gateway")
            return
        verdict = auth.check_request(
            event.host, event.path, event.headers, tunnel.peer, now + core.wall_offset
        )
        if not verdict.ok or verdict.wait:
            core.stats.auth_failures += 1
            log.warning("visitor from %s refused: %s", tunnel.peer, verdict.reason or "auth")
            ws.reject(verdict.status if verdict.status < 1000 else 401, "", verdict.headers)
            return
        peer_window = parse_extensions(event.headers)
        if peer_window is None or not has_tcp(event.headers):
            ws.reject(400, "a visitor must offer flow and tcp=1")
            return
        local_window = settings.stream_window or peer_window
        ws.accept(
            verdict.headers
            + offer_extensions(local_window)
            + [(EXTENSIONS_HEADER, TCP_EXTENSION + "=1")]
        )
        tunnel.identity = verdict.identity
        tunnel.end.open_session(
            accepts=RequestHead,
            local_window=local_window,
            peer_window=peer_window,
            send_frame_size=settings.send_frame_size,
            limits=settings.codec,
        )
        tunnel.delegate = VisitorLink(self, tunnel)
        log.info("visitor %s connected from %s", tunnel.identity, tunnel.peer)


class TcpClientConn:
    """A public TCP connection (a gateway :class:`Connection` and a ``StreamOwner``)."""

    __slots__ = ("cid", "counters", "key", "pipe", "service", "tunnel", "unit", "who")

    def __init__(self, unit: GatewayTcp, cid: int, who: str, service: str) -> None:
        self.unit = unit
        self.cid = cid
        self.who = who
        self.service = service
        self.tunnel: TunnelConn | None = None
        self.pipe: TcpPipe | None = None
        self.key: str | None = None  # the address counted against max_connections_per_address
        self.counters: TcpCounters | None = None  # set once a stream is open

    # --- the coordinator's calls -----------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        if self.pipe is not None:
            if self.counters is not None:
                self.counters.bytes_in += len(data)
            self.pipe.sock_data(data, now)
            self._maybe_done()

    def note_lost(self, reason: str) -> None:
        if self.pipe is not None:
            self.pipe.sock_lost(reason)

    def take_output(self) -> tuple[bytes, bool]:
        return (b"", True) if self.pipe is None else self.pipe.take_output()

    def written(self, now: float) -> None:
        if self.pipe is not None:
            self.pipe.written(now)

    def can_read(self) -> bool:
        return self.pipe is not None and self.pipe.can_read()

    def closed(self, now: float) -> None:
        self.unit.clients -= 1
        if self.key is not None:
            left = self.unit.by_address.get(self.key, 1) - 1
            if left > 0:
                self.unit.by_address[self.key] = left
            else:
                self.unit.by_address.pop(self.key, None)
            self.key = None
        if self.pipe is not None:
            self.pipe.closed()
            if self.tunnel is not None:  # what the session still sends needs no owner
                self.tunnel.streams.pop(self.pipe.rid, None)

    def resume(self, now: float) -> None:
        pass

    def deadline_at(self, now: float) -> float | None:
        return None if self.pipe is None else self.pipe.deadline()

    def on_timer(self, now: float) -> None:
        if self.pipe is not None:
            self.pipe.on_timer(now)
            self._maybe_done()

    # --- StreamOwner -----------------------------------------------------------------------

    def stream_event(self, tunnel: TunnelConn, event: OwnStreamEvent) -> None:
        pipe = self.pipe
        assert pipe is not None
        if isinstance(event, StreamHead):
            assert isinstance(event.head, ResponseHead)
            pipe.stream_head(event.head)
        elif isinstance(event, StreamData):
            if self.counters is not None:
                self.counters.bytes_out += len(event.data)
            pipe.stream_data(event.data, self.unit.core.now)
        elif isinstance(event, StreamEnd):
            pipe.stream_end()
        elif isinstance(event, StreamReset):
            if self.counters is not None and event.reason.startswith(CONNECT_FAILED):
                self.counters.connect_failures += 1
            pipe.stream_reset(event.reason)
        elif isinstance(event, StreamWritable):
            pipe.writable()
        self._maybe_done()

    def tunnel_failed(self, why: str) -> None:
        if self.pipe is not None:
            self.pipe.stream_reset(why)

    def _maybe_done(self) -> None:
        pipe, tunnel = self.pipe, self.tunnel
        if pipe is not None and tunnel is not None and pipe.finished:
            session = tunnel.session
            if session is None or not session.has_stream(pipe.rid):
                tunnel.streams.pop(pipe.rid, None)


class Relay:
    """One visitor stream bridged to one stream on a receiver's tunnel (a ``StreamOwner``
    there). Credit: the visitor is credited for bytes the receiver's stream has sent on,
    the receiver for bytes the visitor's stream has sent on; so at most a window each way
    waits here."""

    __slots__ = (
        "back_in",
        "back_paid",
        "counters",
        "done_back",
        "done_fwd",
        "fwd_in",
        "fwd_paid",
        "link",
        "rid",
        "service",
        "tunnel",
        "vrid",
    )

    def __init__(
        self, link: VisitorLink, vrid: str, tunnel: TunnelConn, rid: str, service: str
    ) -> None:
        self.link = link
        self.service = service
        self.counters = link.unit.core.stats.tcp_service(service)
        self.vrid = vrid
        self.tunnel = tunnel
        self.rid = rid
        self.fwd_in = self.fwd_paid = 0  # visitor -> receiver: bytes in, credited to the visitor
        self.back_in = self.back_paid = 0  # receiver -> visitor
        self.done_fwd = self.done_back = False

    @property
    def cid(self) -> int:
        return self.link.tunnel.cid

    def _wake(self) -> None:
        core = self.link.unit.core
        core.wake(self.link.tunnel.cid)
        core.wake(self.tunnel.cid)

    def _settle(self) -> None:
        """Return credit for what went on; forget the relay once both directions ended."""
        vs, rs = self.link.tunnel.session, self.tunnel.session
        if vs is not None and rs is not None:
            gone = self.fwd_in - rs.unsent(self.rid) - self.fwd_paid
            if gone > 0:
                vs.consumed(self.vrid, gone)
                self.fwd_paid += gone
            rs.writable(self.rid)  # ask for StreamWritable when it waits for credit
            back = self.back_in - vs.unsent(self.vrid) - self.back_paid
            if back > 0:
                rs.consumed(self.rid, back)
                self.back_paid += back
            vs.writable(self.vrid)
            vs.flush_credits()
            rs.flush_credits()
        if self.done_fwd and self.done_back:
            self.link.relays.pop(self.vrid, None)
            self.tunnel.streams.pop(self.rid, None)
        self._wake()

    # --- visitor side ----------------------------------------------------------------------

    def from_visitor(self, event: Any) -> None:
        rs = self.tunnel.session
        if isinstance(event, StreamData):
            self.fwd_in += len(event.data)
            self.counters.bytes_in += len(event.data)
            if rs is not None:
                rs.send(self.rid, event.data)
                rs.flush(self.rid)
        elif isinstance(event, StreamEnd):
            if rs is not None:
                rs.end(self.rid)
            self.done_fwd = True
        elif isinstance(event, StreamReset):
            self.reset_receiver(event.reason)
            return
        self._settle()

    def reset_receiver(self, reason: str) -> None:
        rs = self.tunnel.session
        if rs is not None:
            rs.cancel(self.rid, reason)
        self.done_fwd = self.done_back = True
        self._settle()

    # --- receiver side (StreamOwner) -------------------------------------------------------

    def stream_event(self, tunnel: TunnelConn, event: OwnStreamEvent) -> None:
        vs = self.link.tunnel.session
        if vs is None:
            return
        if isinstance(event, StreamHead):
            assert isinstance(event.head, ResponseHead)
            vs.start(self.vrid, event.head)
            vs.flush(self.vrid)
        elif isinstance(event, StreamData):
            self.back_in += len(event.data)
            self.counters.bytes_out += len(event.data)
            vs.send(self.vrid, event.data)
            vs.flush(self.vrid)
        elif isinstance(event, StreamEnd):
            vs.end(self.vrid)
            self.done_back = True
        elif isinstance(event, StreamReset):
            log.info(
                "visitor %s stream %s reset: %s", self.link.tunnel.identity, self.vrid, event.reason
            )
            if event.reason.startswith(CONNECT_FAILED):
                self.counters.connect_failures += 1
            vs.cancel(self.vrid, event.reason)
            self.done_fwd = self.done_back = True
        self._settle()

    def crashed(self, exc: BaseException, where: str) -> None:
        """The crash barrier for one relay: an unexpected exception resets its two streams
        (the visitor's and the receiver's), never the visitor's tunnel nor its other streams."""
        log.error(
            "internal error in visitor %s %s; resetting it",
            self.link.tunnel.identity, where, exc_info=exc,
        )  # fmt: skip
        for session, rid in (
            (self.link.tunnel.session, self.vrid),
            (self.tunnel.session, self.rid),
        ):
            if session is not None and session.has_stream(rid):
                session.cancel(rid, "internal error")
        self.done_fwd = self.done_back = True
        self.link.relays.pop(self.vrid, None)
        self.tunnel.streams.pop(self.rid, None)
        self._wake()

    def tunnel_failed(self, why: str) -> None:
        vs = self.link.tunnel.session
        if vs is not None:
            vs.cancel(self.vrid, "receiver tunnel lost")
        self.done_fwd = self.done_back = True
        self.link.relays.pop(self.vrid, None)
        self.link.unit.core.wake(self.link.tunnel.cid)


class VisitorLink:
    """The visitor side of a tunnel connection (``TunnelConn.delegate``): its streams are
    TCP opens from the visitor, each relayed to a receiver offering the service."""

    __slots__ = ("relays", "tunnel", "unit")

    def __init__(self, unit: GatewayTcp, tunnel: TunnelConn) -> None:
        self.unit = unit
        self.tunnel = tunnel
        self.relays: dict[str, Relay] = {}

    def event(self, event: EndpointEvent, now: float) -> None:
        core = self.unit.core
        core.wake(self.tunnel.cid)
        if isinstance(event, Closed):
            self.gone(f"visitor disconnected ({event.code})")
        elif isinstance(event, TunnelBroken):
            log.warning("visitor %s sent unframeable data: %s", self.tunnel.identity, event.reason)
            self.tunnel.ws.close(1002, "bad ANPX frame")
            self.gone("malformed frame")
        elif isinstance(event, PeerDraining):
            pass
        elif isinstance(event, StreamHead | StreamData | StreamEnd | StreamReset | StreamWritable):
            try:
                self._stream_event(event, now)
            except Exception as exc:  # the crash barrier: this stream only
                self._contain(event.request_id, exc)

    def _stream_event(self, event: Any, now: float) -> None:
        if isinstance(event, StreamHead):
            if self.tunnel.session is not None:
                self._open(event.request_id, event.head, now)
            return
        relay = self.relays.get(event.request_id)
        if relay is None:
            return
        if isinstance(event, StreamWritable):
            relay._settle()
        else:
            relay.from_visitor(event)

    def _contain(self, vrid: str, exc: BaseException) -> None:
        relay = self.relays.get(vrid)
        if relay is not None:
            relay.crashed(exc, f"stream {vrid}")
            return
        log.error(
            "internal error in visitor %s stream %s; resetting it",
            self.tunnel.identity, vrid, exc_info=exc,
        )  # fmt: skip
        session = self.tunnel.session
        if session is not None and session.has_stream(vrid):
            session.cancel(vrid, "internal error")
        self.unit.core.wake(self.tunnel.cid)

    def _open(self, vrid: str, head: Any, now: float) -> None:
        session = self.tunnel.session
        assert session is not None
        service = service_of(head) if isinstance(head, RequestHead) else None
        if service is None:
            session.cancel(vrid, "not a tcp open")
            return
        if self.unit.core.draining:
            session.cancel(vrid, "gateway shutting down")
            return
        if len(self.relays) >= self.unit.core.settings.max_streams_per_receiver:
            session.cancel(vrid, "too many streams")
            return
        tunnel = self.unit.pick(service)
        if tunnel is None or tunnel.session is None:
            log.warning("visitor %s: no receiver offers service %s", self.tunnel.identity, service)
            self.unit.core.stats.tcp_service(service).connect_failures += 1
            session.cancel(vrid, f"no receiver offers service {service}")
            return
        rid = self.unit.core.settings.new_request_id()
        relay = Relay(self, vrid, tunnel, rid, service)
        relay.counters.opened += 1
        self.relays[vrid] = relay
        tunnel.streams[rid] = relay
        tunnel.session.start(rid, open_head(service, f"visitor {self.tunnel.identity}"))
        tunnel.session.flush(rid)
        window = self.unit.settings.limits.window  # a TCP window each way waits here at most
        tunnel.session.widen(rid, window)
        tunnel.session.flush_credits()
        session.widen(vrid, window)
        session.flush_credits()
        self.unit.core.wake(tunnel.cid)

    def gone(self, why: str) -> None:
        for relay in list(self.relays.values()):
            relay.reset_receiver("visitor gone")
        self.relays.clear()
        self.unit.core.wake_all(self.tunnel.end.abandon())
