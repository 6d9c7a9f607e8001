"""The WebSocket stream kind: a client's WebSocket, opened by the gateway as one stream.

On a tunnel where the ``ws`` extension is in effect, a request head that opens a WebSocket
(:func:`~anpx_core.wsstream.is_open_head`) is claimed here. After the admission check
(``max_open``, well-formed subprotocols) it is served

* in ASGI mode by an :class:`~anpx_core.ws_asgi.AsgiWebSocketCall`: the driver runs the app
  like any app call (``pop_app_calls``), its ``receive``/``send`` come here through the
  context's app-call handlers;
* in forward mode by a :class:`~anpx_core.ws_forward.ForwardWebSocket` over its own
  connection to the local service (a :class:`WsUpstream`, asked of the driver like the HTTP
  upstreams).

The stream is over once both directions ended (or it was reset) and the app returned / the
service's socket closed; until then it counts in ``in_flight``, so a drain waits for it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..asgi import AsgiError, ClientDisconnected
from ..headers import Headers, get_header
from ..meta import RequestHead
from ..strict import StrictError, parse_scheme
from ..ws_asgi import AsgiWebSocketCall, admission, build_scope
from ..ws_forward import ForwardWebSocket
from ..wsstream import (
    StreamCancel,
    StreamConsumed,
    StreamOp,
    StreamSend,
    StreamStart,
    deny_ops,
)
from .context import ReceiverContext
from .http import client_from, server_from
from .settings import ConnectRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from .links import GatewayLink

log = logging.getLogger("anpx.receiver")
access_log = logging.getLogger("anpx.access.receiver")

Message = dict[str, Any]
_GONE: Message = {"type": "websocket.disconnect", "code": 1006, "reason": ""}


@dataclass(slots=True, eq=False)
class WsStream:
    """One WebSocket session on a tunnel stream (a :class:`.context.Stream`, and a timer
    owner in forward mode)."""

    cid: int  # the app call's id (ASGI) or the service connection's id (forward)
    rid: str
    link: GatewayLink
    head: RequestHead
    started: float
    kind: WsStreams
    call: AsgiWebSocketCall | None = None
    fwd: ForwardWebSocket | None = None
    ours_ended: bool = False  # we ended or cancelled our side of the stream
    theirs_ended: bool = False  # the gateway ended or reset its side
    app_done: bool = True  # ASGI: the app returned (forward: always)
    socket_done: bool = True  # forward: the service's socket is closed (ASGI: always)
    upstream: WsUpstream | None = None
    status: int = 0

    def on_timer(self, now: float) -> None:
        self.kind.timer(self, now)


@dataclass(slots=True, eq=False)
class WsUpstream:
    """The connection to the local service of one forwarded WebSocket."""

    cid: int
    stream: WsStream
    is_connected: bool = False

    @property
    def fwd(self) -> ForwardWebSocket:
        assert self.stream.fwd is not None
        return self.stream.fwd

    def connected(self, now: float) -> None:
        self.is_connected = True
        self.stream.kind.sync(self.stream, now)

    def connect_failed(self, now: float, reason: str) -> None:
        log.warning("WebSocket %s: local service unreachable: %s", self.stream.rid, reason)
        self.fwd.connect_failed(reason)
        self.stream.socket_done = True
        self.stream.kind.sync(self.stream, now)

    def note_lost(self, reason: str) -> None:
        pass

    def receive(self, data: bytes, now: float) -> None:
        self.fwd.receive_data(data, now)
        self.stream.kind.sync(self.stream, now)

    def take_output(self) -> tuple[bytes, bool]:
        if not self.is_connected:
            return b"", False
        return self.fwd.data_to_send(), self.fwd.done

    def written(self, now: float) -> None:
        self.fwd.written()
        self.stream.kind.sync(self.stream, now)

    def can_read(self) -> bool:
        stream = self.stream
        if not self.fwd.wants_read:
            return False
        if stream.ours_ended or self.fwd.phase != "open":
            return True
        return stream.link.may_produce(self.cid, stream.rid)

    def closed(self, now: float) -> None:
        if not self.fwd.done:
            self.fwd.receive_data(b"", now)  # the service went away
        self.stream.socket_done = True
        self.stream.kind.sync(self.stream, now)


class WsStreams:
    """The WebSocket stream kind (see the module docstring)."""

    def __init__(
        self, ctx: ReceiverContext, lifespan_state: Callable[[], dict[str, Any] | None]
    ) -> None:
        self.ctx = ctx
        self._lifespan_state = lifespan_state
        self.streams: dict[int, WsStream] = {}  # by cid, until over
        self.opened = 0

    @property
    def in_flight(self) -> int:
        return len(self.streams)

    # --- the stream kind --------------------------------------------------------------------

    def claims(self, link: GatewayLink, head: RequestHead) -> bool:
        return link.ws_streams and head.method == "GET" and _asks_upgrade(head.headers)

    def open(self, link: GatewayLink, rid: str, head: RequestHead, now: float) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        self.opened += 1
        stream = WsStream(ctx.new_id(), rid, link, head, now, self)
        link.streams[rid] = stream
        denial = admission(head, len(self.streams), settings.websocket)
        scope: Message | None = None
        if denial is None and settings.forward is None:
            try:
                server = server_from(head)
                scheme = parse_scheme(
                    get_header(head.headers, "x-forwarded-proto") or "http", "x-forwarded-proto"
                )
                scope = build_scope(
                    head,
                    client=client_from(head),
                    server=server,
                    scheme=scheme,
                    root_path=settings.root_path,
                    state=self._lifespan_state(),
                )
            except StrictError as exc:
                log.warning("refusing WebSocket %s from the gateway: %s", rid, exc)
                denial = deny_ops(400, "malformed WebSocket request")
        if denial is not None:
            self._apply(stream, denial)
            stream.theirs_ended = True  # nothing of theirs matters any more
            self._settle(stream)
            return
        self.streams[stream.cid] = stream
        if scope is not None:
            stream.call = AsgiWebSocketCall(scope, settings.websocket)
            stream.app_done = False
            ctx.start_app_call(stream.cid, scope, self)
        else:
            assert settings.forward is not None
            host, port = settings.forward
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            stream.fwd = ForwardWebSocket(head, authority, settings.websocket, now)
            stream.socket_done = False
            up = stream.upstream = WsUpstream(stream.cid, stream)
            ctx.conns[up.cid] = up
            ctx.connect(ConnectRequest(up.cid, host, port, False, "upstream"))
        self.sync(stream, now)

    def data(self, stream: WsStream, data: bytes, now: float) -> None:
        if stream.call is not None:
            stream.call.stream_data(data)
            self.ctx.wake(stream.cid)
        elif stream.fwd is not None:
            stream.fwd.stream_data(data, now)
        self.sync(stream, now)

    def end(self, stream: WsStream, now: float) -> None:
        stream.theirs_ended = True
        if stream.call is not None:
            stream.call.stream_end()
            self.ctx.wake(stream.cid)
        elif stream.fwd is not None:
            stream.fwd.stream_end(now)
        self.sync(stream, now)

    def reset(self, stream: WsStream, reason: str) -> None:
        now = self.ctx.now
        stream.theirs_ended = stream.ours_ended = True
        if stream.call is not None:
            stream.call.disconnected()
            self.ctx.wake(stream.cid)
        elif stream.fwd is not None:
            stream.fwd.stream_reset(now)
        self.sync(stream, now)

    def writable(self, stream: WsStream) -> None:
        self.ctx.wake(stream.cid)  # the app's send() or the service's socket reads again
        self.sync(stream, self.ctx.now)

    def stop(self) -> None:
        """The receiver closes its tunnels (after its drain's grace): close every session
        with 1001 first, so the client and the app see a going-away, not a failure."""
        now = self.ctx.now
        for stream in list(self.streams.values()):
            if stream.call is not None:
                stream.call.going_away("receiver shutting down")
                self.ctx.wake(stream.cid)
            elif stream.fwd is not None:
                stream.fwd.going_away(now, "receiver shutting down")
            self.sync(stream, now)

    def holding_body(self, stream: WsStream, limit: int) -> bool:
        return False  # ws needs flow control: credit bounds what the gateway sends

    def contain(self, stream: WsStream, exc: BaseException, where: str) -> None:
        log.error(
            "internal error in %s for WebSocket %s; resetting it", where, stream.rid, exc_info=exc
        )
        if not stream.ours_ended:
            stream.link.cancel_stream(stream.rid, "internal error")
        stream.ours_ended = stream.theirs_ended = True
        stream.app_done = stream.socket_done = True  # the app learns at its next receive/send
        if stream.upstream is not None:
            self.ctx.conns.pop(stream.upstream.cid, None)  # its socket closes at the next call
            self.ctx.wake(stream.upstream.cid)
        self.ctx.app_handlers.pop(stream.cid, None)
        self._settle(stream)

    # --- the app's side (a context app-call handler) --------------------------------------------

    def receive(self, call_id: int) -> Message | None:
        stream = self.streams.get(call_id)
        if stream is None or stream.call is None:
            return _GONE
        try:
            message = stream.call.receive()
            self.sync(stream, self.ctx.now)
        except Exception as exc:  # the crash barrier: this stream only
            self.contain(stream, exc, "receive")
            return _GONE
        return message

    def send(self, call_id: int, message: Message) -> None:
        stream = self.streams.get(call_id)
        if stream is None or stream.call is None:
            raise ClientDisconnected("the WebSocket is closed")
        stream.call.send(message)  # AsgiError / ClientDisconnected: the app's to handle
        try:
            self.sync(stream, self.ctx.now)
        except Exception as exc:  # the crash barrier: this stream only
            self.contain(stream, exc, "send")
            raise ClientDisconnected("the WebSocket was reset after an internal error") from None

    def writable_now(self, call_id: int) -> bool:
        stream = self.streams.get(call_id)
        if stream is None or stream.ours_ended or stream.link.session is None:
            return True
        return stream.link.may_produce(call_id, stream.rid)

    def finished(self, call_id: int, exc: BaseException | None) -> None:
        self.ctx.app_handlers.pop(call_id, None)
        stream = self.streams.get(call_id)
        if stream is None or stream.call is None:
            return
        if exc is not None and not isinstance(exc, ClientDisconnected):
            log.error("app failed on WebSocket %s", stream.head.target, exc_info=exc)
        stream.app_done = True
        with contextlib.suppress(AsgiError):  # called once per call: cannot happen twice
            stream.call.app_returned(exc)
        self.sync(stream, self.ctx.now)

    # --- internals --------------------------------------------------------------------------

    def timer(self, stream: WsStream, now: float) -> None:
        if stream.fwd is not None:
            stream.fwd.handle_timer(now)
        self.sync(stream, now)

    def sync(self, stream: WsStream, now: float) -> None:
        """After every call: carry out the unit's stream operations, tell the relay whether
        the stream takes more, re-arm its timer, forget a session that is over."""
        unit = stream.call if stream.call is not None else stream.fwd
        if unit is None:
            return
        ops = unit.take_ops()
        if ops:
            self._apply(stream, ops)
        session = stream.link.session
        if stream.fwd is not None:
            if session is not None and not stream.ours_ended:
                stream.fwd.set_stream_writable(session.writable(stream.rid))
            if stream.fwd.phase != "handshake":
                stream.status = stream.status or 101
            self.ctx.arm(stream, None if stream.socket_done else stream.fwd.next_deadline())
            if stream.upstream is not None:
                self.ctx.wake(stream.upstream.cid)
            if stream.fwd.done and not stream.ours_ended:
                stream.ours_ended = True  # e.g. the service refused: the denial ended it
        self._settle(stream)

    def _apply(self, stream: WsStream, ops: list[StreamOp]) -> None:
        link, session = stream.link, stream.link.session
        if session is None:
            return
        rid = stream.rid
        for op in ops:
            if isinstance(op, StreamConsumed):
                # credit still matters after our end: their CLOSE record needs room
                if not stream.theirs_ended:
                    session.consumed(rid, op.nbytes)
            elif stream.ours_ended:
                continue
            elif isinstance(op, StreamSend):
                session.send(rid, op.data)
                session.flush(rid)
            elif isinstance(op, StreamStart):
                stream.status = getattr(op.head, "status", 0)
                session.start(rid, op.head)
                session.flush(rid)
            elif isinstance(op, StreamCancel):
                session.cancel(rid, op.reason)
                stream.ours_ended = stream.theirs_ended = True
            else:
                session.end(rid)
                stream.ours_ended = True
        session.flush_credits()
        self.ctx.wake(link.cid)

    def _settle(self, stream: WsStream) -> None:
        if not (stream.ours_ended and stream.theirs_ended):
            return
        if stream.link.streams.get(stream.rid) is stream:
            del stream.link.streams[stream.rid]
        if (
            stream.app_done
            and stream.socket_done
            and self.streams.pop(stream.cid, None) is not None
        ):
            self.ctx.arm(stream, None)
            close = stream.call.close_code if stream.call is not None else None
            access_log.info(
                "%s WS %s %d close=%s %.1fms",
                get_header(stream.head.headers, "x-request-id") or stream.rid,
                stream.head.target,
                stream.status,
                close if close is not None else "-",
                (self.ctx.now - stream.started) * 1000,
            )


def _asks_upgrade(headers: Headers) -> bool:
    """:func:`~anpx_core.wsstream.is_open_head` for a GET, as one loop (every request asks):
    only a 7-character name can be ``Upgrade`` in any case, so the others are not lowered."""
    for name, value in headers:
        if len(name) == 7 and name.lower() == "upgrade" and value.strip().lower() == "websocket":
            return True
    return False
