"""The receiver's coordinator: the connection table, the driver contract, stream dispatch.

:class:`ReceiverCore` owns no protocol logic of its own. The driver's calls for a socket
go to the connection that owns its id (a :class:`.links.GatewayLink` or a
:class:`.forward_calls.Upstream`); each tunnel stream goes to the first registered stream
kind that claims its head (HTTP today, :mod:`.http`); timers run from one deadline heap.
"""

from __future__ import annotations

import logging
from typing import Any

from ..asgi import ClientDisconnected
from ..barrier import CrashBarrier, guarded, guarded_close
from ..contract import Signal, WakeKey
from ..meta import RequestHead
from ..tunnel import (
    StreamData,
    StreamEnd,
    StreamEvent,
    StreamHead,
    StreamMessage,
    StreamReset,
    StreamWritable,
    TunnelBroken,
    split_message,
)
from .asgi_calls import AsgiCalls, Message
from .context import ReceiverContext, Scope, StreamKind, Timed
from .forward_calls import ForwardCalls
from .http import HttpBackend, HttpStreams
from .links import GatewayLink
from .settings import ConnectRequest, GatewayAddress, ReceiverSettings
from .tcp import TcpStreams
from .websockets import WsStreams

log = logging.getLogger("anpx.receiver")

RETRY_DUE_TIMER = 0.01  # a timer left due by its own run waits this long, not a hot loop


class ReceiverCore(CrashBarrier):
    """Tunnels to gateways, calls into the app (see the package docstring for the contract)."""

    _barrier_log = log

    def __init__(self, settings: ReceiverSettings | None = None) -> None:
        self.settings = settings or ReceiverSettings()
        ctx = self._ctx = ReceiverContext(self.settings)
        self._doomed = ctx.doomed
        self._wakeups = ctx.wakeups
        self._conns = ctx.conns
        self._links = [
            GatewayLink(GatewayAddress.parse(u), ctx, self) for u in self.settings.gateway_urls
        ]
        self._asgi: AsgiCalls | None = None
        self._http = HttpStreams(ctx, self._http_backend)
        self._calls = self._http.calls
        # stream kinds in the order they are asked to claim a head; HTTP takes the rest
        self._kinds: list[StreamKind] = [self._http]
        if self.settings.tcp_services:
            self.add_stream_kind(TcpStreams(ctx))
        self._drained = False
        self.add_stream_kind(WsStreams(ctx, lambda: self.lifespan_state))

    def add_stream_kind(self, kind: StreamKind) -> None:
        """Register a stream kind (a unit built on this core's context); it is asked to
        claim each new stream's head before the kinds registered earlier, HTTP last."""
        self._kinds.insert(0, kind)

    def _http_backend(self, http: HttpStreams) -> HttpBackend:
        if self.settings.forward is not None:
            return ForwardCalls(self._ctx, http)
        self._asgi = AsgiCalls(self._ctx, http)
        return self._asgi

    # --- state the drivers and tests read ---------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._ctx.stopping

    @property
    def given_up(self) -> bool:
        return self._ctx.given_up

    @property
    def last_error(self) -> str:
        return self._ctx.last_error

    @property
    def wall_offset(self) -> float:
        return self._ctx.wall_offset

    @property
    def requests(self) -> int:
        return self._http.requests

    @property
    def rejected(self) -> int:
        return self._http.rejected

    @property
    def connected_links(self) -> int:
        return sum(1 for link in self._links if link.is_open)

    @property
    def in_flight(self) -> int:
        return sum(kind.in_flight for kind in self._kinds)

    @property
    def lifespan_state(self) -> dict[str, Any] | None:
        return None if self._asgi is None else self._asgi.lifespan_state

    @lifespan_state.setter
    def lifespan_state(self, state: dict[str, Any] | None) -> None:
        if self._asgi is not None:
            self._asgi.lifespan_state = state

    # --- driver contract: queues and wake-ups -----------------------------------------------

    def pop_connects(self) -> list[ConnectRequest]:
        out, self._ctx.connects = self._ctx.connects, []
        return out

    def pop_app_calls(self) -> list[tuple[int, Scope]]:
        out, self._ctx.app_calls = self._ctx.app_calls, []
        return out

    def pop_wakeups(self) -> set[WakeKey]:
        ctx = self._ctx
        if not ctx.stopping or self.in_flight:
            self._drained = False
        elif not self._drained:
            self._drained = True
            ctx.wakeups.add(Signal.DRAINED)
        out = set(ctx.wakeups)
        ctx.wakeups.clear()  # the same set object: the barrier holds it too
        return out

    def pop_aborts(self) -> set[int]:
        out, self._ctx.aborts = self._ctx.aborts, set()  # TCP streams' resets, crashes
        return out

    def abort(self, cid: int) -> None:
        self._ctx.abort(cid)

    # --- driver contract: timers ------------------------------------------------------------

    def next_deadline(self) -> float | None:
        when = self._ctx.timers.next()
        http = self._http
        if http.heads_due and (when is None or http.heads_at < when):
            return http.heads_at  # a response head waits: due at once (not in the heap, which
            # a head carried by its body, the usual case, would only churn)
        return when

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``: reconnects, WebSocket pings and timeouts, heads."""
        self._ctx.now = now
        if self._http.heads_due and self._http.heads_at <= now:
            try:
                self._http.flush_heads()
            except Exception as exc:  # the crash barrier: the other timers still run
                log.error("internal error sending response heads", exc_info=exc)
        timers = self._ctx.timers
        for owner in timers.pop_due(now):
            try:
                owner.on_timer(now)
            except Exception as exc:  # the crash barrier: this owner only
                self._timer_failed(owner, exc)
            again = timers.get(owner)
            if again is not None and again <= now:  # a bug: never a hot loop in the driver
                log.error("timer of %r still due after it ran; retrying in 10 ms", owner)
                timers.set(owner, now + RETRY_DUE_TIMER)

    def _timer_failed(self, owner: Timed, exc: BaseException) -> None:
        if isinstance(owner, GatewayLink):
            if owner.cid is not None:
                self._contain(owner.cid, exc, "a timer")
                return
            log.error("internal error dialling %s", owner.address.host_header, exc_info=exc)
            owner.rearm()  # a later retry may go better
        else:
            log.error("internal error running a timer", exc_info=exc)

    def set_wall_clock(self, now: float, wall: float) -> None:
        """``wall`` (Unix seconds) at driver time ``now``: keeps auth timestamps current."""
        self._ctx.wall_offset = wall - now

    # --- driver contract: sockets -----------------------------------------------------------

    @guarded()
    def connected(self, cid: int, now: float) -> None:
        self._ctx.now = now
        conn = self._conns.get(cid)
        if conn is not None:
            conn.connected(now)
        self._ctx.wake(cid)

    @guarded_close  # no socket: whatever happens, the attempt is forgotten
    def connect_failed(self, cid: int, now: float, reason: str) -> None:
        self._ctx.now = now
        conn = self._conns.pop(cid, None)
        if conn is not None:
            conn.connect_failed(now, reason)

    @guarded()
    def receive(self, cid: int, data: bytes, now: float) -> None:
        self._ctx.now = now
        conn = self._conns.get(cid)
        if conn is None:
            return
        self._wakeups.add(cid)
        conn.receive(data, now)

    def lost(self, cid: int, now: float, reason: str = "") -> None:
        """The socket failed; ``reason`` (e.g. a TLS alert) ends up in the tunnel's log line."""
        conn = self._conns.get(cid)
        if conn is not None and cid not in self._doomed:
            conn.note_lost(reason)
        self.receive(cid, b"", now)

    @guarded((b"", True))
    def take_output(self, cid: int) -> tuple[bytes, bool]:
        conn = self._conns.get(cid)
        return (b"", True) if conn is None else conn.take_output()

    @guarded()
    def written(self, cid: int, now: float) -> None:
        self._ctx.now = now
        conn = self._conns.get(cid)
        if conn is not None:
            conn.written(now)

    @guarded(False)
    def can_read(self, cid: int) -> bool:
        conn = self._conns.get(cid)
        return conn is not None and conn.can_read()

    @guarded_close
    def closed(self, cid: int, now: float) -> None:
        self._ctx.now = now
        conn = self._conns.pop(cid, None)
        if conn is not None:
            conn.closed(now)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, now: float, wall: float | None = None) -> None:
        """Begin connecting to every gateway. ``wall``: Unix time now, for auth timestamps."""
        self._ctx.now = now
        if wall is not None:
            self.set_wall_clock(now, wall)
        for link in self._links:
            if link.state == "idle":
                link.dial()

    def begin_drain(self) -> None:
        """Tell the gateways to send no new requests; in-flight ones finish."""
        self._ctx.stopping = True
        for link in self._links:
            link.send_drain()
            link.rearm()  # no more reconnects

    def close(self) -> None:
        """Close every tunnel (after draining)."""
        self._ctx.stopping = True
        for kind in self._kinds:
            kind.stop()  # e.g. WebSockets close with 1001 before their tunnel does
        for link in self._links:
            link.close()

    # --- ASGI (the app's receive / send) ----------------------------------------------------

    def asgi_receive(self, call_id: int) -> Message | None:
        """The app's next message; None: wait for the wake-up ``call_id``."""
        handler = self._ctx.app_handlers.get(call_id)
        if handler is not None:
            return handler.receive(call_id)
        if self._asgi is None:
            return {"type": "http.disconnect"}
        return self._asgi.receive(call_id)

    def asgi_send(self, call_id: int, message: Message, now: float) -> None:
        """Hand one app message to the tunnel; raises AsgiError / ClientDisconnected into the app."""
        self._ctx.now = now
        handler = self._ctx.app_handlers.get(call_id)
        if handler is not None:
            handler.send(call_id, message)
            return
        if self._asgi is None:
            raise ClientDisconnected("the request is over")
        self._asgi.send(call_id, message)

    def asgi_writable(self, call_id: int) -> bool:
        """False: wait for the wake-up ``call_id`` before the app sends more."""
        handler = self._ctx.app_handlers.get(call_id)
        if handler is not None:
            return handler.writable_now(call_id)
        return True if self._asgi is None else self._asgi.writable_now(call_id)

    def app_finished(self, call_id: int, exc: BaseException | None, now: float) -> None:
        self._ctx.now = now
        handler = self._ctx.app_handlers.get(call_id)
        if handler is not None:
            handler.finished(call_id, exc)
            return
        if self._asgi is not None:
            self._asgi.finished(call_id, exc)

    @property
    def heads_pending(self) -> bool:
        """A response head waits for its first body part. It goes out at the next timer run
        (its deadline is "now"); drivers may also call :meth:`flush_heads` after one turn of
        their loop, so an app that sends its body right away still gets a single frame."""
        return bool(self._http.heads_due)

    def flush_heads(self) -> None:
        """Send every response head still waiting for a body part."""
        self._http.flush_heads()

    # --- LinkOwner: what the gateway links ask of us ----------------------------------------

    def stream_event(self, link: GatewayLink, event: StreamEvent, now: float) -> None:
        """The crash barrier for one stream: an unexpected exception resets that stream
        (the gateway answers its client 502), not the tunnel and its other streams."""
        try:
            self._dispatch(link, event, now)
        except Exception as exc:
            rid = getattr(event, "request_id", None)
            stream = link.streams.get(rid) if rid is not None else None
            if stream is not None:
                stream.kind.contain(stream, exc, f"stream {rid}")
            elif rid is not None and link.session is not None:
                log.error("internal error on stream %s; resetting it", rid, exc_info=exc)
                link.cancel_stream(rid, "internal error")
            else:
                assert link.cid is not None
                self._contain(link.cid, exc, "a tunnel event")

    def _dispatch(self, link: GatewayLink, event: StreamEvent, now: float) -> None:
        if type(event) is StreamMessage:  # the usual request: a whole one in one frame
            head = event.head
            assert isinstance(head, RequestHead)
            for kind in self._kinds:
                if kind.claims(link, head):
                    message = getattr(kind, "message", None)
                    if message is not None:
                        message(link, event.request_id, head, event.body, now)
                        return
                    break
            # A kind without message(): the three events, each as if it came alone (and
            # with its own crash barrier).
            for part in split_message(event):
                self.stream_event(link, part, now)
            return
        if isinstance(event, StreamHead):
            head = event.head
            assert isinstance(head, RequestHead)
            for kind in self._kinds:
                if kind.claims(link, head):
                    kind.open(link, event.request_id, head, now)
                    return
            raise RuntimeError("no stream kind claims the request")  # HTTP claims every one
        rid = getattr(event, "request_id", None)
        if rid is None:
            if isinstance(event, TunnelBroken):
                log.warning("gateway sent unframeable data: %s", event.reason)
                link.fail(1002, "bad ANPX frame")
            return
        stream = link.streams.get(rid)
        if stream is None:
            return
        kind = stream.kind
        cls = type(event)
        if cls is StreamEnd or cls is StreamData:  # the usual ones: no isinstance chain
            if cls is StreamEnd:
                kind.end(stream, now)
            else:
                kind.data(stream, event.data, now)  # type: ignore[attr-defined]
        elif isinstance(event, StreamData):
            kind.data(stream, event.data, now)
        elif isinstance(event, StreamEnd):
            kind.end(stream, now)
        elif isinstance(event, StreamReset):
            kind.reset(stream, event.reason)
        elif isinstance(event, StreamWritable):
            kind.writable(stream)

    def link_lost(self, link: GatewayLink) -> None:
        for stream in list(link.streams.values()):
            stream.kind.reset(stream, "tunnel lost")

    def holding_body(self, link: GatewayLink) -> bool:
        """v1 gateway (no flow control): stop reading the tunnel while a request body
        waits for its consumer (the app or the local service) to take it."""
        session = link.session
        if session is None or session.flow:
            return False
        limit = self.settings.max_buffered_body
        return any(s.kind.holding_body(s, limit) for s in link.streams.values())

    def learned(self, origin: GatewayLink, ports: list[int]) -> None:
        """``origin``'s gateway names ``ports`` as its workers' tunnels: hold one to each
        (same host, scheme and path), forget those it learned before and no longer names."""
        base = origin.address
        wanted = {
            (base.host.lower(), p, base.path, base.tls): GatewayAddress(
                base.host, p, base.path, base.tls
            )
            for p in ports
        }
        for link in [link for link in self._links if link.origin is origin]:
            if link.key not in wanted and not link.retired:
                log.info("forgetting %s: its gateway no longer names it", link.address.host_header)
                link.retire()
        known = {link.key for link in self._links if not link.retired}
        learned = sum(1 for link in self._links if link.origin is not None and not link.retired)
        for key, address in wanted.items():
            if key in known or self._ctx.stopping:
                continue
            if learned >= self.settings.max_learned_endpoints:
                log.warning(
                    "not following %s: already %d learned endpoints (max_learned_endpoints)",
                    address.host_header,
                    learned,
                )
                break
            link = GatewayLink(address, self._ctx, self, origin=origin)
            self._links.append(link)
            learned += 1
            log.info(
                "%s names another worker: connecting to %s", base.host_header, address.host_header
            )
            link.dial()

    def link_retired(self, link: GatewayLink) -> None:
        if link in self._links:
            self._links.remove(link)

    def link_gave_up(self) -> None:
        if all(link.retry_at is None and link.state == "idle" for link in self._links):
            self._ctx.given_up = True
            self._ctx.wake(Signal.GAVE_UP)
