"""The HTTP stream kind: one request from the gateway, one response back.

:class:`HttpStreams` opens a call for each request head (refusing bad forwarded values,
answering 503 itself over ``max_concurrent_requests``), puts the response into the tunnel
(a head waits for its first body part, or for the next timer run), writes the access log
and resets streams. Who produces the response is an :class:`HttpBackend`: the in-process
ASGI app (:mod:`.asgi_calls`) or the local HTTP service (:mod:`.forward_calls`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..asgi import AsgiHttpCall, ResponseAborted, ResponseBody, ResponsePart, ResponseStart
from ..contract import Signal
from ..headers import Headers, get_header
from ..meta import RequestHead, ResponseHead
from ..strict import StrictError, parse_port, parse_scheme
from .context import ReceiverContext

if TYPE_CHECKING:
    from .forward_calls import Upstream
    from .links import GatewayLink

log = logging.getLogger("anpx.receiver")
access_log = logging.getLogger("anpx.access.receiver")

BUSY_BODY = b"receiver busy: too many requests in progress\n"


@dataclass(slots=True, eq=False)
class HttpCall:
    """One request being served: by the in-process app or by an upstream connection."""

    cid: int
    rid: str
    link: GatewayLink
    head: RequestHead
    started: float
    kind: HttpStreams
    asgi: AsgiHttpCall | None = None  # ASGI backend
    upstream: Upstream | None = None  # forward backend: the connection serving it
    body_upstream: int = 0  # forward backend: request body bytes handed to the upstream
    request_ended: bool = False  # forward backend: the request body is complete
    response_started: bool = False
    status: int = 0
    body_out: int = 0
    done: bool = False  # our response is complete or the stream is gone
    head_flush_due: bool = False
    # the response head and its meta, checked but not yet started on the stream: held until
    # its first body part (one frame for a whole response) or flush_heads()
    pending: tuple[ResponseHead, bytes] | None = None
    gone_reason: str = ""  # why the stream ended before the app did, if it did


class HttpBackend(Protocol):
    """What produces responses for the HTTP stream kind."""

    def start(
        self,
        call: HttpCall,
        server: tuple[str, int | None] | None,
        scheme: str,
        client: tuple[str, int] | None,
    ) -> None: ...
    def body(self, call: HttpCall, data: bytes) -> None: ...
    def end(self, call: HttpCall) -> None: ...
    def writable(self, call: HttpCall) -> None: ...  # the stream has credit again
    def gone(self, call: HttpCall) -> bool: ...  # the stream is over; True: keep it in flight
    def buffered(self, call: HttpCall) -> int: ...  # request body held for the consumer
    def stop(self) -> None: ...  # the receiver is closing


class HttpStreams:
    """The HTTP stream kind (see the module docstring)."""

    def __init__(self, ctx: ReceiverContext, backend: Callable[[HttpStreams], HttpBackend]) -> None:
        self.ctx = ctx
        self.calls: dict[int, HttpCall] = {}  # in flight, by call id
        # calls whose response head waits for a body part or the flush, by call id
        self.heads_due: dict[int, HttpCall] = {}
        self.heads_at = 0.0  # when the oldest head in _heads_due became due
        self.requests = 0
        self.rejected = 0  # requests answered 503 at max_concurrent_requests
        self.backend = backend(self)

    @property
    def in_flight(self) -> int:
        return len(self.calls)

    # --- the stream kind --------------------------------------------------------------------

    def claims(self, link: GatewayLink, head: RequestHead) -> bool:
        return True  # the default kind: every request the other kinds leave

    def open(self, link: GatewayLink, rid: str, head: RequestHead, now: float) -> None:
        self.requests += 1
        call = HttpCall(self.ctx.new_id(), rid, link, head, now, self)
        link.streams[rid] = call
        if len(self.calls) >= self.ctx.settings.max_concurrent_requests:
            # A gateway that does not limit what it sends us (a v1 one) must not make us
            # start unbounded work: answer 503 ourselves.
            self.rejected += 1
            busy = error_page(503, "Service Unavailable", BUSY_BODY, [("retry-after", "1")])
            self.respond(call, busy)
            link.streams.pop(rid, None)
            return
        self.calls[call.cid] = call
        fields = read_fields(head.headers)
        try:
            server = server_of(fields)
            scheme = fields.get("x-forwarded-proto") or "http"
            if scheme != "http" and scheme != "https":  # what the gateway sends: already so
                scheme = parse_scheme(scheme, "x-forwarded-proto")
        except StrictError as exc:
            # refused where it enters: the gateway sent a value no client of ours could have
            log.warning("refusing request %s from the gateway: %s", rid, exc)
            self.cancel(call, f"bad_meta: {exc}")
            return
        self.backend.start(call, server, scheme, client_of(fields))

    def message(
        self, link: GatewayLink, rid: str, head: RequestHead, body: bytes, now: float
    ) -> None:
        """A whole request in one event: what open(), data() (when ``body`` is not empty)
        and end() do for its three events."""
        self.open(link, rid, head, now)
        call = link.streams.get(rid)
        if call is None:  # refused in open(): its data and end would find no stream
            return
        assert isinstance(call, HttpCall)
        if body:
            self.backend.body(call, body)
            current: object = link.streams.get(rid)
            if current is not call:  # refused (cancelled) on its body: end finds no stream
                return
        self.backend.end(call)

    def data(self, stream: HttpCall, data: bytes, now: float) -> None:
        self.backend.body(stream, data)

    def end(self, stream: HttpCall, now: float) -> None:
        self.backend.end(stream)

    def reset(self, stream: HttpCall, reason: str) -> None:
        self.gone(stream, reason)

    def writable(self, stream: HttpCall) -> None:
        self.backend.writable(stream)

    def stop(self) -> None:
        self.backend.stop()

    def holding_body(self, stream: HttpCall, limit: int) -> bool:
        return self.backend.buffered(stream) >= limit

    def contain(self, stream: HttpCall, exc: BaseException, where: str) -> None:
        """Log ``exc`` once and reset the call's stream; its app learns at its next
        receive / send (http.disconnect / ClientDisconnected)."""
        call = stream
        log.error(
            "internal error in %s for %s %s; resetting its stream",
            where,
            call.head.method,
            call.head.target,
            exc_info=exc,
        )
        try:
            self.cancel(call, "internal error")
        except Exception:  # state beyond repair: forget the call all the same
            call.done = True
            call.link.streams.pop(call.rid, None)
            if call.asgi is None:
                self.calls.pop(call.cid, None)

    # --- the response -------------------------------------------------------------------

    def respond(self, call: HttpCall, parts: list[ResponsePart]) -> None:
        ep = call.link.ep
        if not parts or ep is None or ep.session is None or call.done:
            return
        session = ep.session
        for part in parts:
            if isinstance(part, ResponseBody):
                if call.head_flush_due:  # this part carries the head: nothing left to flush
                    call.head_flush_due = False
                    self.heads_due.pop(call.cid, None)
                call.body_out += len(part.data)
                pending = call.pending
                if pending is not None:
                    call.pending = None
                    if not part.more:  # the whole response is known: one call, one frame
                        session.send_message(call.rid, pending[0], part.data, pending[1])
                        self._complete(call)
                        continue
                    session.start(call.rid, *pending)
                session.send(call.rid, part.data)
                if part.more:
                    session.flush(call.rid)
                else:
                    session.end(call.rid)
                    self._complete(call)
            elif isinstance(part, ResponseStart):
                call.response_started = True
                call.status = part.head.status
                # checked now (a head too large fails here), started with its first body part
                call.pending = (part.head, session.check_head(call.rid, part.head))
                # Sent with the first body part, or by flush_heads(): the driver's next turn
                # (heads_pending) or the next timer run (due now: see next_deadline).
                call.head_flush_due = True
                if not self.heads_due:
                    self.heads_at = self.ctx.now
                    self.ctx.wakeups.add(Signal.TIMER)
                self.heads_due[call.cid] = call
            elif isinstance(part, ResponseAborted):
                self.cancel(call, part.reason)
        self.ctx.wake(call.link.cid)

    @property
    def heads_pending(self) -> bool:
        return bool(self.heads_due)

    def flush_heads(self) -> None:
        """Send every response head still waiting for a body part."""
        due, self.heads_due = self.heads_due, {}
        for call in due.values():
            if call.head_flush_due and call.link.session is not None and not call.done:
                call.head_flush_due = False
                try:
                    if call.pending is not None:
                        call.link.session.start(call.rid, *call.pending)
                        call.pending = None
                    call.link.session.flush(call.rid)
                except Exception as exc:  # the crash barrier: this stream only
                    self.contain(call, exc, "flush_heads")
                self.ctx.wake(call.link.cid)

    def _complete(self, call: HttpCall) -> None:
        call.done = True
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %s %d %dB %.1fms",
                get_header(call.head.headers, "x-request-id") or call.rid,
                call.head.method,
                call.head.target,
                call.status,
                call.body_out,
                (self.ctx.now - call.started) * 1000,
            )

    def finish(self, call: HttpCall) -> None:
        """The call is over on our side too: forget it."""
        self.calls.pop(call.cid, None)
        call.link.streams.pop(call.rid, None)

    def cancel(self, call: HttpCall, reason: str) -> None:
        if not call.done:
            call.link.cancel_stream(call.rid, reason)
        self.gone(call, reason)

    def gone(self, call: HttpCall, reason: str) -> None:
        """The stream is over from the tunnel's point of view."""
        call.done = True
        call.gone_reason = reason
        call.link.streams.pop(call.rid, None)
        if not self.backend.gone(call):
            self.calls.pop(call.cid, None)


def error_page(
    status: int, phrase: str, body: bytes, extra: list[tuple[str, str]] | None = None
) -> list[ResponsePart]:
    """A whole plain-text response, as the receiver itself answers."""
    headers = [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body)))]
    head = ResponseHead(status, phrase, headers + (extra or []))
    return [ResponseStart(head), ResponseBody(body, False)]


# The request fields the receiver reads itself (the gateway sets them).
_READ = frozenset(
    {
        "host",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-forwarded-for",
        "x-real-ip",
    }
)


def read_fields(headers: Headers) -> dict[str, str]:
    """The first value of each field the receiver reads itself, by lower-case name
    (one pass over the head, rather than one :func:`get_header` scan per field)."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name not in _READ:
            name = name.lower()
            if name not in _READ:
                continue
        if name not in found:
            found[name] = value
    return found


def server_from(head: RequestHead) -> tuple[str, int | None] | None:
    """The server as the client addressed it; StrictError for an X-Forwarded-Port that is
    not a port number (it is checked even when no host is known)."""
    return server_of(read_fields(head.headers))


def server_of(fields: dict[str, str]) -> tuple[str, int | None] | None:
    """:func:`server_from` for the fields :func:`read_fields` found."""
    port = fields.get("x-forwarded-port")
    number = parse_port(port, "x-forwarded-port") if port is not None else None
    host = fields.get("x-forwarded-host") or fields.get("host")
    if not host:
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return (name, number)


def client_from(head: RequestHead) -> tuple[str, int] | None:
    """The client as the gateway determined it: X-Real-IP (an anpx gateway always sets it),
    else the last X-Forwarded-For hop (the one a v1 gateway added)."""
    return client_of(read_fields(head.headers))


def client_of(fields: dict[str, str]) -> tuple[str, int] | None:
    """:func:`client_from` for the fields :func:`read_fields` found."""
    real = fields.get("x-real-ip")
    if real:
        return (real, 0)
    xff = fields.get("x-forwarded-for")
    if not xff:
        return None
    return (xff.rsplit(",", 1)[-1].strip(), 0)
