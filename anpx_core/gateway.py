"""The gateway, as one sans-IO state machine over all of its connections.

A driver accepts sockets and pumps bytes; everything else happens here:
which receiver serves a request, what a client sees when a receiver is slow,
gone or misbehaving, when to stop reading whom.

Driver contract (the receiver core offers the same one):

* ``cid = open_client(...)`` / ``open_tunnel(...)`` / ``open_admin(...)`` for each accepted socket;
* ``receive(cid, data, now)`` for bytes read (``b""`` at EOF), ``lost(cid, now)`` on a socket error;
* ``take_output(cid) -> (data, close)``: write ``data``, then call ``written(cid, now)``;
  once ``data`` is empty and ``close`` is true, close the socket and call ``closed(cid, now)``;
* read from a socket only while ``can_read(cid)``;
* after each call, fire the wake-ups named by ``pop_wakeups()`` (connection ids), and reset
  (abort: close without flushing, even mid-write) the sockets named by ``pop_aborts()``;
* call ``tick(now)`` every ``TICK_INTERVAL`` seconds.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from . import messages as M
from .auth import NoAuth, ServerAuth
from .barrier import CrashBarrier, guarded, guarded_close
from .didwba import DID_REFUSAL
from .http1 import (
    ClientGone,
    FrontLimits,
    HttpFront,
    RequestData,
    RequestEnded,
    RequestFailed,
    RequestStarted,
)
from .meta import RequestHead, ResponseHead
from .ratelimit import address_key
from .routing import (
    ROUTES_HEADER,
    Route,
    RouteTable,
    claims_allowed,
    format_routes,
    parse_routes_header,
)
from .stats import Stats
from .tunnel import (
    DEFAULT_HIGH_WATER,
    DEFAULT_STREAM_WINDOW,
    PeerDraining,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamReset,
    StreamWritable,
    TunnelBroken,
    TunnelSession,
    offer_extensions,
    parse_extensions,
)
from .websocket import (
    BinaryDiscarded,
    BinaryReceived,
    Closed,
    ControlReceived,
    HandshakeRequested,
    WsLimits,
    WsServer,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("anpx.gateway")
access_log = logging.getLogger("anpx.access.gateway")

TICK_INTERVAL = 0.1
#: Longest X-Forwarded-For a tunnel handshake's address is looked up in.
_MAX_FORWARDED_FOR = 1024


@dataclass(slots=True)
class GatewaySettings:
    """Every limit of the gateway core; the config layer fills it from the file and options."""

    timeout: float = 30.0  # seconds from request head to response head, then 504
    max_streams_per_receiver: int = 100  # concurrent requests on one tunnel, beyond: 503
    max_connections: int = 1000  # concurrent client connections, beyond: 503 and close
    front: FrontLimits = field(default_factory=FrontLimits)
    ws: WsLimits = field(default_factory=WsLimits)
    stream_window: int | None = DEFAULT_STREAM_WINDOW  # None: do not offer flow control
    send_frame_size: int = M.DEFAULT_SEND_FRAME_SIZE
    codec: M.Limits = field(default_factory=M.Limits)
    high_water: int = DEFAULT_HIGH_WATER
    auth: ServerAuth = field(default_factory=NoAuth)
    # receiver id -> the routes it may claim (None: any receiver may claim any route)
    route_claims: dict[str, list[Route]] | None = None
    # per-client-address request rate: key, now -> None (allowed) or seconds to wait
    rate_limit: Callable[[str, float], float | None] | None = None
    # reverse proxies in front of the gateway whose X-Forwarded-* headers are believed
    trusted_proxies: list[IPNetwork] = field(default_factory=list)
    # /stats and /metrics need "Authorization: Bearer <token>" when set (/health stays open)
    admin_token: bytes | None = None
    # Response bytes queued for one client connection and not yet written to it; above
    # this no further pipelined request is served until the client reads.
    max_output_bytes: int = 1024 * 1024
    # Fairness: one client address (IPv6: its /64) holds at most this many connections
    # (connections from trusted proxies are not counted) and in-flight requests; 0: no cap.
    max_connections_per_address: int = 100
    max_streams_per_address: int = 20
    # A client connection whose pending output makes no progress for this long (the client
    # stopped reading but keeps the connection open) is reset; 0: never.
    send_timeout: float = 60.0
    # X-Request-ID of requests that carry none (the host passes uuid4; see _counting_ids)
    new_request_id: Callable[[], str] = field(default_factory=lambda: _counting_ids())


def _counting_ids() -> Callable[[], str]:
    """Deterministic ids formatted like UUIDs: for tests and embedders who do not care."""
    count = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(count):012x}"


@dataclass(slots=True, eq=False)
class _Client:
    cid: int
    front: HttpFront
    peer: str
    rid: str | None = None
    tunnel: _Tunnel | None = None
    head: RequestHead | None = None
    started: float = 0.0
    deadline: float | None = None  # response head due by then
    response_started: bool = False
    status: int = 0
    body_out: int = 0
    backlog: int = 0  # response body handed to the front, not yet written by the driver
    taken: int = 0
    on_wire: int = 0  # bytes take_output handed to the driver, not yet written
    on_wire_since: float = 0.0  # when those bytes were handed out
    over_limit: str = ""  # why the connection is refused (answered 503 at its first request)
    conn_key: str | None = None  # the address counted against max_connections_per_address
    stream_key: str | None = None  # the address counted for the current stream
    behind_proxy: bool = False  # the peer is a trusted proxy: the client is in X-Forwarded-For
    proxy: str = "-"  # the socket's address when behind_proxy (peer is then the client's)
    request_id: str = ""  # X-Request-ID: the client's, or the stream's request_id
    route: str = "-"


@dataclass(slots=True, eq=False)
class _Tunnel:
    cid: int
    ws: WsServer
    peer: str
    peer_host: str = "-"  # the socket's address, without the port
    identity: str = ""
    session: TunnelSession | None = None
    streams: dict[str, _Client] = field(default_factory=dict)
    written_mark: int = 0  # session.bytes_out the driver has written
    taken_mark: int = 0
    congested: set[int] = field(default_factory=set)  # v1: clients with a full backlog
    paused: set[int] = field(default_factory=set)  # clients waiting for our backlog to drain
    connected_at: float = 0.0
    routes: list[Route] = field(default_factory=list)
    read_paused: bool = False  # can_read said no because of ws.over_backlog

    @property
    def backlog(self) -> int:
        return 0 if self.session is None else self.session.bytes_out - self.written_mark


@dataclass(slots=True, eq=False)
class _Admin:
    cid: int
    front: HttpFront


class GatewayCore(CrashBarrier):
    _barrier_log = log

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self._doomed: set[int] = set()  # reset by the crash barrier, socket not closed yet
        self.stats = Stats()
        self._conns: dict[int, _Client | _Tunnel | _Admin] = {}
        self._tunnels: list[_Tunnel] = []
        self._next_id = 1
        self._wakeups: set[int] = set()
        self._aborts: set[int] = set()
        self._clients = 0
        self._admitted = 0  # client connections within the caps (max_connections counts these)
        self._conns_by_address: dict[str, int] = {}
        self._streams_by_address: dict[str, int] = {}
        self._now = 0.0  # the time of the call being handled, for access-log durations
        self.wall_offset = 0.0  # Unix time minus the driver's clock (set by tick)
        # Tunnel handshakes waiting for the authenticator (a DID document being fetched).
        self._parked: dict[int, tuple[_Tunnel, HandshakeRequested]] = {}
        # Fronts whose response just ended: a pipelined request may be waiting in them.
        self._fronts_due: list[_Client | _Admin] = []
        self.routes = RouteTable()
        self.draining = False

    # --- driver contract -----------------------------------------------------------------

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def open_client(
        self,
        now: float,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        scheme: str = "http",
    ) -> int:
        cid = self._new_id()
        proxied = client is not None and self._trusted(client[0])
        front = HttpFront(
            self.settings.front,
            now,
            client=client,
            server=server,
            scheme=scheme,
            trust_forwarded=proxied,
        )
        address = client[0] if client else "-"
        conn = _Client(cid, front, address, behind_proxy=proxied, proxy=address)
        self._conns[cid] = conn
        self._clients += 1
        # Over a limit, the connection's first request is answered 503 and it closes: a clear
        # answer costs less than a client retrying a silently dropped socket. A refused
        # connection takes no place, so one address over its share cannot fill the gateway.
        # Behind a trusted proxy the address is the proxy's: its connections are not capped.
        key = None if proxied or client is None else address_key(client[0])
        per_address = self.settings.max_connections_per_address
        if key is not None and per_address and self._conns_by_address.get(key, 0) >= per_address:
            conn.over_limit = "too many connections from your address"
        elif self._admitted >= self.settings.max_connections:
            conn.over_limit = "too many connections"
        else:
            self._admitted += 1
            if key is not None:
                conn.conn_key = key
                self._conns_by_address[key] = self._conns_by_address.get(key, 0) + 1
        return cid

    def open_tunnel(self, now: float, peer: tuple[str, int] | None) -> int:
        cid = self._new_id()
        self._conns[cid] = _Tunnel(
            cid,
            WsServer(self.settings.ws, now),
            _addr(peer),
            peer_host=peer[0] if peer else "-",
            connected_at=now,
        )
        return cid

    def open_admin(
        self, now: float, client: tuple[str, int] | None, server: tuple[str, int] | None
    ) -> int:
        cid = self._new_id()
        self._conns[cid] = _Admin(
            cid, HttpFront(self.settings.front, now, client=client, server=server)
        )
        return cid

    @guarded()
    def receive(self, cid: int, data: bytes, now: float) -> None:
        self._now = now
        conn = self._conns.get(cid)
        if conn is None:
            return
        self._wakeups.add(cid)
        if isinstance(conn, _Client):
            self._update_hold(conn)
            for event in conn.front.receive_data(data, now):
                self._client_event(conn, event, now)
            self._flush_upload(conn)
        elif isinstance(conn, _Tunnel):
            for event in conn.ws.receive_data(data, now):
                self._tunnel_event(conn, event, now)
            if conn.session is not None:
                conn.session.flush_credits()
        else:
            for event in conn.front.receive_data(data, now):
                self._admin_event(conn, event, now)
        self._serve_due_fronts()

    def _flush_upload(self, conn: _Client) -> None:
        """Send the upload bytes this call brought now, not when a frame fills up."""
        if conn.rid is not None and conn.tunnel is not None and conn.tunnel.session is not None:
            conn.tunnel.session.flush(conn.rid)
            self._wakeups.add(conn.tunnel.cid)

    def _serve_due_fronts(self) -> None:
        """Let fronts whose response ended surface their next (pipelined) request now."""
        while self._fronts_due:
            conn = self._fronts_due.pop()
            if conn.cid not in self._conns or conn.cid in self._doomed:
                continue
            self._wakeups.add(conn.cid)
            if isinstance(conn, _Client) and self._update_hold(conn):
                continue  # served once the client has read enough (see written)
            try:
                for event in conn.front.tick(self._now):
                    if isinstance(conn, _Admin):
                        self._admin_event(conn, event, self._now)
                    else:
                        self._client_event(conn, event, self._now)
                if isinstance(conn, _Client):
                    self._flush_upload(conn)
            except Exception as exc:  # the crash barrier: this connection only
                self._contain(conn.cid, exc, "a pipelined request")

    def lost(self, cid: int, now: float, reason: str = "") -> None:
        """The socket failed (``reason``: the error, for logs): same as EOF here."""
        self.receive(cid, b"", now)

    @guarded((b"", True))
    def take_output(self, cid: int) -> tuple[bytes, bool]:
        conn = self._conns.get(cid)
        if conn is None:
            return b"", True
        if isinstance(conn, _Tunnel):
            data = conn.ws.data_to_send()
            if conn.session is not None:
                conn.taken_mark = conn.session.bytes_out
            return data, conn.ws.closed
        if isinstance(conn, _Admin):
            return conn.front.data_to_send(), conn.front.closed
        # In pieces, so that send_timeout measures a client's reading, not one large write.
        data = conn.front.data_to_send(WRITE_CHUNK)
        if data:
            # Body bytes come out in order after their head: counting the first ones of
            # the piece as body may return credit a head's worth early, never leaves it stuck.
            conn.taken = min(conn.backlog, len(data))
            if not conn.on_wire:
                conn.on_wire_since = self._now
            conn.on_wire += len(data)
        return data, conn.front.closed

    @guarded()
    def written(self, cid: int, now: float) -> None:
        self._now = now
        conn = self._conns.get(cid)
        if isinstance(conn, _Tunnel):
            conn.written_mark = conn.taken_mark
            conn.ws.sent()
            if conn.read_paused and not conn.ws.over_backlog:
                conn.read_paused = False
                self._wakeups.add(cid)
            if conn.paused and conn.backlog < self.settings.high_water:
                self._wakeups.update(conn.paused)
                conn.paused.clear()
        elif isinstance(conn, _Client):
            conn.on_wire = 0
            if conn.taken:
                conn.backlog -= conn.taken
                delivered, conn.taken = conn.taken, 0
                self._consumed(conn, delivered)
                self._update_congestion(conn)
            if conn.front.holding and not self._update_hold(conn):
                self._fronts_due.append(conn)  # the client read: serve what it pipelined
                self._serve_due_fronts()

    def _consumed(self, conn: _Client, nbytes: int) -> None:
        """``nbytes`` of the current response left the gateway (written, or dropped by the
        front for HEAD, 204 and 304): the receiver may send that much more."""
        tunnel = conn.tunnel
        if tunnel is not None and tunnel.session is not None and conn.rid is not None:
            tunnel.session.consumed(conn.rid, nbytes)
            tunnel.session.flush_credits()
            self._wakeups.add(tunnel.cid)

    def _stalled(self, conn: _Client, now: float) -> bool:
        """Reset a connection whose client has taken none of its output for send_timeout."""
        limit = self.settings.send_timeout
        if not (limit > 0 and conn.on_wire and now - conn.on_wire_since >= limit):
            return False
        log.info("client %s read nothing for %.0fs: connection reset", conn.peer, limit)
        self._abandon_client(conn, "client stopped reading")
        conn.front.abort()
        self._aborts.add(conn.cid)
        self._wakeups.add(conn.cid)
        return True

    def _update_hold(self, conn: _Client) -> bool:
        """Hold further pipelined requests while the client's unwritten output is over
        ``max_output_bytes``; True while held."""
        held = conn.on_wire + conn.front.output_pending > self.settings.max_output_bytes
        conn.front.hold_requests(held)
        return held

    @guarded(False)
    def can_read(self, cid: int) -> bool:
        conn = self._conns.get(cid)
        if isinstance(conn, _Tunnel):
            if conn.ws.over_backlog:  # the peer does not read what we owe it: stop reading it
                conn.read_paused = True
                return False
            return not conn.ws.closed and not conn.congested
        if conn is None or not conn.front.wants_read:
            return False
        if isinstance(conn, _Client) and conn.rid is not None and conn.tunnel is not None:
            tunnel = conn.tunnel
            if tunnel.session is None:
                return True
            if not tunnel.session.writable(conn.rid) or tunnel.backlog >= self.settings.high_water:
                tunnel.paused.add(cid)
                return False
        return True

    @guarded_close
    def closed(self, cid: int, now: float) -> None:
        """The driver closed the socket: forget the connection."""
        self._now = now
        conn = self._conns.pop(cid, None)
        self._parked.pop(cid, None)
        if isinstance(conn, _Client):
            self._clients -= 1
            if not conn.over_limit:
                self._admitted -= 1
            if conn.conn_key is not None:
                _uncount(self._conns_by_address, conn.conn_key)
                conn.conn_key = None
            self._abandon_client(conn, "client connection closed")
        elif isinstance(conn, _Tunnel):
            self._tunnel_gone(conn, "receiver disconnected")
        self._serve_due_fronts()

    def resume_handshakes(self, now: float) -> None:
        """The authenticator got what it waited for (a DID document): decide parked handshakes."""
        self._now = now
        parked, self._parked = self._parked, {}
        for cid, (tunnel, event) in parked.items():
            if self._conns.get(cid) is tunnel:
                self._handshake(tunnel, event, now)
                self._wakeups.add(cid)

    def pop_wakeups(self) -> set[int]:
        woken, self._wakeups = self._wakeups, set()
        return woken

    def pop_aborts(self) -> set[int]:
        """Connections to reset now: the driver aborts the socket (a pending write too)."""
        aborts, self._aborts = self._aborts, set()
        return aborts

    def set_wall_clock(self, now: float, wall: float) -> None:
        """Tell the core the Unix time ``wall`` at driver time ``now`` (auth timestamps)."""
        self.wall_offset = wall - now

    def tick(self, now: float, wall: float | None = None) -> None:
        """Run timers. ``wall`` (Unix seconds) keeps the wall clock the auth checks use current."""
        self._now = now
        if wall is not None:
            self.set_wall_clock(now, wall)
        for conn in list(self._conns.values()):
            if conn.cid in self._doomed:
                continue
            try:
                self._tick_conn(conn, now)
            except Exception as exc:  # the crash barrier: this connection only
                self._contain(conn.cid, exc, "tick")
        self._serve_due_fronts()

    def _tick_conn(self, conn: _Client | _Tunnel | _Admin, now: float) -> None:
        if isinstance(conn, _Tunnel):
            for event in conn.ws.tick(now):
                self._tunnel_event(conn, event, now)
            # a keepalive ping or a close timeout changes the output without an event
            self._wakeups.add(conn.cid)
            return
        if isinstance(conn, _Client):
            if self._stalled(conn, now):
                return
            self._update_hold(conn)
        events = conn.front.tick(now)
        if events or conn.front.closed:  # an idle keep-alive connection closes silently
            self._wakeups.add(conn.cid)
        if isinstance(conn, _Admin):
            return
        for event in events:
            self._client_event(conn, event, now)
        self._flush_upload(conn)
        if conn.deadline is not None and now >= conn.deadline:
            self._timeout(conn)

    # --- lifecycle -------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Stop taking new requests; in-flight ones go on (SIGTERM)."""
        self.draining = True

    @property
    def in_flight(self) -> int:
        return sum(len(t.streams) for t in self._tunnels)

    def close_tunnels(self, code: int = 1001, reason: str = "gateway shutting down") -> None:
        for tunnel in self._tunnels:
            tunnel.ws.close(code, reason)
            self._wakeups.add(tunnel.cid)

    @property
    def receivers(self) -> list[dict]:
        return [
            {
                "id": t.identity,
                "peer": t.peer,
                "streams": len(t.streams),
                "flow": t.session.flow,
                "draining": t.session.peer_draining,
                "routes": [str(r) for r in t.routes],
            }
            for t in self._tunnels
            if t.session is not None
        ]

    # --- clients ---------------------------------------------------------------------------

    def _client_event(self, conn: _Client, event: object, now: float) -> None:
        if isinstance(event, RequestStarted):
            self._start_request(conn, event, now)
        elif isinstance(event, RequestData):
            if conn.rid is not None and conn.tunnel is not None and conn.tunnel.session is not None:
                conn.tunnel.session.send(conn.rid, event.data)
                self.stats.bytes_in += len(event.data)
        elif isinstance(event, RequestEnded):
            if conn.rid is not None and conn.tunnel is not None and conn.tunnel.session is not None:
                conn.tunnel.session.end(conn.rid)
                self._wakeups.add(conn.tunnel.cid)
        elif isinstance(event, RequestFailed):
            if conn.head is None:  # refused before a request began (413, 431): count it too
                self.stats.record(conn.route, event.status, 0.0)
                access_log.info(
                    "- %s - - %d 0B 0.0ms route=%s (%s)",
                    conn.peer,
                    event.status,
                    conn.route,
                    event.reason,
                )
            self._finish(conn, event.status, cancel=f"client request failed: {event.reason}")
        elif isinstance(event, ClientGone):
            self._abandon_client(conn, "client went away")

    def _pick_tunnel(self, route: Route) -> _Tunnel | None:
        """Fewest streams first; a receiver at its limit or draining is skipped."""
        best: _Tunnel | None = None
        limit = self.settings.max_streams_per_receiver
        for tunnel in self.routes.receivers(route):
            assert isinstance(tunnel, _Tunnel)
            session = tunnel.session
            if session is None or session.peer_draining or tunnel.ws.state != "open":
                continue
            if len(tunnel.streams) >= limit:
                continue
            if best is None or len(tunnel.streams) < len(best.streams):
                best = tunnel
        return best

    def _start_request(self, conn: _Client, event: RequestStarted, now: float) -> None:
        conn.head = event.head
        conn.started = now
        conn.response_started = False
        conn.status = 0
        conn.body_out = 0
        conn.route = "-"
        if conn.behind_proxy:
            conn.peer = self._forwarded_client(conn.proxy, _header(event.head, "x-forwarded-for"))
        conn.request_id = _valid_request_id(_header(event.head, REQUEST_ID_HEADER)) or ""
        # A client's X-Request-ID stays only when sane (ours replaces it); X-Real-IP is always
        # the client as the gateway determined it, never what a client claims.
        event.head.headers[:] = [
            (n, v)
            for n, v in event.head.headers
            if n != "x-real-ip" and (conn.request_id or n != REQUEST_ID_HEADER)
        ]
        event.head.headers.append(("x-real-ip", conn.peer))
        self.stats.requests += 1
        if conn.over_limit:
            self.stats.rejected_connections += 1
            self._reply(conn, 503, conn.over_limit, [("retry-after", "1"), ("connection", "close")])
            return
        if self.draining:
            self._reply(
                conn,
                503,
                "gateway is shutting down",
                [("retry-after", "5"), ("connection", "close")],
            )
            return
        if self.settings.rate_limit is not None:
            wait = self.settings.rate_limit(conn.peer, now)
            if wait is not None:
                self.stats.rate_limited += 1
                retry = str(max(1, math.ceil(wait)))
                self._reply(
                    conn, 429, "too many requests from your address", [("retry-after", retry)]
                )
                return
        host = _header(event.head, "host")
        path = event.head.target.partition("?")[0]
        route = self.routes.match(host, path)
        if route is None:
            if not self._tunnels and not self.routes.routes:
                self._reply(conn, 503, "no receiver connected", [("retry-after", "5")])
            else:
                self._reply(conn, 404, f"no route for {host or '(no host)'}{path}")
            return
        conn.route = str(route)
        key = address_key(conn.peer)
        per_address = self.settings.max_streams_per_address
        if per_address and self._streams_by_address.get(key, 0) >= per_address:
            self.stats.rate_limited += 1
            self._reply(
                conn, 429, "too many requests in progress from your address", [("retry-after", "1")]
            )
            return
        tunnel = self._pick_tunnel(route)
        if tunnel is None:
            if any(t.session is not None for t in self.routes.receivers(route)):
                self._reply(
                    conn, 503, f"all receivers of route {route} are busy", [("retry-after", "1")]
                )
            else:
                self._reply(
                    conn, 503, f"no receiver connected for route {route}", [("retry-after", "5")]
                )
            return
        assert tunnel.session is not None
        rid = str(uuid.uuid4())
        conn.rid, conn.tunnel = rid, tunnel
        tunnel.streams[rid] = conn
        conn.stream_key = key
        self._streams_by_address[key] = self._streams_by_address.get(key, 0) + 1
        conn.deadline = now + self.settings.timeout if self.settings.timeout > 0 else None
        head = event.head
        if _header(head, REQUEST_ID_HEADER) is None:
            conn.request_id = rid
            head = RequestHead(head.method, head.target, [*head.headers, (REQUEST_ID_HEADER, rid)])
        try:
            tunnel.session.start(rid, head)
        except M.ProtocolError:
            tunnel.streams.pop(rid, None)
            conn.rid = conn.tunnel = None
            self._release_stream_slot(conn)
            self._reply(conn, 431, "request head too large for the tunnel")
            return
        if event.expect_continue:
            conn.front.send_continue()
        self._wakeups.add(tunnel.cid)

    def _reply(
        self, conn: _Client, status: int, text: str, headers: list[tuple[str, str]] = ()
    ) -> None:
        """Answer the current request from the gateway itself."""
        if not conn.request_id:
            conn.request_id = str(uuid.uuid4())
        text = _error_text(text, conn.request_id)
        conn.front.send_error(status, text, [*headers, (REQUEST_ID_HEADER, conn.request_id)])
        conn.body_out = len(text.rstrip("\n").encode()) + 1  # the front's text/plain body
        self._fronts_due.append(conn)
        conn.status = status
        self._log_access(conn, status)
        self._wakeups.add(conn.cid)

    def _finish(
        self,
        conn: _Client,
        status: int,
        *,
        cancel: str | None = None,
        error: str | None = None,
        abort: bool = False,
    ) -> None:
        """End the client's current exchange: cancel the stream if it is still open (``cancel``
        is the reason the peer gets), answer ``status`` with ``error`` as the text, or cut a
        response that has started (``abort``)."""
        tunnel, rid = conn.tunnel, conn.rid
        self._release_stream_slot(conn)
        if tunnel is not None and rid is not None:
            tunnel.streams.pop(rid, None)
            tunnel.congested.discard(conn.cid)
            tunnel.paused.discard(conn.cid)
            if cancel is not None and tunnel.session is not None:
                tunnel.session.cancel(rid, cancel)
                self._wakeups.add(tunnel.cid)
        conn.rid = conn.tunnel = None
        conn.deadline = None
        conn.backlog = conn.taken = 0
        if error is not None or abort:
            # once a response started, it cuts it
            text = _error_text(error, conn.request_id) if error is not None else ""
            ids = [(REQUEST_ID_HEADER, conn.request_id)] if conn.request_id else []
            conn.front.send_error(status, text, ids)
            self._fronts_due.append(conn)
            conn.status = status
        if conn.head is not None:
            self._log_access(conn, conn.status or status)
        self._wakeups.add(conn.cid)

    def _release_stream_slot(self, conn: _Client) -> None:
        if conn.stream_key is not None:
            _uncount(self._streams_by_address, conn.stream_key)
            conn.stream_key = None

    def _abandon_client(self, conn: _Client, why: str) -> None:
        if conn.rid is not None:
            self.stats.client_aborts += 1
            self._finish(conn, 499, cancel=why)

    def _timeout(self, conn: _Client) -> None:
        self.stats.timeouts += 1
        self._finish(conn, 504, cancel="gateway timeout", error="receiver did not answer in time")

    def _update_congestion(self, conn: _Client) -> None:
        tunnel = conn.tunnel
        if tunnel is None or tunnel.session is None or tunnel.session.flow:
            return
        if conn.backlog >= self.settings.high_water:
            tunnel.congested.add(conn.cid)
        elif conn.cid in tunnel.congested:
            tunnel.congested.discard(conn.cid)
            self._wakeups.add(tunnel.cid)

    def _log_access(self, conn: _Client, status: int) -> None:
        head = conn.head
        if head is None:
            return
        seconds = self._now - conn.started
        self.stats.record(conn.route, status, seconds)
        access_log.info(
            "%s %s %s %s %d %dB %.1fms route=%s",
            conn.request_id or conn.rid or "-",
            conn.peer,
            head.method,
            head.target,
            status,
            conn.body_out,
            seconds * 1000,
            conn.route,
        )
        conn.head = None

    # --- tunnels -----------------------------------------------------------------------------

    def _tunnel_event(self, tunnel: _Tunnel, event: object, now: float) -> None:
        self._wakeups.add(tunnel.cid)
        if isinstance(event, BinaryReceived):
            if tunnel.session is None:
                return
            for sev in tunnel.session.receive_binary(event.data):
                self._guarded_stream_event(tunnel, sev)
        elif isinstance(event, BinaryDiscarded):
            if tunnel.session is not None:
                for sev in tunnel.session.receive_discarded(event.prefix, event.size):
                    self._guarded_stream_event(tunnel, sev)
        elif isinstance(event, ControlReceived):
            if tunnel.session is None:
                return
            for sev in tunnel.session.receive_control(event.message):
                self._guarded_stream_event(tunnel, sev)
        elif isinstance(event, HandshakeRequested):
            self._handshake(tunnel, event, now)
        elif isinstance(event, Closed):
            self._tunnel_gone(tunnel, f"receiver disconnected ({event.code})")

    def _trusted(self, address: str) -> bool:
        if not self.settings.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self.settings.trusted_proxies)

    def _forwarded_client(self, peer_host: str, forwarded: str | None) -> str:
        """The address a request or tunnel handshake comes from, for logs, per-address caps,
        the rate limit, X-Real-IP and the failure limit.

        Behind a trusted proxy it is the rightmost X-Forwarded-For hop that is not a trusted
        proxy (the one the nearest proxy appended). A hop that is not an IP address, or an
        oversized header, cannot come from a proxy: the proxy's own address is used, so
        made-up values never give an attacker a fresh address to fail from.
        """
        if not self._trusted(peer_host):
            return peer_host
        if forwarded is None or len(forwarded) > _MAX_FORWARDED_FOR:
            return peer_host
        for hop in reversed(forwarded.split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer_host
            if not self._trusted(hop):
                return hop
        return peer_host

    def _handshake(self, tunnel: _Tunnel, event: HandshakeRequested, now: float) -> None:
        client = self._forwarded_client(
            tunnel.peer_host, _header_of(event.headers, "x-forwarded-for")
        )
        if client != tunnel.peer_host:
            tunnel.peer = client  # else keep the port too, for the logs
        verdict = self.settings.auth.check_request(
            event.host, event.path, event.headers, tunnel.peer, now + self.wall_offset
        )
        if verdict.wait:  # the authenticator needs a DID document first: resume_handshakes
            self._parked[tunnel.cid] = (tunnel, event)
            return
        if not verdict.ok:
            self.stats.auth_failures += 1
            log.warning(
                "tunnel handshake from %s refused: %s",
                tunnel.peer,
                verdict.reason or verdict.status,
            )
            if verdict.status >= 4000:  # DID-WBA: close the upgraded socket, as anp-proxy does
                tunnel.ws.accept()
                tunnel.ws.close(verdict.status, DID_REFUSAL)
            else:
                tunnel.ws.reject(verdict.status, "", verdict.headers)
            return
        try:
            routes = parse_routes_header(_header_of(event.headers, ROUTES_HEADER))
        except ValueError as exc:
            log.warning(
                "tunnel handshake from %s refused: bad %s: %s", tunnel.peer, ROUTES_HEADER, exc
            )
            tunnel.ws.reject(400, f"bad {ROUTES_HEADER}: {exc}")
            return
        allowed = self.settings.route_claims
        if allowed is not None:
            denied = claims_allowed(routes, allowed.get(verdict.identity, []))
            if denied is not None:
                why = f"receiver {verdict.identity!r} may not claim route {denied}"
                log.warning("tunnel handshake from %s refused: %s", tunnel.peer, why)
                tunnel.ws.reject(403, why)
                return
        peer_window = parse_extensions(event.headers)
        local_window = self.settings.stream_window if peer_window is not None else None
        tunnel.ws.accept(verdict.headers + offer_extensions(local_window))
        tunnel.identity = verdict.identity
        tunnel.session = TunnelSession(
            tunnel.ws,
            accepts=ResponseHead,
            local_window=local_window,
            peer_window=peer_window,
            send_frame_size=self.settings.send_frame_size,
            limits=self.settings.codec,
        )
        self._tunnels.append(tunnel)
        tunnel.routes = routes
        self.routes.add(tunnel, routes)
        self.stats.tunnel_opened(tunnel.identity)
        log.info(
            "receiver %s connected from %s (%s), routes %s",
            tunnel.identity,
            tunnel.peer,
            "flow control" if tunnel.session.flow else "v1 peer",
            format_routes(routes),
        )

    def _stream_event(self, tunnel: _Tunnel, event: object) -> None:
        if isinstance(event, TunnelBroken):
            log.warning("receiver %s sent unframeable data: %s", tunnel.identity, event.reason)
            tunnel.ws.close(1002, "bad ANPX frame")
            self._tunnel_gone(tunnel, "receiver sent a malformed frame")
            return
        if isinstance(event, PeerDraining):
            log.info("receiver %s is draining", tunnel.identity)
            return
        rid = getattr(event, "request_id", None)
        conn = tunnel.streams.get(rid) if rid is not None else None
        if conn is None:
            return
        if isinstance(event, StreamWritable):
            self._wakeups.add(conn.cid)
        elif isinstance(event, StreamHead):
            assert isinstance(event.head, ResponseHead)
            conn.deadline = None
            conn.response_started = True
            conn.status = event.head.status
            head = event.head
            if conn.request_id and _header(head, REQUEST_ID_HEADER) is None:
                head = ResponseHead(
                    head.status, head.reason, [*head.headers, (REQUEST_ID_HEADER, conn.request_id)]
                )
            conn.front.send_response(head)
            self._wakeups.add(conn.cid)
        elif isinstance(event, StreamData):
            queued = conn.front.send_data(event.data)
            conn.body_out += queued
            conn.backlog += queued
            if queued < len(event.data):
                # Dropped by the front (HEAD, 204, 304): no write will ever report these
                # bytes, so they count as consumed now, or the stream's credit never returns.
                self._consumed(conn, len(event.data) - queued)
            self.stats.bytes_out += queued
            self._update_congestion(conn)
            self._wakeups.add(conn.cid)
        elif isinstance(event, StreamEnd):
            conn.front.end_response()
            self._fronts_due.append(conn)
            # the stream is over unless the upload still runs: the response is complete, stop it
            self._finish(conn, conn.status, cancel="response complete")
        elif isinstance(event, StreamReset):
            # The reason may describe the receiver's inside (an app's exception, a local
            # service's address): it goes to the log, the client gets a generic reason.
            log.info(
                "request %s reset by receiver %s: %s",
                conn.request_id or rid,
                tunnel.identity or tunnel.peer,
                event.reason,
            )
            self._fail(conn, "the receiver failed the request")

    def _guarded_stream_event(self, tunnel: _Tunnel, event: object) -> None:
        """The crash barrier for one stream: an unexpected exception resets that stream
        (and its client connection, whose response is in an unknown state), not the tunnel."""
        try:
            self._stream_event(tunnel, event)
        except Exception as exc:
            rid = getattr(event, "request_id", None)
            conn = tunnel.streams.pop(rid, None) if rid is not None else None
            if conn is None:
                if rid is None or tunnel.session is None:
                    self._contain(tunnel.cid, exc, "a tunnel event")
                    return
                log.error("internal error on stream %s; resetting it", rid, exc_info=exc)
            else:
                self._contain(conn.cid, exc, f"stream {rid}")
            if tunnel.session is not None:
                tunnel.session.cancel(rid, "internal error")  # type: ignore[arg-type]
            self._wakeups.add(tunnel.cid)

    def _fail(self, conn: _Client, why: str) -> None:
        """The receiver side failed the exchange: 502 before the response began, else a cut."""
        self.stats.resets += 1
        if conn.response_started:
            self._finish(conn, conn.status, abort=True)
        else:
            self._finish(conn, 502, error=why)

    def _tunnel_gone(self, tunnel: _Tunnel, why: str) -> None:
        if tunnel in self._tunnels:
            self._tunnels.remove(tunnel)
            self.routes.remove(tunnel, tunnel.routes)
            log.info("receiver %s gone: %s", tunnel.identity or tunnel.peer, why)
        if tunnel.session is not None:
            tunnel.session.abandon()
        for conn in list(tunnel.streams.values()):
            self._fail(conn, why)
        tunnel.streams.clear()
        self._wakeups.update(tunnel.paused)
        tunnel.paused.clear()
        self._wakeups.add(tunnel.cid)

    # --- admin -------------------------------------------------------------------------------

    def _admin_event(self, conn: _Admin, event: object, now: float) -> None:
        if not isinstance(event, RequestStarted):
            return
        path = event.head.target.partition("?")[0]
        receivers = sum(1 for t in self._tunnels if t.session is not None)
        content_type = "application/json"
        status = 200
        if path in ("/stats", "/metrics") and not self._admin_allowed(event.head):
            conn.front.send_error(
                401, "a bearer token is required", [("www-authenticate", 'Bearer realm="anpx"')]
            )
            self._fronts_due.append(conn)
            return
        if path == "/health":
            ready = receivers > 0
            body = self.stats.health_json(ready=ready, receivers=receivers, draining=self.draining)
            status = 200 if ready and not self.draining else 503
        elif path == "/stats":
            body = self.stats.stats_json(
                receivers=self.receivers, routes=self.routes.routes, in_flight=self.in_flight
            )
        elif path == "/metrics":
            body = self.stats.prometheus(
                receivers=receivers,
                in_flight=self.in_flight,
                identities=tuple(t.identity for t in self._tunnels if t.session is not None),
            )
            content_type = "text/plain; version=0.0.4; charset=utf-8"
        else:
            conn.front.send_error(404, "unknown admin path; try /health, /stats or /metrics")
            self._fronts_due.append(conn)
            return
        conn.front.send_response(
            ResponseHead(
                status,
                "OK" if status == 200 else "Service Unavailable",
                [("content-type", content_type), ("content-length", str(len(body)))],
            )
        )
        conn.front.send_data(body)
        conn.front.end_response()
        self._fronts_due.append(conn)

    def _admin_allowed(self, head: RequestHead) -> bool:
        token = self.settings.admin_token
        if token is None:
            return True
        scheme, _, given = (_header(head, "authorization") or "").strip().partition(" ")
        # compare_digest takes the same time whatever matches; the length may show, not the token
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), token
        )

    # --- timers: placeholder until the split lands (h13-gw/h13-rc) ---
    # The old 0.1 s tick, behind the deadline contract (anpx_core.contract.DriverCore), so the
    # drivers can sleep on next_deadline() today. h13-gw replaces this block with real deadlines.
    _placeholder_timer_ran: float | None = None

    def next_deadline(self) -> float | None:
        last = self._placeholder_timer_ran
        return 0.0 if last is None else last + TICK_INTERVAL

    def handle_timer(self, now: float) -> None:
        from .contract import Signal  # local: keeps this placeholder in one block

        self._placeholder_timer_ran = now
        self.tick(now)
        if self.draining and self.in_flight == 0:
            self._wakeups.add(Signal.DRAINED)  # type: ignore[arg-type]


def _uncount(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _error_text(reason: str, request_id: str) -> str:
    """The body of an error the gateway answers itself: a short reason and the request id
    (to quote when reporting it), nothing about the deployment's inside."""
    return f"{reason}\nrequest id: {request_id}" if request_id else reason


def _addr(addr: tuple[str, int] | None) -> str:
    if not addr:
        return "-"
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


REQUEST_ID_HEADER = "x-request-id"
WRITE_CHUNK = 256 * 1024  # the most take_output hands out for a client at once
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=@")


def _valid_request_id(value: str | None) -> str | None:
    """A client's X-Request-ID, kept only when short and plain (it reaches logs)."""
    if value and len(value) <= 200 and set(value) <= _REQUEST_ID_OK:
        return value
    return None


def _header_of(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _header(head: RequestHead | ResponseHead, name: str) -> str | None:
    return _header_of(head.headers, name)
