"""The gateway's HTTP exchange: one :class:`ClientConn` per client connection, carrying
each request to a receiver as one tunnel stream and its response back.

Owns what an exchange needs: the front (HTTP/1.1 parsing, pipelining, header and
keep-alive timeouts), the response-head ``timeout``, ``send_timeout`` for a client that
stops reading, ``max_output_bytes``, the per-address connection and stream caps, request
ids, X-Real-IP, the gateway's own error answers and the access log. The coordinator
(:mod:`anpx_core.gateway`) calls the connection methods; the tunnel carrying a request
calls :meth:`ClientConn.stream_event` for its response.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..errors import ProtocolError
from ..headers import get_header
from ..http1 import (
    ClientGone,
    FrontEvent,
    HttpFront,
    RequestData,
    RequestEnded,
    RequestFailed,
    RequestStarted,
)
from ..meta import RequestHead, ResponseHead
from ..ratelimit import address_key
from ..routing import DEFAULT_ROUTE
from ..tcp import TCP_METHOD
from ..tunnel import (
    StreamData,
    StreamEnd,
    StreamHead,
    StreamMessage,
    StreamReset,
    StreamWritable,
)

if TYPE_CHECKING:
    from .core import GatewayCore
    from .tunnels import TunnelConn

log = logging.getLogger("anpx.gateway")
access_log = logging.getLogger("anpx.access.gateway")

REQUEST_ID_HEADER = "x-request-id"
WRITE_CHUNK = 256 * 1024  # the most take_output hands out for a client at once
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=@")

OwnStreamEvent = StreamHead | StreamData | StreamEnd | StreamReset | StreamWritable


class HttpExchanges:
    """The HTTP unit's shared state: connection counts and per-address accounting."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.clients = 0  # open client connections
        self.admitted = 0  # client connections within the caps (max_connections counts these)
        self.conns_by_address: dict[str, int] = {}
        self.streams_by_address: dict[str, int] = {}

    def open(
        self,
        cid: int,
        now: float,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        scheme: str,
    ) -> ClientConn:
        settings = self.core.settings
        proxied = client is not None and self.core.proxies.trusted(client[0])
        front = HttpFront(
            settings.front,
            now,
            client=client,
            server=server,
            scheme=scheme,
            trust_forwarded=proxied,
        )
        address = client[0] if client else "-"
        conn = ClientConn(self, cid, front, address, behind_proxy=proxied)
        self.clients += 1
        # Over a limit, the connection's first request is answered 503 and it closes: a clear
        # answer costs less than a client retrying a silently dropped socket. A refused
        # connection takes no place, so one address over its share cannot fill the gateway.
        # Behind a trusted proxy the address is the proxy's: its connections are not capped.
        key = None if proxied or client is None else address_key(client[0])
        per_address = settings.max_connections_per_address
        if key is not None and per_address and self.conns_by_address.get(key, 0) >= per_address:
            conn.over_limit = "too many connections from your address"
        elif self.admitted >= settings.max_connections:
            conn.over_limit = "too many connections"
        else:
            self.admitted += 1
            if key is not None:
                conn.conn_key = key
                _count(self.conns_by_address, key)
        return conn


class ClientConn:
    """One client connection and the exchange under way on it (at most one at a time)."""

    __slots__ = (
        "backlog",
        "behind_proxy",
        "body_out",
        "cid",
        "conn_key",
        "core",
        "deadline",
        "front",
        "head",
        "http",
        "on_wire",
        "on_wire_since",
        "over_limit",
        "peer",
        "proxy",
        "queued_since",
        "request_id",
        "response_started",
        "rid",
        "route",
        "started",
        "status",
        "stream_key",
        "taken",
        "tunnel",
    )

    def __init__(
        self, http: HttpExchanges, cid: int, front: HttpFront, peer: str, *, behind_proxy: bool
    ) -> None:
        self.http = http
        self.core: GatewayCore = http.core  # (read on every event: an attribute, not a property)
        self.cid = cid
        self.front = front
        self.peer = peer  # the client's address (behind a trusted proxy: from X-Forwarded-For)
        self.behind_proxy = behind_proxy  # the socket's peer is a trusted proxy
        self.proxy = peer  # the socket's address when behind_proxy
        self.rid: str | None = None  # the current exchange's stream
        self.tunnel: TunnelConn | None = None
        self.head: RequestHead | None = None
        self.started = 0.0
        self.deadline: float | None = None  # response head due by then
        self.response_started = False
        self.status = 0
        self.body_out = 0
        self.backlog = 0  # response body handed to the front, not yet written by the driver
        self.taken = 0
        self.on_wire = 0  # bytes take_output handed to the driver, not yet written
        self.on_wire_since = 0.0  # when those bytes were handed out
        self.queued_since: float | None = None  # output waiting, none of it handed out yet
        self.over_limit = ""  # why the connection is refused (answered 503 at its first request)
        self.conn_key: str | None = None  # the address counted against max_connections_per_address
        self.stream_key: str | None = None  # the address counted for the current stream
        self.request_id = ""  # X-Request-ID: the client's, or the stream's request_id
        self.route = "-"

    # --- the coordinator's calls -----------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        self.update_hold()
        for event in self.front.receive_data(data, now):
            self._event(event, now)
        self._flush_upload()

    def resume(self, now: float) -> None:
        """The response ended: surface the next (pipelined) request, unless held."""
        if self.update_hold():
            return  # served once the client has read enough (see written)
        for event in self.front.tick(now):
            self._event(event, now)
        self._flush_upload()

    def wants_write(self) -> bool:
        """Has the front something for the driver's writer (bytes, or the close)?"""
        front = self.front
        return bool(front.output_pending) or front.closed

    def take_output(self) -> tuple[bytes, bool]:
        # In pieces, so that send_timeout measures a client's reading, not one large write.
        data = self.front.data_to_send(WRITE_CHUNK)
        if data:
            # Body bytes come out in order after their head: counting the first ones of
            # the piece as body may return credit a head's worth early, never leaves it stuck.
            self.taken = min(self.backlog, len(data))
            if not self.on_wire:
                self.on_wire_since = self.core.now
            self.on_wire += len(data)
            self.queued_since = None
        return data, self.front.closed

    def written(self, now: float) -> None:
        self.on_wire = 0
        self.queued_since = None
        if self.taken:
            self.backlog -= self.taken
            delivered, self.taken = self.taken, 0
            self._consumed(delivered)
            self._update_congestion()
        if self.front.holding and not self.update_hold():
            self.core.defer(self)  # the client read: serve what it pipelined

    def can_read(self) -> bool:
        if not self.front.wants_read:
            return False
        if self.rid is not None and self.tunnel is not None:
            return self.tunnel.end.may_produce(self.cid, self.rid)
        return True

    def closed(self, now: float) -> None:
        http = self.http
        http.clients -= 1
        if not self.over_limit:
            http.admitted -= 1
        if self.conn_key is not None:
            _uncount(http.conns_by_address, self.conn_key)
            self.conn_key = None
        self._abandon("client connection closed")

    def deadline_at(self, now: float) -> float | None:
        """The earliest of the front's timeouts, the response head's and send_timeout."""
        when = self.front.next_deadline()
        if self.deadline is not None and (when is None or self.deadline < when):
            when = self.deadline
        limit = self.core.settings.send_timeout
        if limit > 0:
            # Output queued and not yet taken counts from now: take_output (after which the
            # driver re-arms nothing) only ever moves this deadline later.
            if self.on_wire:
                since: float | None = self.on_wire_since
            elif self.front.output_pending:
                if self.queued_since is None:
                    self.queued_since = now
                since = self.queued_since
            else:
                since = None
            if since is not None and (when is None or since + limit < when):
                when = since + limit
        return when

    def on_timer(self, now: float) -> None:
        if self._stalled(now):
            return
        self.update_hold()
        events = self.front.tick(now)
        if events or self.front.closed:  # an idle keep-alive connection closes silently
            self.core.wake(self.cid)
        for event in events:
            self._event(event, now)
        self._flush_upload()
        if self.deadline is not None and now >= self.deadline:
            self.core.stats.timeouts += 1
            self._finish(504, cancel="gateway timeout", error="receiver did not answer in time")

    # --- the stream's events (from the tunnel) ---------------------------------------------

    def stream_event(self, tunnel: TunnelConn, event: OwnStreamEvent) -> None:
        core = self.core
        kind = type(event)  # the stream event classes are final: dispatch on the class
        if kind is StreamData:
            assert isinstance(event, StreamData)
            queued = self.front.send_data(event.data)
            self.body_out += queued
            self.backlog += queued
            if queued < len(event.data):
                # Dropped by the front (HEAD, 204, 304): no write will ever report these
                # bytes, so they count as consumed now, or the stream's credit never returns.
                self._consumed(len(event.data) - queued)
            core.stats.bytes_out += queued
            self._update_congestion()
            core.wake(self.cid)
        elif kind is StreamHead:
            assert isinstance(event, StreamHead)
            self.front.send_response(self._response_head(event.head))
            core.wake(self.cid)
        elif kind is StreamEnd:
            self.front.end_response()
            core.defer(self)
            # the stream is over unless the upload still runs: the response is complete, stop it
            self._finish(self.status, cancel="response complete")
        elif kind is StreamWritable:
            core.wake(self.cid)
        else:
            assert isinstance(event, StreamReset)
            # The reason may describe the receiver's inside (an app's exception, a local
            # service's address): it goes to the log, the client gets a generic reason.
            log.info(
                "request %s reset by receiver %s: %s",
                self.request_id or event.request_id,
                tunnel.identity or tunnel.peer,
                event.reason,
            )
            self.tunnel_failed("the receiver failed the request")

    def stream_message(self, tunnel: TunnelConn, event: StreamMessage) -> None:
        """A whole response in one event: what its StreamHead, StreamData and StreamEnd do,
        with the head, body and end written to the front together."""
        core = self.core
        head = self._response_head(event.head)
        body = event.body
        queued = self.front.send_message(head, body)
        if body:
            self.body_out += queued
            self.backlog += queued
            if queued < len(body):  # dropped by the front (HEAD, 204, 304): see stream_event
                self._consumed(len(body) - queued)
            core.stats.bytes_out += queued
            self._update_congestion()
        core.wake(self.cid)
        core.defer(self)
        self._finish(self.status, cancel="response complete")

    def _response_head(self, head: RequestHead | ResponseHead) -> ResponseHead:
        """The response begins: the head to send the client (with our X-Request-ID)."""
        assert isinstance(head, ResponseHead)
        self.deadline = None
        self.response_started = True
        self.status = head.status
        if self.request_id and get_header(head.headers, REQUEST_ID_HEADER) is None:
            head = ResponseHead(
                head.status, head.reason, [*head.headers, (REQUEST_ID_HEADER, self.request_id)]
            )
        return head

    def tunnel_failed(self, why: str) -> None:
        """The receiver side failed the exchange: 502 before the response began, else a cut."""
        self.core.stats.resets += 1
        if self.response_started:
            self._finish(self.status, abort=True)
        else:
            self._finish(502, error=why)

    # --- the exchange ----------------------------------------------------------------------

    def _event(self, event: FrontEvent, now: float) -> None:
        if isinstance(event, RequestStarted):
            self._start_request(event, now)
        elif isinstance(event, RequestData):
            if self.rid is not None and self.tunnel is not None and self.tunnel.session is not None:
                self.tunnel.session.send(self.rid, event.data)
                self.core.stats.bytes_in += len(event.data)
        elif isinstance(event, RequestEnded):
            if self.rid is not None and self.tunnel is not None and self.tunnel.session is not None:
                self.tunnel.session.end(self.rid)
                self.core.wake(self.tunnel.cid)
        elif isinstance(event, RequestFailed):
            if self.head is None:  # refused before a request began (413, 431): count it too
                self.core.stats.record(self.route, event.status, 0.0)
                access_log.info(
                    "- %s - - %d 0B 0.0ms route=%s (%s)",
                    self.peer,
                    event.status,
                    self.route,
                    event.reason,
                )
            self._finish(event.status, cancel=f"client request failed: {event.reason}")
        elif isinstance(event, ClientGone):
            self._abandon("client went away")

    def _start_request(self, event: RequestStarted, now: float) -> None:
        core, settings = self.core, self.core.settings
        self.head = event.head
        self.started = now
        self.response_started = False
        self.status = 0
        self.body_out = 0
        self.route = "-"
        headers = event.head.headers
        # One pass over the front's fields (names lower case) for what the exchange reads.
        host = client_id = forwarded_for = None
        real_ip = False
        for name, value in headers:
            if name == "host":
                if host is None:
                    host = value
            elif name == REQUEST_ID_HEADER:
                if client_id is None:
                    client_id = value
            elif name == "x-forwarded-for":
                if forwarded_for is None:
                    forwarded_for = value
            elif name == "x-real-ip":
                real_ip = True
        if self.behind_proxy:
            self.peer = core.proxies.client(self.proxy, forwarded_for)
        self.request_id = _valid_request_id(client_id) or ""
        # A client's X-Request-ID stays only when sane (ours replaces it); X-Real-IP is always
        # the client as the gateway determined it, never what a client claims.
        if real_ip or (client_id is not None and not self.request_id):
            headers[:] = [
                (n, v)
                for n, v in headers
                if n != "x-real-ip" and (self.request_id or n != REQUEST_ID_HEADER)
            ]
        headers.append(("x-real-ip", self.peer))
        core.stats.requests += 1
        if self.over_limit:
            core.stats.rejected_connections += 1
            self._reply(503, self.over_limit, [("retry-after", "1"), ("connection", "close")])
            return
        if core.draining:
            self._reply(
                503, "gateway is shutting down", [("retry-after", "5"), ("connection", "close")]
            )
            return
        if settings.rate_limit is not None:
            wait = settings.rate_limit(self.peer, now)
            if wait is not None:
                core.stats.rate_limited += 1
                retry = str(max(1, math.ceil(wait)))
                self._reply(429, "too many requests from your address", [("retry-after", retry)])
                return
        if event.head.method == TCP_METHOD:  # only the gateway opens TCP streams
            self._reply(405, "method not allowed")
            return
        path, query, _ = event.head.target.partition("?")
        by_token = core.tcp.by_token(event.head.target) if query else None  # (?token=)
        route = core.routes.match(host, path)
        if by_token is not None:
            route = by_token.routes[0] if by_token.routes else DEFAULT_ROUTE
        if route is None:
            if not core.tunnels.open and not core.routes.routes:
                self._reply(503, "no receiver connected", [("retry-after", "5")])
            else:
                self._reply(404, f"no route for {host or '(no host)'}{path}")
            return
        self.route = str(route)
        if event.upgrade is not None and core.websockets.start(self, event, route, now):
            return  # a WebSocket: answered, or this connection is now a WsClientConn
        key = address_key(self.peer)
        per_address = settings.max_streams_per_address
        if per_address and self.http.streams_by_address.get(key, 0) >= per_address:
            core.stats.rate_limited += 1
            self._reply(
                429, "too many requests in progress from your address", [("retry-after", "1")]
            )
            return
        tunnel = by_token or core.tunnels.pick(route)
        if tunnel is None:
            if core.tunnels.serving(route):
                self._reply(503, f"all receivers of route {route} are busy", [("retry-after", "1")])
            else:
                self._reply(503, f"no receiver connected for route {route}", [("retry-after", "5")])
            return
        assert tunnel.session is not None
        rid = core.settings.new_request_id()
        self.rid, self.tunnel = rid, tunnel
        tunnel.streams[rid] = self
        self.stream_key = key
        _count(self.http.streams_by_address, key)
        self.deadline = now + settings.timeout if settings.timeout > 0 else None
        if not self.request_id:  # (a client's invalid one was removed above)
            self.request_id = rid
            headers.append((REQUEST_ID_HEADER, rid))
        try:
            if event.content_length == 0:  # no body: the whole request goes now (the front's
                tunnel.session.send_message(rid, event.head, b"")  # RequestEnded follows)
            else:
                tunnel.session.start(rid, event.head)
        except ProtocolError:
            tunnel.streams.pop(rid, None)
            self.rid = self.tunnel = None
            self._release_stream_slot()
            self._reply(431, "request head too large for the tunnel")
            return
        if event.expect_continue:
            self.front.send_continue()
        core.wake(tunnel.cid)

    def refuse(self, status: int, text: str, headers: list[tuple[str, str]]) -> None:
        """Answer the current request with an error (another unit's refusal)."""
        self._reply(status, text, headers)

    def _reply(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the current request from the gateway itself."""
        if not self.request_id:
            self.request_id = self.core.settings.new_request_id()
        text = _error_text(text, self.request_id)
        self.front.send_error(
            status, text, [*(headers or []), (REQUEST_ID_HEADER, self.request_id)]
        )
        self.body_out = len(text.rstrip("\n").encode()) + 1  # the front's text/plain body
        self.core.defer(self)
        self.status = status
        self._log_access(status)
        self.core.wake(self.cid)

    def _finish(
        self,
        status: int,
        *,
        cancel: str | None = None,
        error: str | None = None,
        abort: bool = False,
    ) -> None:
        """End the current exchange: cancel the stream if it is still open (``cancel`` is
        the reason the peer gets), answer ``status`` with ``error`` as the text, or cut a
        response that has started (``abort``)."""
        core = self.core
        tunnel, rid = self.tunnel, self.rid
        self._release_stream_slot()
        if tunnel is not None and rid is not None:
            tunnel.streams.pop(rid, None)
            tunnel.congested.discard(self.cid)
            tunnel.end.unpause(self.cid)
            session = tunnel.session
            # (a stream already over both ways, as after a complete exchange, has nothing to
            # cancel: the tunnel is not woken for nothing)
            if cancel is not None and session is not None and session.has_stream(rid):
                session.cancel(rid, cancel)
                core.wake(tunnel.cid)
        self.rid = self.tunnel = None
        self.deadline = None
        self.backlog = self.taken = 0
        if error is not None or abort:
            # once a response started, it cuts it
            text = _error_text(error, self.request_id) if error is not None else ""
            ids = [(REQUEST_ID_HEADER, self.request_id)] if self.request_id else []
            self.front.send_error(status, text, ids)
            core.defer(self)
            self.status = status
        if self.head is not None:
            self._log_access(self.status or status)
        core.wake(self.cid)

    def _release_stream_slot(self) -> None:
        if self.stream_key is not None:
            _uncount(self.http.streams_by_address, self.stream_key)
            self.stream_key = None

    def _abandon(self, why: str) -> None:
        if self.rid is not None:
            self.core.stats.client_aborts += 1
            self._finish(499, cancel=why)

    def _stalled(self, now: float) -> bool:
        """Reset a connection whose client has taken none of its output for send_timeout."""
        limit = self.core.settings.send_timeout
        if not (limit > 0 and self.on_wire and now - self.on_wire_since >= limit):
            return False
        log.info("client %s read nothing for %.0fs: connection reset", self.peer, limit)
        self._abandon("client stopped reading")
        self.front.abort()
        self.on_wire = 0  # the socket is reset: nothing is being written any more
        self.core.abort(self.cid)
        return True

    def update_hold(self) -> bool:
        """Hold further pipelined requests while the client's unwritten output is over
        ``max_output_bytes``; True while held."""
        held = self.on_wire + self.front.output_pending > self.core.settings.max_output_bytes
        self.front.hold_requests(held)
        return held

    def _flush_upload(self) -> None:
        """Send the upload bytes this call brought now, not when a frame fills up."""
        if self.rid is not None and self.tunnel is not None and self.tunnel.session is not None:
            self.tunnel.session.flush(self.rid)
            self.core.wake(self.tunnel.cid)

    def _consumed(self, nbytes: int) -> None:
        """``nbytes`` of the current response left the gateway (written, or dropped by the
        front for HEAD, 204 and 304): the receiver may send that much more."""
        tunnel = self.tunnel
        if tunnel is not None and tunnel.session is not None and self.rid is not None:
            tunnel.session.consumed(self.rid, nbytes)
            tunnel.session.flush_credits()
            self.core.wake(tunnel.cid)

    def _update_congestion(self) -> None:
        """v1 peer (no flow control): stop reading its tunnel while this client's backlog
        is over ``high_water``."""
        tunnel = self.tunnel
        if tunnel is None or tunnel.session is None or tunnel.session.flow:
            return
        if self.backlog >= self.core.settings.high_water:
            tunnel.congested.add(self.cid)
        elif self.cid in tunnel.congested:
            tunnel.congested.discard(self.cid)
            self.core.wake(tunnel.cid)

    def _log_access(self, status: int) -> None:
        head = self.head
        if head is None:
            return
        seconds = self.core.now - self.started
        self.core.stats.record(self.route, status, seconds)
        access_log.info(
            "%s %s %s %s %d %dB %.1fms route=%s",
            self.request_id or self.rid or "-",
            self.peer,
            head.method,
            head.target,
            status,
            self.body_out,
            seconds * 1000,
            self.route,
        )
        self.head = None


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


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


def _valid_request_id(value: str | None) -> str | None:
    """A client's X-Request-ID, kept only when short and plain (it reaches logs)."""
    if value and len(value) <= 200 and set(value) <= _REQUEST_ID_OK:
        return value
    return None
