"""The receiver, as one sans-IO state machine: tunnels to gateways, calls into the app.

Same driver contract as :mod:`anpx_core.gateway` (``receive``, ``take_output``,
``written``, ``can_read``, ``closed``, ``pop_wakeups``, ``tick``), plus:

* ``pop_connects()``: outgoing connections to open (to a gateway, or to the
  local HTTP service in forward mode); answer each with ``connected(cid, now)``
  or ``connect_failed(cid, now, reason)``.
* ASGI mode: ``pop_app_calls()`` gives ``(call_id, scope)`` pairs; run the app
  for each with ``receive``/``send`` built on ``asgi_receive(call_id)`` (None:
  wait for the wake-up ``call_id``) and ``asgi_send(call_id, message, now)`` (then
  wait while ``not asgi_writable(call_id)``), and report the end with
  ``app_finished(call_id, exc, now)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import messages as M
from .asgi import (
    AsgiError,
    AsgiHttpCall,
    ClientDisconnected,
    ResponseAborted,
    ResponseBody,
    ResponsePart,
    ResponseStart,
    build_scope,
)
from .auth import H_CLIENT_ID, ClientAuth, NoAuth
from .barrier import CrashBarrier, guarded, guarded_close
from .forward import (
    ForwardConnection,
    ForwardError,
    ForwardPool,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from .meta import RequestHead, ResponseHead
from .routing import ROUTES_HEADER
from .strict import StrictError, parse_port, parse_scheme
from .tunnel import (
    DEFAULT_HIGH_WATER,
    DEFAULT_STREAM_WINDOW,
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
    HandshakeAccepted,
    HandshakeRejected,
    WsClient,
    WsLimits,
)

log = logging.getLogger("anpx.receiver")
access_log = logging.getLogger("anpx.access.receiver")

TICK_INTERVAL = 0.1
MAX_RECONNECT_DELAY = 60.0
RECEIVER_TIMEOUT = 30.0  # seconds for the tunnel handshake and for a keepalive ping's answer


@dataclass(slots=True)
class GatewayAddress:
    host: str
    port: int
    path: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> GatewayAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"gateway_url must be ws://host[:port]/path or wss://..., got {url!r}")
        tls = parts.scheme == "wss"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, parts.port or (443 if tls else 80), path, tls)

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(slots=True)
class ReceiverSettings:
    gateway_urls: list[str] = field(default_factory=lambda: ["ws://127.0.0.1:8765/"])
    client_id: str = ""
    forward: tuple[str, int] | None = None  # local HTTP service; None: in-process ASGI app
    reconnect_enabled: bool = True
    reconnect_delay: float = 1.0  # first retry; doubles up to MAX_RECONNECT_DELAY, with jitter
    max_reconnect_attempts: int = 0  # 0 = forever
    # the receiver's one `timeout` (config) bounds the handshake and a ping's answer alike
    ws: WsLimits = field(
        default_factory=lambda: WsLimits(
            ping_timeout=RECEIVER_TIMEOUT, handshake_timeout=RECEIVER_TIMEOUT
        )
    )
    stream_window: int | None = DEFAULT_STREAM_WINDOW
    send_frame_size: int = M.DEFAULT_SEND_FRAME_SIZE
    codec: M.Limits = field(default_factory=M.Limits)
    max_buffered_body: int = DEFAULT_STREAM_WINDOW  # request body held for an app not reading
    high_water: int = DEFAULT_HIGH_WATER  # tunnel output backlog at which producers pause
    max_idle_upstreams: int = 8  # forward mode: keep-alive connections kept for reuse
    max_concurrent_requests: int = 1000  # beyond it the receiver itself answers 503
    v1_ping_interval: float = 5.0  # JSON ping period towards a v1 gateway (its window: 20 s)
    auth: ClientAuth = field(default_factory=NoAuth)
    root_path: str = ""
    routes: list[str] = field(
        default_factory=list
    )  # claimed in the handshake; []: the default route
    # reconnect jitter source in [0, 1) (the host passes random.random); 0.5: no jitter
    jitter: Callable[[], float] = field(default=lambda: 0.5)


@dataclass(slots=True)
class ConnectRequest:
    cid: int
    host: str
    port: int
    tls: bool
    purpose: str  # "gateway" or "upstream"


@dataclass(slots=True, eq=False)
class _Link:
    """One gateway we keep a tunnel to."""

    address: GatewayAddress
    cid: int | None = None
    ws: WsClient | None = None
    session: TunnelSession | None = None
    attempts: int = 0  # failures since the last successful handshake
    retry_at: float | None = 0.0  # when to connect next; None: connected or given up
    state: str = "idle"  # idle | connecting | handshake | open | closed (flushing its Close)
    close_reason: str = ""
    lost_reason: str = ""  # the socket error that ended it, if any (e.g. a TLS alert)
    calls: dict[str, _Call] = field(default_factory=dict)
    written_mark: int = 0  # session.bytes_out the driver has written
    taken_mark: int = 0
    paused: set[int] = field(default_factory=set)  # producers waiting for our backlog to drain
    read_paused: bool = False  # can_read said no because of ws.over_backlog

    @property
    def backlog(self) -> int:
        """Frames we queued for the gateway that the driver has not written yet."""
        return 0 if self.session is None else self.session.bytes_out - self.written_mark


@dataclass(slots=True, eq=False)
class _Call:
    """One request being served: by the in-process app or by an upstream connection."""

    cid: int
    rid: str
    link: _Link
    head: RequestHead
    started: float
    asgi: AsgiHttpCall | None = None
    upstream: _Upstream | None = None
    response_started: bool = False
    status: int = 0
    body_out: int = 0
    done: bool = False  # our response is complete or the stream is gone
    head_flush_due: bool = False
    body_upstream: int = 0  # request body bytes handed to an upstream connection
    request_ended: bool = False
    gone_reason: str = ""  # why the stream ended before the app did, if it did


@dataclass(slots=True, eq=False)
class _Upstream:
    cid: int
    conn: ForwardConnection
    call: _Call | None = None
    connected: bool = False
    taken: int = 0  # request body bytes the driver is writing
    pending_body: int = 0  # request body bytes handed to conn, not yet taken
    closing: bool = False


class ReceiverCore(CrashBarrier):
    _barrier_log = log

    def __init__(
        self, settings: ReceiverSettings | None = None, *, rng: Callable[[], float] = random.random
    ) -> None:
        self.settings = settings or ReceiverSettings()
        self._doomed: set[int] = set()  # reset by the crash barrier, socket not closed yet
        self._rng = rng
        self._links = [_Link(GatewayAddress.parse(u)) for u in self.settings.gateway_urls]
        self._conns: dict[int, _Link | _Upstream] = {}
        self._calls: dict[int, _Call] = {}
        self._pool = ForwardPool(self.settings.max_idle_upstreams)
        self._connects: list[ConnectRequest] = []
        self._app_calls: list[tuple[int, dict]] = []
        self._wakeups: set[int] = set()
        self._next_id = 1
        self.stopping = False
        self.given_up = False
        self.last_error = ""
        self.requests = 0
        self.rejected = 0  # requests answered 503 at max_concurrent_requests
        self._now = 0.0  # the time of the call being handled, for access-log durations
        self.wall_offset = 0.0  # Unix time minus the driver's clock (set by start and tick)
        self.lifespan_state: dict | None = None
        self._heads_due: list[_Call] = []  # the app's lifespan state, copied into each scope

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    # --- driver contract -----------------------------------------------------------------

    def pop_connects(self) -> list[ConnectRequest]:
        out, self._connects = self._connects, []
        return out

    def pop_app_calls(self) -> list[tuple[int, dict]]:
        out, self._app_calls = self._app_calls, []
        return out

    def pop_wakeups(self) -> set[int]:
        out, self._wakeups = self._wakeups, set()
        return out

    @property
    def connected_links(self) -> int:
        return sum(1 for link in self._links if link.state == "open")

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def tick(self, now: float, wall: float | None = None) -> None:
        """Run timers. ``wall`` (Unix seconds) keeps the clock for auth timestamps current."""
        self._now = now
        if wall is not None:
            self.wall_offset = wall - now
        for link in self._links:
            if link.cid in self._doomed:
                continue
            try:
                if link.ws is not None:
                    for event in link.ws.tick(now):
                        self._link_event(link, event, now)
                    self._wakeups.add(link.cid)  # type: ignore[arg-type]
                elif (
                    link.state == "idle"
                    and link.retry_at is not None
                    and now >= link.retry_at
                    and not self.stopping
                ):
                    self._dial(link)
            except Exception as exc:  # the crash barrier: this tunnel only
                if link.cid is None:
                    log.error("internal error dialling %s", link.address.host_header, exc_info=exc)
                else:
                    self._contain(link.cid, exc, "tick")
        self.flush_heads()

    @property
    def heads_pending(self) -> bool:
        """A response head waits for its first body part; call :meth:`flush_heads` soon
        (drivers do after one turn of their loop, so an app that sends its body right
        away still gets a single frame, and one that doesn't is not held back)."""
        return bool(self._heads_due)

    def flush_heads(self) -> None:
        """Send every response head still waiting for a body part."""
        due, self._heads_due = self._heads_due, []
        for call in due:
            if call.head_flush_due and call.link.session is not None and not call.done:
                call.head_flush_due = False
                try:
                    call.link.session.flush(call.rid)
                except Exception as exc:  # the crash barrier: this stream only
                    self._contain_call(call, exc, "flush_heads")
                self._wakeups.add(call.link.cid)  # type: ignore[arg-type]

    @guarded()
    def connected(self, cid: int, now: float) -> None:
        self._now = now
        conn = self._conns.get(cid)
        if isinstance(conn, _Link):
            link = conn
            link.state = "handshake"
            addr = link.address
            wall = now + self.wall_offset
            headers = list(self.settings.auth.request_headers(addr.host_header, addr.path, wall))
            if self.settings.client_id and not any(n == H_CLIENT_ID for n, _ in headers):
                headers.append((H_CLIENT_ID, self.settings.client_id))
            headers += offer_extensions(self.settings.stream_window)
            if self.settings.routes:
                headers.append((ROUTES_HEADER, ", ".join(self.settings.routes)))
            link.ws = WsClient(addr.host_header, addr.path, self.settings.ws, now, headers=headers)
        elif isinstance(conn, _Upstream):
            conn.connected = True
        self._wakeups.add(cid)

    @guarded_close  # no socket: whatever happens, the attempt is forgotten
    def connect_failed(self, cid: int, now: float, reason: str) -> None:
        conn = self._conns.pop(cid, None)
        if isinstance(conn, _Link):
            self._link_down(
                conn, now, f"cannot connect to {conn.address.host}:{conn.address.port}: {reason}"
            )
        elif isinstance(conn, _Upstream) and conn.call is not None:
            self._upstream_failed(conn, f"local service unreachable: {reason}")

    @guarded()
    def receive(self, cid: int, data: bytes, now: float) -> None:
        self._now = now
        conn = self._conns.get(cid)
        if conn is None:
            return
        self._wakeups.add(cid)
        if isinstance(conn, _Link):
            if conn.ws is None:
                return
            for event in conn.ws.receive_data(data, now):
                self._link_event(conn, event, now)
            if conn.session is not None:
                conn.session.flush_credits()
        else:
            for event in conn.conn.receive_data(data):
                self._upstream_event(conn, event, now)
            if conn.call is None and not conn.closing and not conn.conn.reusable:
                # the service closed an idle pooled connection: never hand it out again
                self._pool.discard(conn.conn)
                conn.closing = True

    def lost(self, cid: int, now: float, reason: str = "") -> None:
        """The socket failed; ``reason`` (e.g. a TLS alert) ends up in the tunnel's log line."""
        conn = self._conns.get(cid)
        if isinstance(conn, _Link) and reason:
            conn.lost_reason = reason
        self.receive(cid, b"", now)

    @guarded((b"", True))
    def take_output(self, cid: int) -> tuple[bytes, bool]:
        conn = self._conns.get(cid)
        if conn is None:
            return b"", True
        if isinstance(conn, _Link):
            if conn.ws is None:
                return b"", False
            if conn.session is not None:
                conn.taken_mark = conn.session.bytes_out
            return conn.ws.data_to_send(), conn.ws.closed
        data = conn.conn.data_to_send() if conn.connected else b""
        conn.taken += conn.pending_body
        conn.pending_body = 0
        return data, conn.closing

    @guarded()
    def written(self, cid: int, now: float) -> None:
        self._now = now
        conn = self._conns.get(cid)
        if isinstance(conn, _Link):
            conn.written_mark = conn.taken_mark
            if conn.ws is not None:
                conn.ws.sent()
                if conn.read_paused and not conn.ws.over_backlog:
                    conn.read_paused = False
                    self._wakeups.add(cid)
            if conn.paused and conn.backlog < self.settings.high_water:
                self._wakeups.update(conn.paused)
                conn.paused.clear()
        elif isinstance(conn, _Upstream) and conn.taken:
            call = conn.call
            if call is not None and call.link.session is not None:
                call.link.session.consumed(call.rid, conn.taken)
                call.link.session.flush_credits()
                self._wakeups.add(call.link.cid)  # type: ignore[arg-type]
            conn.taken = 0

    @guarded(False)
    def can_read(self, cid: int) -> bool:
        conn = self._conns.get(cid)
        if isinstance(conn, _Link):
            if conn.ws is not None and conn.ws.over_backlog:
                conn.read_paused = True  # the gateway does not read what we owe it
                return False
            return conn.ws is not None and not conn.ws.closed and not self._holding_body(conn)
        if isinstance(conn, _Upstream):
            call = conn.call
            if call is None or call.link.session is None:
                return not conn.closing
            if call.link.backlog >= self.settings.high_water:
                call.link.paused.add(cid)
                return False
            return call.link.session.writable(call.rid)
        return False

    def _holding_body(self, link: _Link) -> bool:
        """v1 gateway (no flow control): stop reading the tunnel while a request body
        waits for its consumer (the app or the local service) to take it."""
        session = link.session
        if session is None or session.flow:
            return False
        limit = self.settings.max_buffered_body
        for call in link.calls.values():
            if call.asgi is not None and call.asgi.buffered >= limit:
                return True
            up = call.upstream
            if up is not None and up.pending_body + up.taken >= limit:
                return True
        return False

    @guarded_close
    def closed(self, cid: int, now: float) -> None:
        self._now = now
        conn = self._conns.pop(cid, None)
        if isinstance(conn, _Link):
            self._link_down(conn, now, (conn.ws and "tunnel closed") or "connection closed")
        elif isinstance(conn, _Upstream):
            self._pool.discard(conn.conn)
            if conn.call is not None and not conn.call.done:
                self._upstream_failed(conn, "local service closed the connection")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, now: float, wall: float | None = None) -> None:
        """Begin connecting to every gateway. ``wall``: Unix time now, for auth timestamps."""
        if wall is not None:
            self.wall_offset = wall - now
        for link in self._links:
            if link.state == "idle":
                self._dial(link)

    def begin_drain(self) -> None:
        """Tell the gateways to send no new requests; in-flight ones finish."""
        self.stopping = True
        for link in self._links:
            if link.session is not None:
                link.session.send_drain()
                self._wakeups.add(link.cid)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close every tunnel (after draining)."""
        self.stopping = True
        for link in self._links:
            if link.ws is not None:
                link.ws.close(1001, "receiver shutting down")
                self._wakeups.add(link.cid)  # type: ignore[arg-type]
            link.retry_at = None
        for idle in self._pool.close_all():
            up = idle.handle
            up.closing = True
            self._wakeups.add(up.cid)

    # --- gateway links -------------------------------------------------------------------

    def _dial(self, link: _Link) -> None:
        cid = self._new_id()
        link.cid, link.state, link.retry_at = cid, "connecting", None
        self._conns[cid] = link
        addr = link.address
        self._connects.append(ConnectRequest(cid, addr.host, addr.port, addr.tls, "gateway"))

    def _link_lost(self, link: _Link) -> None:
        """The tunnel is over (its socket may still be flushing a Close): fail its streams."""
        if link.session is not None:
            link.session.abandon()
            link.session = None
        for call in list(link.calls.values()):
            self._call_gone(call, "tunnel lost")
        link.calls.clear()
        self._wakeups.update(link.paused)
        link.paused.clear()

    def _link_down(self, link: _Link, now: float, why: str) -> None:
        """The socket is gone: forget it and schedule the next attempt."""
        was_open = link.state in ("open", "closed")
        self._link_lost(link)
        self._conns.pop(link.cid, None)  # type: ignore[arg-type]
        link.state, link.ws, link.cid = "idle", None, None
        why = link.close_reason or why
        if link.lost_reason:
            why += f" ({link.lost_reason})"
        link.close_reason = link.lost_reason = ""
        if was_open:
            level = logging.INFO if self.stopping else logging.WARNING
            log.log(level, "tunnel to %s closed: %s", link.address.host_header, why)
            link.attempts = 0
        else:
            self.last_error = why
        link.attempts += 1
        limit = self.settings.max_reconnect_attempts
        if self.stopping:
            link.retry_at = None
        elif not self.settings.reconnect_enabled or (limit and link.attempts > limit):
            link.retry_at = None
            self.given_up = all(lk.retry_at is None and lk.state == "idle" for lk in self._links)
            log.error(
                "giving up on %s after %d attempts: %s",
                link.address.host_header,
                link.attempts,
                why,
            )
        else:
            base = self.settings.reconnect_delay * 2 ** min(link.attempts - 1, 16)
            delay = min(base, MAX_RECONNECT_DELAY) * (0.5 + self._rng())  # jitter: x0.5 .. x1.5
            link.retry_at = now + delay
            log.info(
                "reconnecting to %s in %.1fs (attempt %d): %s",
                link.address.host_header,
                delay,
                link.attempts,
                why,
            )

    def _link_event(self, link: _Link, event: object, now: float) -> None:
        if isinstance(event, BinaryReceived):
            if link.session is not None:
                for sev in link.session.receive_binary(event.data):
                    self._guarded_stream_event(link, sev, now)
        elif isinstance(event, BinaryDiscarded):
            if link.session is not None:
                for sev in link.session.receive_discarded(event.prefix, event.size):
                    self._guarded_stream_event(link, sev, now)
        elif isinstance(event, ControlReceived):
            if link.session is not None:
                for sev in link.session.receive_control(event.message):
                    self._guarded_stream_event(link, sev, now)
        elif isinstance(event, HandshakeAccepted):
            problem = self.settings.auth.check_response(event.headers)
            if problem is not None:
                log.error("refusing gateway %s: %s", link.address.host_header, problem)
                self.last_error = link.close_reason = problem
                link.ws.close(1008, "gateway failed authentication")  # type: ignore[union-attr]
                return
            peer_window = parse_extensions(event.headers)
            local_window = self.settings.stream_window if peer_window is not None else None
            link.session = TunnelSession(
                link.ws,
                accepts=RequestHead,
                local_window=local_window,
                peer_window=peer_window,
                send_frame_size=self.settings.send_frame_size,
                limits=self.settings.codec,
            )
            link.written_mark = link.taken_mark = 0
            if peer_window is None:
                link.session.greet_v1_gateway()
                # a v1 gateway drops receivers whose JSON pings stop for 2 x its ping interval
                link.ws.ping_every(self.settings.v1_ping_interval, now)  # type: ignore[union-attr]
            link.state = "open"
            link.attempts = 0
            log.info(
                "tunnel to %s open (%s)",
                link.address.host_header,
                "flow control" if link.session.flow else "v1 gateway",
            )
        elif isinstance(event, HandshakeRejected):
            lines = event.body.decode("utf-8", "replace").strip().splitlines()
            detail = lines[0][:200] if lines else ""  # one log line, whatever the server sent
            why = f"gateway refused the tunnel: HTTP {event.status}" + (
                f": {detail}" if detail else ""
            )
            log.error("%s", why)
            self.last_error = link.close_reason = why
        elif isinstance(event, Closed):
            # Streams fail now; the socket stays until the driver has written our Close
            # frame (take_output reports close) and called closed().
            if not link.close_reason:  # a refusal we logged already says more
                link.close_reason = f"closed ({event.code} {event.reason})".strip()
            if link.state == "open":
                link.state = "closed"
            self._link_lost(link)

    def _guarded_stream_event(self, link: _Link, event: object, now: float) -> None:
        """The crash barrier for one stream: an unexpected exception resets that stream
        (the gateway answers its client 502), not the tunnel and its other streams."""
        try:
            self._stream_event(link, event, now)
        except Exception as exc:
            rid = getattr(event, "request_id", None)
            call = link.calls.get(rid) if rid is not None else None
            if call is not None:
                self._contain_call(call, exc, f"stream {rid}")
            elif rid is not None and link.session is not None:
                log.error("internal error on stream %s; resetting it", rid, exc_info=exc)
                link.session.cancel(rid, "internal error")
                self._wakeups.add(link.cid)  # type: ignore[arg-type]
            else:
                self._contain(link.cid, exc, "a tunnel event")  # type: ignore[arg-type]

    def _contain_call(self, call: _Call, exc: BaseException, where: str) -> None:
        """Log ``exc`` once and reset the call's stream; its app learns at its next
        receive / send (http.disconnect / ClientDisconnected)."""
        log.error(
            "internal error in %s for %s %s; resetting its stream",
            where,
            call.head.method,
            call.head.target,
            exc_info=exc,
        )
        try:
            self._cancel(call, "internal error")
        except Exception:  # state beyond repair: forget the call all the same
            call.done = True
            call.link.calls.pop(call.rid, None)
            if call.asgi is None:
                self._calls.pop(call.cid, None)

    def _stream_event(self, link: _Link, event: object, now: float) -> None:
        if isinstance(event, TunnelBroken):
            log.warning("gateway sent unframeable data: %s", event.reason)
            link.ws.close(1002, "bad ANPX frame")  # type: ignore[union-attr]
            return
        rid = getattr(event, "request_id", None)
        if isinstance(event, StreamHead):
            assert isinstance(event.head, RequestHead) and rid is not None
            self._open_call(link, rid, event.head, now)
            return
        call = link.calls.get(rid) if rid is not None else None
        if call is None:
            return
        if isinstance(event, StreamData):
            if call.asgi is not None:
                try:
                    call.asgi.body_received(event.data)
                except AsgiError:
                    self._cancel(call, "request body over the receiver's buffer")
                    return
                self._wakeups.add(call.cid)
            elif call.upstream is not None:
                up = call.upstream
                call.body_upstream += len(event.data)
                try:
                    up.conn.send_body(event.data)
                except ForwardError as exc:
                    self._upstream_failed(up, str(exc))
                    return
                up.pending_body += len(event.data)
                self._wakeups.add(up.cid)
        elif isinstance(event, StreamEnd):
            if call.asgi is not None:
                call.asgi.body_ended()
                self._wakeups.add(call.cid)
            elif call.upstream is not None:
                call.request_ended = True
                up = call.upstream
                try:
                    up.conn.end_body()
                except ForwardError as exc:
                    self._upstream_failed(up, str(exc))
                    return
                self._wakeups.add(up.cid)
        elif isinstance(event, StreamReset):
            self._call_gone(call, event.reason)
        elif isinstance(event, StreamWritable):
            self._wakeups.add(call.cid)
            if call.upstream is not None:
                self._wakeups.add(call.upstream.cid)

    # --- calls -----------------------------------------------------------------------------

    def _open_call(self, link: _Link, rid: str, head: RequestHead, now: float) -> None:
        self.requests += 1
        call = _Call(self._new_id(), rid, link, head, now)
        link.calls[rid] = call
        if len(self._calls) >= self.settings.max_concurrent_requests:
            # A gateway that does not limit what it sends us (a v1 one) must not make us
            # start unbounded work: answer 503 ourselves.
            self.rejected += 1
            body = b"receiver busy: too many requests in progress\n"
            head503 = ResponseHead(
                503,
                "Service Unavailable",
                [
                    ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", str(len(body))),
                    ("retry-after", "1"),
                ],
            )
            self._respond(call, [ResponseStart(head503), ResponseBody(body, False)])
            link.calls.pop(rid, None)
            return
        self._calls[call.cid] = call
        try:
            server = _server_from(head)
            scheme = parse_scheme(_header(head, "x-forwarded-proto") or "http", "x-forwarded-proto")
        except StrictError as exc:
            # refused where it enters: the gateway sent a value no client of ours could have
            log.warning("refusing request %s from the gateway: %s", rid, exc)
            self._cancel(call, f"bad_meta: {exc}")
            return
        if self.settings.forward is None:
            scope = build_scope(
                head,
                client=_client_from(head),
                server=server,
                scheme=scheme,
                root_path=self.settings.root_path,
                state=self.lifespan_state,
            )
            # v1: the tunnel is paused at max_buffered_body (see _holding_body), but what one
            # read already brought still lands here; only a broken peer gets past this cap.
            limit = self.settings.max_buffered_body
            if link.session is not None and not link.session.flow:
                limit += 2 * self.settings.ws.max_message_size
            call.asgi = AsgiHttpCall(scope, limit)
            self._app_calls.append((call.cid, scope))
            return
        self._forward(call, reuse=True)

    def _forward(self, call: _Call, *, reuse: bool) -> None:
        """Send the call's request to the local service, on a pooled connection if any."""
        pooled = self._pool.acquire() if reuse else None
        if pooled is not None:
            up = pooled.handle
        else:
            host, port = self.settings.forward  # type: ignore[misc]
            up = _Upstream(self._new_id(), ForwardConnection(host, port))
            up.conn.handle = up
            self._conns[up.cid] = up
            self._connects.append(ConnectRequest(up.cid, host, port, False, "upstream"))
        up.call, call.upstream = call, up
        self._wakeups.add(up.cid)
        try:
            up.conn.start_request(call.head)
            if call.request_ended:
                up.conn.end_body()
        except ForwardError as exc:
            self._upstream_failed(up, f"cannot forward this request: {exc}")

    def _respond(self, call: _Call, parts: list[ResponsePart]) -> None:
        session = call.link.session
        if session is None or call.done:
            return
        for part in parts:
            if isinstance(part, ResponseStart):
                call.response_started = True
                call.status = part.head.status
                session.start(call.rid, part.head)
                call.head_flush_due = True  # sent with the first body, or by flush_heads()
                self._heads_due.append(call)
            elif isinstance(part, ResponseBody):
                call.head_flush_due = False
                call.body_out += len(part.data)
                session.send(call.rid, part.data)
                if part.more:
                    session.flush(call.rid)
                else:
                    session.end(call.rid)
                    self._complete(call)
            elif isinstance(part, ResponseAborted):
                self._cancel(call, part.reason)
        self._wakeups.add(call.link.cid)  # type: ignore[arg-type]

    def _complete(self, call: _Call) -> None:
        call.done = True
        access_log.info(
            "%s %s %s %d %dB %.1fms",
            _header(call.head, "x-request-id") or call.rid,
            call.head.method,
            call.head.target,
            call.status,
            call.body_out,
            (self._now - call.started) * 1000,
        )

    def _cancel(self, call: _Call, reason: str) -> None:
        if call.link.session is not None and not call.done:
            call.link.session.cancel(call.rid, reason)
            self._wakeups.add(call.link.cid)  # type: ignore[arg-type]
        self._call_gone(call, reason)

    def _call_gone(self, call: _Call, reason: str) -> None:
        """The stream is over from the tunnel's point of view."""
        call.done = True
        call.gone_reason = reason
        call.link.calls.pop(call.rid, None)
        if call.asgi is not None:
            call.asgi.disconnected()
            self._wakeups.add(call.cid)  # the app learns at its next receive/send
        else:
            self._calls.pop(call.cid, None)
        up = call.upstream
        if up is not None:
            up.call = None
            call.upstream = None
            up.closing = True  # mid-exchange: the connection cannot be reused
            self._wakeups.add(up.cid)

    # --- ASGI ------------------------------------------------------------------------------

    def asgi_receive(self, call_id: int) -> dict | None:
        call = self._calls.get(call_id)
        if call is None or call.asgi is None:
            return {"type": "http.disconnect"}
        try:
            return self._asgi_receive(call)
        except Exception as exc:  # the crash barrier: this stream only
            self._contain_call(call, exc, "receive")
            return {"type": "http.disconnect"}

    def _asgi_receive(self, call: _Call) -> dict | None:
        assert call.asgi is not None
        before = call.asgi.consumed
        message = call.asgi.receive()
        taken = call.asgi.consumed - before
        if taken and not call.done and call.link.session is not None:
            call.link.session.consumed(call.rid, taken)
            call.link.session.flush_credits()
            self._wakeups.add(call.link.cid)  # type: ignore[arg-type]
        return message

    def asgi_send(self, call_id: int, message: dict, now: float) -> None:
        """Hand one app message to the tunnel; raises AsgiError / ClientDisconnected into the app."""
        self._now = now
        call = self._calls.get(call_id)
        if call is None or call.asgi is None:
            raise ClientDisconnected("the request is over")
        parts = call.asgi.send(message)  # AsgiError / ClientDisconnected: the app's to handle
        try:
            self._respond(call, parts)
        except Exception as exc:  # the crash barrier: this stream only
            self._contain_call(call, exc, "send")
            raise ClientDisconnected("the stream was reset after an internal error") from None

    def asgi_writable(self, call_id: int) -> bool:
        call = self._calls.get(call_id)
        if call is None or call.done or call.link.session is None:
            return True
        if call.link.backlog >= self.settings.high_water:
            call.link.paused.add(call_id)  # woken by written() once the backlog drains
            return False
        try:
            return call.link.session.writable(call.rid)
        except Exception as exc:  # the crash barrier: this stream only
            self._contain_call(call, exc, "send")
            return True

    def app_finished(self, call_id: int, exc: BaseException | None, now: float) -> None:
        self._now = now
        call = self._calls.pop(call_id, None)
        if call is None or call.asgi is None:
            return
        if isinstance(exc, ClientDisconnected) and call.gone_reason:
            # the stream ended first (client gone, gateway timeout, reset): the app only learnt
            # it at its next send/receive, which is the ASGI way, not an app failure
            log.debug(
                "app stopped on %s %s: %s",
                call.head.method,
                call.head.target,
                call.gone_reason,
            )
        elif exc is not None:
            log.error("app failed on %s %s", call.head.method, call.head.target, exc_info=exc)
        try:
            self._respond(call, call.asgi.app_returned(exc))
            if not call.done:
                self._cancel(call, "app returned without completing the response")
        except Exception as err:  # the crash barrier: this stream only
            self._contain_call(call, err, "the end of the app call")
        call.link.calls.pop(call.rid, None)

    # --- forward mode --------------------------------------------------------------------

    def _upstream_event(self, up: _Upstream, event: object, now: float) -> None:
        call = up.call
        if isinstance(event, UpstreamFailed):
            if (
                event.stale
                and call is not None
                and not call.body_upstream
                and not call.response_started
            ):
                # the service closed this idle connection: replay on a fresh one
                up.closing, up.call, call.upstream = True, None, None
                self._wakeups.add(up.cid)
                self._forward(call, reuse=False)
                return
            self._upstream_failed(up, event.reason)
            return
        if call is None:
            up.closing = True
            return
        if isinstance(event, UpstreamResponse):
            self._respond(call, [ResponseStart(event.head)])
        elif isinstance(event, UpstreamData):
            self._respond(call, [ResponseBody(event.data, True)])
        elif isinstance(event, UpstreamEnded):
            self._respond(call, [ResponseBody(b"", False)])
            self._calls.pop(call.cid, None)
            call.link.calls.pop(call.rid, None)
            up.call, call.upstream = None, None
            if self.stopping or not self._pool.release(up.conn):
                up.closing = True
            self._wakeups.add(up.cid)

    def _upstream_failed(self, up: _Upstream, reason: str) -> None:
        up.closing = True
        self._wakeups.add(up.cid)
        call = up.call
        up.call = None
        if call is None:
            return
        call.upstream = None
        request_id = _header(call.head, "x-request-id") or call.rid
        log.warning(
            "forwarding %s %s (request %s) failed: %s",
            call.head.method,
            call.head.target,
            request_id,
            reason,
        )
        if call.response_started:
            self._cancel(call, reason)
        else:
            # Internet clients read this page: the local service's address and the OS error
            # stay in the log above; the request id ties the two together.
            body = (
                f"Bad Gateway: no valid answer from the local service\nrequest id: {request_id}\n"
            )
            body = body.encode("utf-8", "replace")
            head = ResponseHead(
                502,
                "Bad Gateway",
                [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body)))],
            )
            self._respond(call, [ResponseStart(head), ResponseBody(body, False)])
            call.link.calls.pop(call.rid, None)
        self._calls.pop(call.cid, None)

    # --- timers: placeholder until the split lands (h13-gw/h13-rc) ---
    # The old 0.1 s tick, behind the deadline contract (anpx_core.contract.DriverCore), so the
    # drivers can sleep on next_deadline() today. h13-rc replaces this block with real deadlines.
    _placeholder_timer_ran: float | None = None

    def next_deadline(self) -> float | None:
        last = self._placeholder_timer_ran
        return 0.0 if last is None else last + TICK_INTERVAL

    def handle_timer(self, now: float) -> None:
        from .contract import Signal  # local: keeps this placeholder in one block

        self._placeholder_timer_ran = now
        self.tick(now)
        if self.stopping and self.in_flight == 0:
            self._wakeups.add(Signal.DRAINED)  # type: ignore[arg-type]
        if self.given_up:
            self._wakeups.add(Signal.GAVE_UP)  # type: ignore[arg-type]

    def set_wall_clock(self, now: float, wall: float) -> None:
        self.wall_offset = wall - now

    def pop_aborts(self) -> set[int]:
        return set()


def _header(head: RequestHead, name: str) -> str | None:
    for key, value in head.headers:
        if key == name:
            return value
    return None


def _client_from(head: RequestHead) -> tuple[str, int] | None:
    """The client as the gateway determined it: X-Real-IP (an anpx gateway always sets it),
    else the last X-Forwarded-For hop (the one a v1 gateway added)."""
    real = _header(head, "x-real-ip")
    if real:
        return (real, 0)
    xff = _header(head, "x-forwarded-for")
    if not xff:
        return None
    return (xff.rsplit(",", 1)[-1].strip(), 0)


def _server_from(head: RequestHead) -> tuple[str, int | None] | None:
    """The server as the client addressed it; StrictError for an X-Forwarded-Port that is
    not a port number (it is checked even when no host is known)."""
    port = _header(head, "x-forwarded-port")
    number = parse_port(port, "x-forwarded-port") if port is not None else None
    host = _header(head, "x-forwarded-host") or _header(head, "host")
    if not host:
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return (name, number)
