"""Back-to-back harness for the WebSocket units, without sockets.

A wsproto client talks bytes to an HttpFront + GatewayWebSocket; the gateway's and the
receiver's TunnelSessions talk through in-memory pipes (frames and credit messages, in
order); the receiver side is an AsgiWebSocketCall (the app hand-stepped) or a
ForwardWebSocket talking bytes to a wsproto server standing in for the local service.
This is what the coordinators will do, one call at a time, with time as an argument.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from anpx_core.http1 import FrontLimits, HttpFront, RequestEnded, RequestStarted
from anpx_core.meta import RequestHead, ResponseHead
from anpx_core.tunnel import (
    StreamData,
    StreamEnd,
    StreamHead,
    StreamMessage,
    StreamReset,
    TunnelSession,
    split_message,
)
from anpx_core.ws_asgi import AsgiWebSocketCall, build_scope
from anpx_core.ws_forward import ForwardWebSocket
from anpx_core.ws_gateway import GatewayWebSocket, Open, Refuse, upgrade_decision
from anpx_core.ws_relay import WsSettings
from anpx_core.wsstream import StreamCancel, apply_ops

WINDOW = 256 * 1024
RID = "ws-1"


class Pipe:
    """One direction of the tunnel: what a session sends, delivered later in order."""

    def __init__(self) -> None:
        self.items: list[bytes | dict[str, Any]] = []

    def send_binary(self, data: bytes) -> None:
        self.items.append(data)

    def send_control(self, message: dict[str, Any], *, v1_untyped: bool = False) -> None:
        self.items.append(message)

    def take(self) -> list[bytes | dict[str, Any]]:
        items, self.items = self.items, []
        return items


class _Wait:
    """What a hand-stepped app yields while receive() has nothing for it."""

    def __await__(self) -> Any:
        yield self


class AppRunner:
    """Steps an ASGI app coroutine by hand: it runs until it waits for a message."""

    def __init__(self, app: Callable[..., Awaitable[None]], call: AsgiWebSocketCall) -> None:
        self.call = call
        self.done = False
        self.exc: BaseException | None = None
        self.sent: list[dict[str, Any]] = []
        self._coro = app(call.scope, self._receive, self._send)

    async def _receive(self) -> dict[str, Any]:
        while True:
            message = self.call.receive()
            if message is not None:
                return message
            await _Wait()

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self.call.send(message)

    def step(self) -> None:
        if self.done:
            return
        try:
            yielded = self._coro.send(None)
        except StopIteration:
            self._finish(None)
            return
        except Exception as exc:  # the app raised: like a driver, report it
            self._finish(exc)
            return
        assert isinstance(yielded, _Wait), f"the app awaited something else: {yielded!r}"

    def _finish(self, exc: BaseException | None) -> None:
        self.done = True
        self.exc = exc
        self.call.app_returned(exc)


class Service:
    """A wsproto server standing in for the local service (forward mode)."""

    def __init__(self, *, accept: bool = True, subprotocol: str | None = None) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.accept = accept
        self.subprotocol = subprotocol
        self.request: Request | None = None
        self.events: list[Event] = []
        self.out = bytearray()
        self.echo = True  # echo every message back, like an echo server

    def receive(self, data: bytes) -> None:
        self.ws.receive_data(data or None)
        for ev in self.ws.events():
            if isinstance(ev, Request):
                self.request = ev
                if self.accept:
                    self.out += self.ws.send(AcceptConnection(subprotocol=self.subprotocol))
                else:
                    self.out += self.ws.send(
                        RejectConnection(
                            status_code=418, headers=[(b"x-why", b"teapot")], has_body=True
                        )
                    )
                    self.out += self.ws.send(
                        RejectData(data=b"no websockets here", body_finished=True)
                    )
                continue
            self.events.append(ev)
            if isinstance(ev, CloseConnection) and self.ws.state is ConnectionState.REMOTE_CLOSING:
                self.out += self.ws.send(ev.response())
            elif isinstance(ev, TextMessage | BytesMessage) and self.echo:
                self.out += self.ws.send(
                    Message(data=ev.data, message_finished=ev.message_finished)
                )
            elif isinstance(ev, Ping):
                self.out += self.ws.send(ev.response())

    def send(self, event: Event) -> None:
        self.out += self.ws.send(event)

    def take(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out


class Pair:
    """Client <-> gateway unit <-> two TunnelSessions <-> receiver unit."""

    def __init__(
        self,
        *,
        app: Callable[..., Awaitable[None]] | None = None,
        service: Service | None = None,
        gateway_settings: WsSettings | None = None,
        receiver_settings: WsSettings | None = None,
        window: int = WINDOW,
        forward: bool = False,
        ws_on_tunnel: bool = True,
        now: float = 0.0,
    ) -> None:
        self.now = now
        self.app = app
        self.service = service
        self.forward = forward or service is not None
        self.gw_settings = gateway_settings or WsSettings()
        self.rx_settings = receiver_settings or WsSettings()
        self.ws_on_tunnel = ws_on_tunnel
        self.to_receiver, self.to_gateway = Pipe(), Pipe()
        self.gs = TunnelSession(
            self.to_receiver, accepts=ResponseHead, local_window=window, peer_window=window
        )
        self.rs = TunnelSession(
            self.to_gateway, accepts=RequestHead, local_window=window, peer_window=window
        )
        self.front = HttpFront(
            FrontLimits(), now, client=("203.0.113.7", 50123), server=("127.0.0.1", 8080)
        )
        self.client = WSConnection(ConnectionType.CLIENT)
        self.client_events: list[Event] = []
        self.client_reads = True  # False: the client's socket is not read (slow consumer)
        self.client_closed = False
        self.http_answer = b""  # bytes of a non-101 answer
        self.gw: GatewayWebSocket | None = None
        self.refusal: Refuse | None = None
        self.call: AsgiWebSocketCall | None = None
        self.runner: AppRunner | None = None
        self.fwd: ForwardWebSocket | None = None
        self.resets: list[str] = []
        self.other: list[object] = []  # events of other streams (HTTP beside the WebSocket)

    # --- client actions ---------------------------------------------------------------------

    def connect(
        self,
        target: str = "/ws?room=1",
        subprotocols: list[str] | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        raw: bytes | None = None,
    ) -> None:
        if raw is None:
            request = Request(
                host="app.test",
                target=target,
                subprotocols=subprotocols or [],
                extra_headers=extra or [],
            )
            raw = self.client.send(request)
        for ev in self.front.receive_data(raw, self.now):
            if isinstance(ev, RequestStarted):
                decision = upgrade_decision(
                    ev, ws_on_tunnel=self.ws_on_tunnel, settings=self.gw_settings
                )
                if isinstance(decision, Refuse):
                    self.refusal = decision
                    self.front.send_error(decision.status, decision.text, decision.headers)
                elif isinstance(decision, Open):
                    self.gw = GatewayWebSocket(self.front, decision, self.gw_settings, self.now)
                else:
                    raise AssertionError("not a WebSocket upgrade")
            else:
                assert isinstance(ev, RequestEnded), ev
        self.pump()

    def send(self, event: Event) -> None:
        data = self.client.send(event)
        assert self.gw is not None
        self.gw.receive_data(data, self.now)
        self.pump()

    def client_eof(self) -> None:
        assert self.gw is not None
        self.gw.receive_data(b"", self.now)
        self.pump()

    def advance(self, seconds: float) -> None:
        """Move the fake clock, running every timer due on the way (deadline by deadline)."""
        end = self.now + seconds
        while True:
            due = [
                d
                for d in (
                    self.gw.next_deadline() if self.gw else None,
                    self.fwd.next_deadline() if self.fwd else None,
                )
                if d is not None and d <= end
            ]
            if not due:
                break
            self.now = max(self.now, min(due))
            if self.gw:
                self.gw.handle_timer(self.now)
            if self.fwd:
                self.fwd.handle_timer(self.now)
            self.pump()
        self.now = end
        self.pump()

    # --- the wiring ---------------------------------------------------------------------------

    def messages(self) -> list[str | bytes]:
        """Whole messages the client received so far."""
        out: list[str | bytes] = []
        parts: list[Any] = []
        for ev in self.client_events:
            if isinstance(ev, TextMessage | BytesMessage):
                parts.append(ev.data)
                if ev.message_finished:
                    out.append(("" if isinstance(parts[0], str) else b"").join(parts))
                    parts = []
        return out

    def client_close(self) -> CloseConnection | None:
        closes = [ev for ev in self.client_events if isinstance(ev, CloseConnection)]
        return closes[0] if closes else None

    def pump(self) -> None:
        for _ in range(10_000):
            if not self._step():
                return
        raise AssertionError("the pair does not settle")

    def _step(self) -> bool:
        moved = False
        if self.gw is not None:
            ops = self.gw.take_ops()
            if ops:
                moved = True
                apply_ops(self.gs, RID, ops)
        for item in self.to_receiver.take():
            moved = True
            events = (
                self.rs.receive_binary(item)
                if isinstance(item, bytes)
                else self.rs.receive_control(item)
            )
            for ev in _split(events):
                self._receiver_event(ev)
        moved |= self._receiver_side()
        self.rs.flush_credits()
        for item in self.to_gateway.take():
            moved = True
            events = (
                self.gs.receive_binary(item)
                if isinstance(item, bytes)
                else self.gs.receive_control(item)
            )
            for ev in _split(events):
                self._gateway_event(ev)
        self.gs.flush_credits()
        if self.gw is not None:
            self.gw.set_stream_writable(self.gs.writable(RID))
            if self.client_reads:
                out = self.gw.data_to_send()
                if out:
                    moved = True
                    self._to_client(out)
                    self.gw.written()
        else:
            out = self.front.data_to_send()
            if out:
                self.http_answer += out
                moved = True
        return moved

    def _to_client(self, data: bytes) -> None:
        if self.client.state is ConnectionState.CONNECTING:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.http_answer += data
                return
            self.client.receive_data(head + sep)
            self.client_events += list(self.client.events())
            data = rest
        if data and self.client.state is not ConnectionState.CLOSED:
            self.client.receive_data(data)
            for ev in self.client.events():
                self.client_events.append(ev)
                if (
                    isinstance(ev, CloseConnection)
                    and self.client.state is ConnectionState.REMOTE_CLOSING
                ) or isinstance(ev, Ping):
                    self.gw.receive_data(self.client.send(ev.response()), self.now)  # type: ignore[union-attr]

    def _gateway_event(self, ev: object) -> None:
        gw = self.gw
        assert gw is not None
        if getattr(ev, "request_id", RID) != RID:
            self.other.append(ev)
            return
        if isinstance(ev, StreamHead):
            assert isinstance(ev.head, ResponseHead)
            gw.stream_head(ev.head, self.now)
        elif isinstance(ev, StreamData):
            gw.stream_data(ev.data, self.now)
        elif isinstance(ev, StreamEnd):
            gw.stream_end(self.now)
        elif isinstance(ev, StreamReset):
            self.resets.append(f"gateway: {ev.reason}")
            gw.stream_reset(ev.reason, self.now)

    def _receiver_event(self, ev: object) -> None:
        if getattr(ev, "request_id", RID) != RID:
            self.other.append(ev)
            return
        if isinstance(ev, StreamHead):
            assert isinstance(ev.head, RequestHead)
            if not self.forward:
                scope = build_scope(
                    ev.head, client=("203.0.113.7", 50123), server=("app.test", 80), scheme="https"
                )
                self.call = AsgiWebSocketCall(scope, self.rx_settings)
                if self.app is not None:  # else the test plays the app through self.call
                    self.runner = AppRunner(self.app, self.call)
            else:
                self.fwd = ForwardWebSocket(ev.head, "127.0.0.1:9000", self.rx_settings, self.now)
        elif isinstance(ev, StreamData):
            if self.call is not None:
                self.call.stream_data(ev.data)
            elif self.fwd is not None:
                self.fwd.stream_data(ev.data, self.now)
        elif isinstance(ev, StreamEnd):
            if self.call is not None:
                self.call.stream_end()
            elif self.fwd is not None:
                self.fwd.stream_end(self.now)
        elif isinstance(ev, StreamReset):
            self.resets.append(f"receiver: {ev.reason}")
            if self.call is not None:
                self.call.disconnected()
            elif self.fwd is not None:
                self.fwd.stream_reset(self.now)

    def _receiver_side(self) -> bool:
        moved = False
        if self.runner is not None:
            before = len(self.runner.sent)
            if not self.runner.done:
                self.runner.step()
            moved |= len(self.runner.sent) != before
        if self.call is not None:
            ops = self.call.take_ops()
            if ops:
                moved = True
                apply_ops(self.rs, RID, ops)
        if self.fwd is not None:
            self.fwd.set_stream_writable(self.rs.writable(RID))
            out = self.fwd.data_to_send() if self.service is not None else b""
            if out and self.service is not None:
                moved = True
                self.service.receive(out)
                self.fwd.written()
            back = self.service.take() if self.service is not None else b""
            if back:
                moved = True
                self.fwd.receive_data(back, self.now)
            ops = self.fwd.take_ops()
            if ops:
                moved = True
                apply_ops(self.rs, RID, ops)
        return moved


def key() -> str:
    return base64.b64encode(b"0123456789abcdef").decode()


__all__ = ["AppRunner", "Pair", "Pipe", "Service", "StreamCancel", "key"]


def _split(events: list) -> list:
    """The session's events with each whole message as its three events (what the tunnel
    units do for an owner without a stream_message handler)."""
    out: list = []
    for ev in events:
        out += split_message(ev) if isinstance(ev, StreamMessage) else [ev]
    return out
