"""The gateway's public HTTP/1.1 server side: one :class:`HttpFront` per client connection.

Sans-IO, h11 reading the requests, :mod:`anpx_core.http1_out` writing the responses (what
h11 would write, without its per-event cost): the driver feeds received bytes to
:meth:`HttpFront.receive_data`, sends what :meth:`HttpFront.data_to_send` returns, and
calls :meth:`HttpFront.tick` when :meth:`HttpFront.next_deadline` is due. Time is always
an argument.

Reading. The front finds the end of each request head itself and hands h11 exactly
that head, so the head size limit is exact (h11 alone lets a head of any size through
when it arrives in one piece) and bytes after the current request (pipelining) stay
in the front's buffer until their turn. A plain head (no body, no upgrade, nothing h11
might refuse) is read by :mod:`anpx_core.http1_head` instead, as h11 would read it.
Bodies are passed to h11 as they arrive and surface as :class:`RequestData` at once,
never buffered whole. Each request/response cycle that used h11 is followed by a fresh
``h11.Connection``: it starts clean even when h11 had read past a chunked body.

Pipelining. The next request is surfaced only after :meth:`HttpFront.end_response`.
``end_response`` cannot return events, so if the next request is already buffered,
:meth:`HttpFront.next_deadline` becomes due at once and the following ``tick(now)``
(or ``receive_data``) surfaces it. That tick also stamps the time the response ended,
from which the header and keep-alive deadlines of the next request count. While the
engine holds requests (:meth:`HttpFront.hold_requests`: the client has not read enough
of what was sent), no further request is surfaced. Bytes of requests not yet surfaced
are read on (so an EOF or a reset is noticed while a response is under way) until
``max_header_bytes`` of them are held, then reading pauses.

Headers. Names are lower case, values the field bytes read as latin-1. Going in, the
hop-by-hop fields (Connection and the names it lists -- except Content-Length and Host,
which carry the message's framing and authority --, Keep-Alive, Transfer-Encoding, TE,
Trailer, Upgrade, Proxy-*) and Expect (100-continue is answered here) are removed;
X-Forwarded-For gets the client's address appended to any earlier values, and
X-Forwarded-Proto, -Host (the Host field) and -Port (the server's port) replace whatever
the client sent. Going out, the same hop-by-hop fields are removed and http1_out frames
the body as h11 would: the app's Content-Length if it gave one, else chunked
(close-delimited for HTTP/1.0).

Timeouts. A complete request head must arrive within ``header_timeout`` of the
connection opening or the previous response ending, or the client gets a 408 (slowloris).
A connection on which nothing of a next request arrived is closed silently after
``keepalive_timeout`` (``header_timeout`` on a fresh connection).

Errors. Every error the front detects closes the connection after a short text/plain
response (or, once a response has started, by aborting: the client sees a truncated
response), and is reported as :class:`RequestFailed`. The engine's own errors go
through :meth:`HttpFront.send_error`, which keeps the connection alive when the request
was read completely.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import h11

from .headers import HOP_BY_HOP, Headers, strip_hop_by_hop, wants_close
from .http1_head import plain_request
from .http1_out import ResponseRefused, body_end, body_piece, response_head
from .meta import RequestHead, ResponseHead
from .strict import StrictError, check_host, parse_port, parse_scheme, parse_uint

__all__ = [
    "HOP_BY_HOP",
    "ClientGone",
    "FrontEvent",
    "FrontLimits",
    "HttpFront",
    "RequestData",
    "RequestEnded",
    "RequestFailed",
    "RequestStarted",
    "strip_hop_by_hop",
]


@dataclass(frozen=True, slots=True)
class FrontLimits:
    #: Request line + header fields + the blank line after them; more -> 431.
    max_header_bytes: int = 64 * 1024
    #: Request body; a larger Content-Length is refused before any body is read -> 413.
    max_body_bytes: int = 100 * 1024 * 1024
    #: From connection open / end of the previous response to a complete head -> 408.
    header_timeout: float = 10.0
    #: Silence between requests on a kept-alive connection -> closed without a word.
    keepalive_timeout: float = 5.0


class FrontEvent:
    """What :class:`HttpFront` reports about the client connection it parses.

    Each layer has one such base class: dispatch with ``isinstance`` or ``match``.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RequestStarted(FrontEvent):
    """A request head; ``head.headers`` is what goes to the receiver (see module doc)."""

    head: RequestHead
    expect_continue: bool  # the client waits for send_continue() before sending the body
    content_length: int | None  # None for a chunked body; 0 when there is no body
    #: The Upgrade field's value (lower case) when Connection lists "upgrade", else None.
    #: Both fields are stripped from ``head.headers``; see switch_protocols().
    upgrade: str | None = None


@dataclass(frozen=True, slots=True)
class RequestData(FrontEvent):
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnded(FrontEvent):
    pass


@dataclass(frozen=True, slots=True)
class RequestFailed(FrontEvent):
    """The front refused the request and already queued its error response (or aborted).

    The engine cancels the current request's stream, if there is one: this is also
    emitted for requests that never got a RequestStarted (malformed or oversized heads,
    a Content-Length over the limit, a header timeout), for the engine's logs.
    """

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ClientGone(FrontEvent):
    """EOF while a request or its response was unfinished; the front is closed."""


# The end of a head, as h11 finds it (bare LF line ends are accepted too).
_BLANK_LINE = re.compile(rb"\n\r?\n")
# A request-line starts with a method, a token; anything else (a TLS ClientHello: 0x16)
# is refused at once instead of waiting for a blank line that never comes.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_FORWARDED = frozenset({"x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"})

# Where the request side of the current cycle is.
_HEAD = "head"  # waiting for a request head
_BODY = "body"  # RequestStarted is out, the body is being read
_WAIT = "wait"  # RequestEnded is out, the response is not finished yet


#: The largest Content-Length read (19 digits fit in 63 bits; max_body_bytes is far below).
MAX_CONTENT_LENGTH = 2**63 - 1


def _upgrade(raw: Headers) -> str | None:
    """The Upgrade value when Connection lists "upgrade" (RFC 9110 section 7.8)."""
    tokens = {
        token.strip().lower()
        for name, value in raw
        if name == "connection"
        for token in value.split(",")
    }
    if "upgrade" not in tokens:
        return None
    values = [value.strip().lower() for name, value in raw if name == "upgrade"]
    return ", ".join(values) if values else None


def _check_forwarded(name: str, value: str) -> str:
    """An X-Forwarded-Proto/-Host/-Port value from a trusted proxy, or StrictError: the
    receiver and the app rely on these, so a bad one is refused here with a 400."""
    if name == "x-forwarded-proto":
        return parse_scheme(value.strip(), "X-Forwarded-Proto")
    if name == "x-forwarded-port":
        return str(parse_port(value.strip(), "X-Forwarded-Port"))
    return check_host(value.strip(), "X-Forwarded-Host")


# RFC 9112 section 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ); h11 does not check.
_REASON = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _reason(status: int, reason: str) -> bytes:
    """The reason phrase to send: the receiver's if it is valid (it carries no meaning,
    so an invalid one is replaced, never a reason to fail the response)."""
    try:
        raw = reason.encode("latin-1")
    except UnicodeEncodeError:
        raw = b""
    if not raw or not _REASON.fullmatch(raw):
        raw = _phrase(status).encode("ascii")
    return raw


class HttpFront:
    """One client connection, one request/response cycle at a time (see module doc)."""

    def __init__(
        self,
        limits: FrontLimits,
        now: float,
        *,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        scheme: str = "http",
        trust_forwarded: bool = False,
    ) -> None:
        self._limits = limits
        # The peer is a trusted reverse proxy: keep its X-Forwarded-Proto/-Host/-Port.
        self._trust_forwarded = trust_forwarded
        self._client = client
        self._server = server
        self._scheme = scheme
        self._conn = self._new_conn()
        self._conn_used = False  # h11 was given this cycle's request (not a plain one)
        self._inbuf = bytearray()  # received, not yet given to h11
        self._out = bytearray()
        self._now = now  # the latest time we were given
        self._phase = _HEAD
        # When the wait for the next head began; None right after end_response, until
        # the next tick/receive_data tells the time.
        self._idle_since: float | None = now
        self._first = True  # no request answered yet on this connection
        self._seen = False  # some byte of the coming head has arrived
        self._scan = 0  # how far _inbuf was searched for the end of the head
        self._active = False  # a RequestStarted is out and its response is not ended
        self._response_started = False
        self._suppress_body = False  # HEAD, 204, 304: the engine's body data is dropped
        self._head_request = False
        # The request as h11 read it, for the response's framing (see http1_out).
        self._method: bytes | None = None
        self._version: bytes | None = None
        self._keep_alive = True  # the request and (once sent) the response keep it open
        self._framing = 0  # response body bytes due, or CHUNKED / CLOSE_DELIMITED
        self._cl_left: int | None = None  # body bytes still due (None: chunked)
        self._body_bytes = 0
        self._paused = False
        self._held = False  # hold_requests(True): surface no further request for now
        self._closed = False
        self._switched = False  # switch_protocols(): the connection is no longer HTTP
        self._host_ok: str | None = None  # the last Host value check_host() accepted

    def _new_conn(self) -> h11.Connection:
        # The front hands h11 whole heads only; the bound still covers chunk-size lines
        # and trailers, the other things h11 buffers whole.
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes)

    # -- properties -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Close the socket once data_to_send() is empty."""
        return self._closed

    @property
    def switched(self) -> bool:
        """switch_protocols() handed the connection over: the front reads nothing more."""
        return self._switched

    @property
    def wants_read(self) -> bool:
        if self._closed or self._paused or self._switched:
            return False
        if self._phase == _WAIT or (
            self._phase == _HEAD and (self._idle_since is None or self._held)
        ):
            # Requests wait their turn: read on (to notice EOF or a reset), but hold at
            # most a head's worth of what comes after the current request.
            return len(self._inbuf) < self._limits.max_header_bytes
        return True

    @property
    def output_pending(self) -> int:
        """Bytes queued for the client that data_to_send() has not handed out yet."""
        return len(self._out)

    @property
    def holding(self) -> bool:
        return self._held

    def hold_requests(self, held: bool) -> None:
        """While held, no further (pipelined) request is surfaced and no head deadline
        runs: the engine waits for the client to read what it was sent."""
        if held == self._held:
            return
        self._held = held
        if not held and self._phase == _HEAD:
            self._idle_since = None  # the next tick stamps the time and surfaces what waits

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """The bytes to write now: all of them, or the first ``max_bytes``."""
        if max_bytes is not None and len(self._out) > max_bytes:
            out = bytes(self._out[:max_bytes])
            del self._out[:max_bytes]
            return out
        out = bytes(self._out)
        self._out.clear()
        return out

    def abort(self) -> None:
        """Give up on the connection: nothing more is sent, the driver closes it."""
        self._closed = True
        self._out.clear()

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[FrontEvent]:
        """Bytes from the client; ``b""`` is EOF (or a reset)."""
        self._now = now
        events: list[FrontEvent] = []
        if self._closed or self._switched:
            return events
        if not data:
            if self._active:
                events.append(ClientGone())
            self._closed = True
            return events
        if self._phase == _HEAD:
            self._seen = True
            if self._idle_since is None and not self._held:
                self._idle_since = now
        self._inbuf += data
        self._pump(events)
        self._check_timeouts(now, events)
        return events

    def next_deadline(self) -> float | None:
        if self._closed or self._switched or self._phase != _HEAD or self._held:
            return None
        if self._idle_since is None:
            return self._now  # due now: stamp the end of the response, surface what waits
        if self._seen or self._first:
            return self._idle_since + self._limits.header_timeout
        return self._idle_since + self._limits.keepalive_timeout

    def tick(self, now: float) -> list[FrontEvent]:
        self._now = now
        events: list[FrontEvent] = []
        if self._closed:
            return events
        if self._phase == _HEAD and self._idle_since is None and not self._held:
            self._idle_since = now
            self._pump(events)
        self._check_timeouts(now, events)
        return events

    def _check_timeouts(self, now: float, events: list[FrontEvent]) -> None:
        if self._closed or self._phase != _HEAD or self._idle_since is None or self._held:
            return
        if self._seen:
            if now >= self._idle_since + self._limits.header_timeout:
                self._fail(408, "request head not complete in time", events)
        elif now >= self._idle_since + (
            self._limits.header_timeout if self._first else self._limits.keepalive_timeout
        ):
            self._closed = True  # idle: nothing to answer

    def _pump(self, events: list[FrontEvent]) -> None:
        while not self._closed:
            if self._phase == _HEAD:
                if self._idle_since is None or self._held or not self._read_head(events):
                    return
            elif self._phase == _BODY:
                if not self._read_body(events):
                    return
            else:
                return

    def _read_head(self, events: list[FrontEvent]) -> bool:
        buf = self._inbuf
        if not buf:
            return False
        # RFC 9112 section 2.2: ignore empty lines before a request-line.
        if buf[:1] == b"\r" or buf[:1] == b"\n":
            start = 0
            while True:
                if buf.startswith(b"\r\n", start):
                    start += 2
                elif buf.startswith(b"\n", start):
                    start += 1
                else:
                    break
            if start:
                del buf[:start]
                self._scan = 0
        if not buf or buf == b"\r":
            return False
        if buf[0] not in _TCHAR:
            self._fail(400, "malformed request line", events)
            return False
        limit = self._limits.max_header_bytes
        match = _BLANK_LINE.search(buf, max(0, self._scan - 2))
        if match is None:
            self._scan = len(buf)
            if len(buf) >= limit:  # the head, still incomplete, cannot fit any more
                self._fail(431, f"request head over {limit} bytes", events)
            return False
        end = match.end()
        if end > limit:
            self._fail(431, f"request head over {limit} bytes", events)
            return False
        if end == len(buf):  # the usual case: nothing after the head yet
            head = bytes(buf)
            buf.clear()
        else:
            head = bytes(buf[:end])
            del buf[:end]
        self._scan = 0
        plain = plain_request(head)
        if plain is not None:  # read as h11 would, and like h11 it ends there: no body
            if self._start_request(*plain, False, events):
                self._phase = _WAIT
                events.append(RequestEnded())
            return False
        self._conn_used = True
        self._conn.receive_data(head)
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, f"malformed request head: {exc}", events)
            return False
        if type(event) is not h11.Request:  # cannot happen with a whole head; be safe
            self._fail(400, "malformed request head", events)
            return False
        waiting = self._conn.client_is_waiting_for_100_continue
        return self._start_request(
            event.method, event.target, event.http_version, event.headers, waiting, events
        )

    def _start_request(
        self,
        method_b: bytes,
        target: bytes,
        version: bytes,
        fields: Sequence[tuple[bytes, bytes]],
        waiting: bool,
        events: list[FrontEvent],
    ) -> bool:
        """The request h11 read (or would read: http1_head); ``waiting``: the client
        waits for 100 Continue."""
        method = method_b.decode("ascii")
        self._head_request = method == "HEAD"
        self._method = method_b
        self._version = version
        raw = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in fields]
        names = {name for name, _ in raw}
        # h11's rule: a request keeps the connection unless it is older than 1.1 or asks to close
        self._keep_alive = version >= b"1.1" and not (
            "connection" in names
            and any(
                name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]
                for name, value in fields
            )
        )
        chunked = "transfer-encoding" in names
        length_values = (
            [value for name, value in raw if name == "content-length"]
            if "content-length" in names
            else []
        )
        upgrade = _upgrade(raw) if "upgrade" in names and "connection" in names else None
        if method == "CONNECT":
            self._fail(501, "CONNECT is not supported", events)
            return False
        if chunked and length_values:
            # RFC 9112 section 6.1: both framings at once is a request-smuggling vector.
            self._fail(400, "both Transfer-Encoding and Content-Length", events)
            return False
        try:
            # h11 checked the Content-Length values agree and are digits; bound them here
            length = (
                None
                if chunked
                else parse_uint(length_values[0], MAX_CONTENT_LENGTH, "Content-Length")
                if length_values
                else 0
            )
            headers = self._forward_headers(raw, names)
        except StrictError as exc:
            # the reason quotes only the client's own value: safe to tell it
            self._fail(400, f"bad request header: {exc}", events, f"Bad Request: {exc}")
            return False
        if length is not None and length > self._limits.max_body_bytes:
            self._fail(413, f"Content-Length {length} over {self._limits.max_body_bytes}", events)
            return False
        self._phase = _BODY
        self._active = True
        self._response_started = False
        self._suppress_body = self._head_request
        self._cl_left = length
        self._body_bytes = 0
        expect = waiting and length != 0
        head = RequestHead(method, target.decode("latin-1"), headers)
        events.append(RequestStarted(head, expect, length, upgrade))
        return True

    def _forward_headers(self, raw: Headers, names: set[str]) -> Headers:
        """``raw``'s fields (names lower case, all of them in ``names``) to forward."""
        headers: Headers = []
        xff: list[str] = []
        host = None
        kept: dict[str, str] = {}
        # Fields named by Connection go only when there is one, and it is hop-by-hop itself.
        fields = raw if names.isdisjoint(HOP_BY_HOP) else strip_hop_by_hop(raw)
        for name, value in fields:
            if name.startswith("proxy-"):
                continue  # hop-by-hop (strip_hop_by_hop's rule)
            if name == "x-forwarded-for":
                xff.append(value)
            elif name in _FORWARDED:
                if self._trust_forwarded and name not in kept:
                    kept[name] = _check_forwarded(name, value)
            elif name == "expect":
                continue  # Expect: 100-continue is answered here
            else:
                if name == "host":
                    if host is not None:  # RFC 9112 section 3.2: exactly one Host
                        raise StrictError("more than one Host header")
                    if value != self._host_ok:  # a kept-alive client sends the same one
                        self._host_ok = check_host(value)
                    host = value
                headers.append((name, value))
        if self._client is not None:
            xff.append(self._client[0])
        if xff:
            headers.append(("x-forwarded-for", ", ".join(xff)))
        headers.append(("x-forwarded-proto", kept.get("x-forwarded-proto", self._scheme)))
        if "x-forwarded-host" in kept or host is not None:
            headers.append(("x-forwarded-host", kept.get("x-forwarded-host", host or "")))
        if "x-forwarded-port" in kept or self._server is not None:
            port = kept.get("x-forwarded-port") or str(self._server[1])  # type: ignore[index]
            headers.append(("x-forwarded-port", port))
        return headers

    def _read_body(self, events: list[FrontEvent]) -> bool:
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, f"malformed request body: {exc}", events)
            return False
        if event is h11.NEED_DATA:
            buf = self._inbuf
            # With a Content-Length, give h11 no byte past the body: the rest is the
            # next request, and it stays here until its turn.
            n = len(buf) if self._cl_left is None else min(len(buf), self._cl_left)
            if not n:
                return False
            self._conn.receive_data(bytes(buf[:n]))
            del buf[:n]
            return True
        if type(event) is h11.Data:
            self._body_bytes += len(event.data)
            if self._body_bytes > self._limits.max_body_bytes:
                self._fail(413, f"request body over {self._limits.max_body_bytes} bytes", events)
                return False
            if self._cl_left is not None:
                self._cl_left -= len(event.data)
            events.append(RequestData(bytes(event.data)))
            return True
        if type(event) is h11.EndOfMessage:
            self._phase = _WAIT
            if self._cl_left is None:
                # h11 may have read past the chunked body into the next request.
                leftover = self._conn.trailing_data[0]
                if leftover:
                    self._inbuf[:0] = leftover
            events.append(RequestEnded())
            return False
        return False

    def _fail(
        self, status: int, reason: str, events: list[FrontEvent], text: str | None = None
    ) -> None:
        """``reason`` is for the log; ``text`` (default: the status phrase) for the client."""
        events.append(RequestFailed(status, reason))
        if not self._response_started:
            self._queue_error(status, text or _phrase(status) or "Error", [], close=True)
        self._closed = True

    # -- output -----------------------------------------------------------------------

    def _send(self, event: h11.Event) -> bool:
        try:
            data = self._conn.send(event)
        except h11.LocalProtocolError:
            # E.g. more or less body than the receiver's Content-Length promised: the
            # response cannot be completed correctly, so abort it.
            self._closed = True
            return False
        if data:
            self._out += data
        return True

    def _require_request(self) -> None:
        if not self._active:
            raise RuntimeError("no request is waiting for a response")

    def send_response(self, head: ResponseHead) -> None:
        """Start the response; hop-by-hop headers are stripped, the body framed here."""
        if self._closed:
            return
        self._require_request()
        if self._response_started:
            raise RuntimeError("response already started")
        status = head.status
        headers = strip_hop_by_hop(head.headers)
        if status == 204:  # RFC 9110 section 8.6: never a Content-Length on a 204
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        if self._phase == _BODY:
            # The rest of the request body will not be read: the connection ends here.
            headers.append(("connection", "close"))
        try:
            fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
            self._emit_head(status, _reason(status, head.reason), fields)
        except (ResponseRefused, UnicodeEncodeError):
            self._queue_error(502, "Bad Gateway: invalid response head", [], close=True)
            self._closed = True

    def _emit_head(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        data, self._framing, self._keep_alive = response_head(
            status,
            reason,
            fields,
            method=self._method,
            version=self._version,
            keep_alive=self._keep_alive,
        )
        self._out += data
        self._response_started = True
        self._suppress_body = self._head_request or status in (204, 304)

    def _write_body(self, data: bytes) -> bool:
        try:
            out, self._framing = body_piece(self._framing, data)
        except ResponseRefused:
            # More body than the receiver's Content-Length promised: the response cannot
            # be completed correctly, so abort it.
            self._closed = True
            return False
        self._out += out
        return True

    def _write_end(self) -> bool:
        try:
            self._out += body_end(self._framing)
        except ResponseRefused:  # less body than promised: abort
            self._closed = True
            return False
        return True

    def _queue_error(self, status: int, text: str, headers: Headers, *, close: bool) -> None:
        body = (text.rstrip("\n") + "\n").encode("utf-8")
        fields = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            *((n.encode("latin-1"), v.encode("latin-1")) for n, v in headers),
        ]
        if close:
            fields.append((b"connection", b"close"))
        self._emit_head(status, _phrase(status).encode(), fields)
        if not self._suppress_body:
            self._write_body(body)
        self._write_end()

    def send_data(self, data: bytes) -> int:
        """A piece of the response body; returns how many of its bytes will reach the
        client. The rest is dropped here (HEAD, 204, 304, a closed connection): the
        engine must count it as consumed, as no write will ever report it."""
        if self._closed or not data:
            return 0
        self._require_request()
        if not self._response_started:
            raise RuntimeError("send_response() first")
        if self._suppress_body:
            return 0
        return len(data) if self._write_body(data) else 0

    def send_message(self, head: ResponseHead, body: bytes) -> int:
        """A whole response: :meth:`send_response`, :meth:`send_data` (when ``body`` is not
        empty) and :meth:`end_response` in one call; returns what send_data would."""
        self.send_response(head)
        if self._closed:  # closed before, or the head was refused (a 502 is queued)
            return 0
        queued = 0
        if body and not self._suppress_body:
            if len(body) == self._framing:  # the usual: exactly the Content-Length
                self._out += body
                self._framing = 0
                self._finish_cycle()
                return len(body)
            if not self._write_body(body):
                return 0
            queued = len(body)
        if self._write_end():
            self._finish_cycle()
        return queued

    def end_response(self) -> None:
        if self._closed:
            return
        self._require_request()
        if not self._response_started:
            raise RuntimeError("send_response() first")
        if self._write_end():
            self._finish_cycle()

    def _finish_cycle(self) -> None:
        """The response is complete: close, or get ready for the next request."""
        if self._closed:
            return
        self._active = False
        if self._phase != _WAIT or not self._keep_alive:
            self._closed = True  # Connection: close, HTTP/1.0, or an unread request body
            return
        if self._conn_used:
            self._conn = self._new_conn()
            self._conn_used = False
        self._phase = _HEAD
        self._response_started = self._suppress_body = self._head_request = False
        self._method = self._version = None
        self._idle_since = None  # stamped by the next tick / receive_data
        self._first = False
        self._seen = bool(self._inbuf)
        self._scan = 0

    def send_error(self, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """A complete short text/plain response, or an abort once a response started.

        The connection stays open if the request was read completely.
        """
        if self._closed:
            return
        self._require_request()
        if self._response_started:
            self._closed = True  # the client sees a truncated response
            return
        headers = list(headers)
        # "Connection: close" from the engine (too many connections, draining) is a wish to
        # end the connection; stripping hop-by-hop fields must not drop it.
        close = self._phase == _BODY or wants_close(headers)
        self._queue_error(status, text, strip_hop_by_hop(headers), close=close)
        self._finish_cycle()

    def switch_protocols(self, headers: Iterable[tuple[str, str]]) -> bytes:
        """Answer the current request (an Upgrade, read completely) with ``101`` and the
        given fields, and hand the connection over: returns the bytes the client sent after
        the request. Then the front reads nothing more; data_to_send() still returns what
        is queued, the 101 included."""
        self._require_request()
        if self._response_started or self._phase != _WAIT or self._closed:
            raise RuntimeError("only a completely read request can switch protocols")
        fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        response = h11.InformationalResponse(
            status_code=101, reason=b"Switching Protocols", headers=fields
        )
        if not self._send(response):
            raise RuntimeError("the request did not ask for an upgrade")
        self._response_started = True
        self._switched = True
        leftover = bytes(self._inbuf) + self._conn.trailing_data[0]
        self._inbuf.clear()
        return leftover

    def send_continue(self) -> None:
        """Send 100 Continue if the client waits for it; otherwise do nothing."""
        if self._closed or self._response_started or not self._active:
            return
        if self._conn.client_is_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, reason=b"Continue", headers=[]))
