"""HTTP forward back end: relay a tunnel stream to a local HTTP/1.1 service, on h11.

A :class:`ForwardConnection` is one client connection to the service, carrying one request
at a time and reused while both sides keep it alive; :class:`ForwardPool` keeps a few idle
ones. The driver owns the socket: it writes :meth:`ForwardConnection.data_to_send` and feeds
what it reads to :meth:`ForwardConnection.receive_data` (``b""`` at EOF).

Request framing: a head with Content-Length (or ``Transfer-Encoding: chunked``) is sent at
once; a head with neither is held until we know whether a body follows, then sent chunked
(a body arrived) or without a body (``content-length: 0`` for POST/PUT/PATCH, which some
servers insist on). h11 does the actual encoding and enforces Content-Length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import h11

from .headers import strip_hop_by_hop
from .meta import RequestHead, ResponseHead
from .strict import StrictError, wire_bytes

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_NOT_VCHAR = re.compile(rb"[^\x21-\x7e]")

DEFAULT_MAX_HEADER_BYTES = 64 * 1024


def _encode(text: str) -> bytes:
    try:
        return wire_bytes(text)
    except StrictError as exc:
        raise ForwardError(f"cannot forward this request: {exc}") from None


class ForwardError(Exception):
    """A request h11 cannot send (invalid head, body beyond Content-Length) or misuse."""


class ForwardEvent:
    """What a :class:`ForwardConnection` reports about the local service.

    Each layer has one such base class: dispatch with ``isinstance`` or ``match``.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class UpstreamResponse(ForwardEvent):
    head: ResponseHead


@dataclass(frozen=True, slots=True)
class UpstreamData(ForwardEvent):
    data: bytes


@dataclass(frozen=True, slots=True)
class UpstreamEnded(ForwardEvent):
    pass


@dataclass(frozen=True, slots=True)
class UpstreamFailed(ForwardEvent):
    """The service's answer is unusable. ``stale``: a reused connection was closed before a
    single response byte arrived (the service dropped it while idle), so the request may be
    retried on a fresh connection if it can be replayed."""

    reason: str
    stale: bool = False


class ForwardConnection:
    """One keep-alive HTTP/1.1 client connection to the local service."""

    def __init__(
        self, host: str, port: int, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    ) -> None:
        self.host = host
        self.port = port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        #: free for the driver: the socket / stream this connection runs on
        self.handle: Any = None
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self._out = bytearray()
        self._held: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None = None
        self._requests = 0
        self._active = False  # a request's response is still expected
        self._heard = False  # any byte of the current response arrived
        self._got_head = False
        self._eof = False
        self._failed = False

    # --- request ----------------------------------------------------------------------------

    def start_request(self, head: RequestHead) -> None:
        if self._failed or self._eof or self._active:
            raise ForwardError("the connection cannot take a request now")
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is not h11.IDLE or conn.their_state is not h11.IDLE:
            raise ForwardError(f"the connection is not idle ({conn.states})")
        kept = strip_hop_by_hop(head.headers, keep=frozenset({"transfer-encoding"}))
        headers = [(_encode(name.lower()), _encode(value)) for name, value in kept]
        names = {name for name, _ in headers}
        if b"host" not in names:
            headers.insert(0, (b"host", self.authority.encode("ascii")))
        if b"transfer-encoding" in names:  # a sender must not send both (RFC 9112 6.2)
            headers = [(n, v) for n, v in headers if n != b"content-length"]
        # h11 accepts only visible ASCII in a target; escape anything else as bytes.
        target = _NOT_VCHAR.sub(lambda m: b"%%%02X" % m[0][0], _encode(head.target))
        method = _encode(head.method)
        self._requests += 1
        self._active = True
        self._heard = self._got_head = False
        if names & {b"content-length", b"transfer-encoding"}:
            self._send_head(method, target, headers)
        else:
            self._request(method, target, headers)  # validate now, send once framing is known
            self._held = (method, target, headers)

    def send_body(self, data: bytes) -> None:
        if not data or self._failed:
            return
        if self._held is not None:
            method, target, headers = self._held
            self._send_head(method, target, [*headers, (b"transfer-encoding", b"chunked")])
        self._send(h11.Data(data=data))

    def end_body(self) -> None:
        if self._failed:
            return
        if self._held is not None:
            method, target, headers = self._held
            if method.upper().decode("latin-1") in _BODY_METHODS:
                headers = [*headers, (b"content-length", b"0")]
            self._send_head(method, target, headers)
        self._send(h11.EndOfMessage())

    def _request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> h11.Request:
        try:
            return h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError as exc:
            self._active = False
            raise ForwardError(f"cannot forward this request: {exc}") from None

    def _send_head(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._held = None
        self._send(self._request(method, target, headers))

    def _send(self, event: Any) -> None:
        try:
            self._out += self._conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            self._failed = True  # h11 is in its ERROR state: the driver must close
            raise ForwardError(f"cannot forward this request: {exc}") from None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- response ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ForwardEvent]:
        if self._failed or self._eof:
            return []
        if data:
            self._heard = True
        else:
            self._eof = True
        self._conn.receive_data(data)
        if not self._active:
            # Bytes or EOF while no request is out: the connection is simply finished.
            self._failed = bool(data)
            return []
        events: list[ForwardEvent] = []
        while self._active:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                events.append(self._fail_on(exc))
                break
            if event is h11.NEED_DATA:
                if self._eof:  # h11 normally raises first; never wait for bytes after EOF
                    events.append(self._fail("upstream closed the connection mid-response"))
                break
            if event is h11.PAUSED:  # only a protocol switch (CONNECT / Upgrade) gets here
                events.append(self._fail("upstream switched protocols, which is not relayed"))
                break
            if isinstance(event, h11.Response):
                self._got_head = True
                events.append(UpstreamResponse(self._head(event)))
            elif isinstance(event, h11.Data):
                events.append(UpstreamData(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                self._active = False
                events.append(UpstreamEnded())
            elif isinstance(event, h11.ConnectionClosed):
                events.append(self._fail("upstream closed the connection before responding"))
            # InformationalResponse (100 Continue, 103): the gateway front handles its own.
        return events

    @staticmethod
    def _head(event: h11.Response) -> ResponseHead:
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers
        ]
        return ResponseHead(
            event.status_code, event.reason.decode("latin-1"), strip_hop_by_hop(headers)
        )

    def _fail_on(self, exc: h11.RemoteProtocolError) -> UpstreamFailed:
        if not self._eof:
            return self._fail(f"malformed response from upstream: {exc}")
        when = "mid-response" if self._got_head else "before responding"
        return self._fail(f"upstream closed the connection {when} ({exc})")

    def _fail(self, reason: str) -> UpstreamFailed:
        stale = self._eof and not self._heard and self._requests > 1
        self._failed = True
        self._active = False
        return UpstreamFailed(reason, stale)

    @property
    def reusable(self) -> bool:
        """The last exchange is complete and both sides keep the connection alive."""
        conn = self._conn
        return (
            not (self._failed or self._eof or self._active)
            and self._held is None
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        )


class ForwardPool:
    """Idle keep-alive connections to one service, newest first (the least likely stale)."""

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self._idle: list[ForwardConnection] = []

    def acquire(self) -> ForwardConnection | None:
        """An idle connection, or None: the driver then opens a new one."""
        return self._idle.pop() if self._idle else None

    def release(self, conn: ForwardConnection) -> bool:
        """Offer ``conn`` back after its exchange; False means the driver must close it."""
        if conn.reusable and len(self._idle) < self.max_idle and conn not in self._idle:
            self._idle.append(conn)
            return True
        return False

    def discard(self, conn: ForwardConnection) -> None:
        """Forget an idle connection the service closed (the driver saw EOF on it)."""
        if conn in self._idle:
            self._idle.remove(conn)

    def close_all(self) -> list[ForwardConnection]:
        """Empty the pool, returning the connections whose sockets the driver must close."""
        idle, self._idle = self._idle, []
        return idle

    def __len__(self) -> int:
        return len(self._idle)
