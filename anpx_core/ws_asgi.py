"""The receiver's ASGI WebSocket back end: one ``websocket`` call as a sans-IO state machine.

Like :class:`~anpx_core.asgi.AsgiHttpCall`: the driver runs ``app(scope, receive, send)``;
``receive()`` asks :meth:`AsgiWebSocketCall.receive` (None: wait for a wake-up after the next
stream event), ``send(message)`` calls :meth:`AsgiWebSocketCall.send`, and after every call
the coordinator applies :meth:`AsgiWebSocketCall.take_ops` to the stream.

ASGI WebSocket spec 2.4: ``websocket.connect`` first; ``websocket.accept`` (subprotocol,
headers) answers 101; ``websocket.close`` before accepting denies with 403;
``websocket.http.response.start`` / ``.body`` (the ``websocket.http.response`` extension,
advertised in the scope) deny with any response. Messages are whole (reassembled up to
``max_message_size``). The client's close arrives as ``websocket.disconnect`` with its code
and reason (1006 when the client or the tunnel vanished) and is echoed with the same code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from .asgi import AsgiError, ClientDisconnected, _as_bytes, _message_type, _response_headers
from .asgi import build_scope as build_http_scope
from .errors import ProtocolError
from .meta import RequestHead, ResponseHead
from .strict import StrictError, check_text, check_token
from .ws_relay import TOO_BIG, WsSettings
from .wsstream import (
    ABNORMAL,
    CloseRecord,
    RecordDecoder,
    StreamCancel,
    StreamConsumed,
    StreamEnd,
    StreamOp,
    StreamSend,
    StreamStart,
    accept_head,
    close_sendable,
    deny_ops,
    encode_close,
    encode_message,
    subprotocols_of,
)

__all__ = ["AsgiWebSocketCall", "admission", "build_scope"]

NO_STATUS = 1005
_ANSWERS = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})
ERROR_BODY = b"Internal Server Error"


def build_scope(
    head: RequestHead,
    *,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    scheme: str,
    root_path: str = "",
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ASGI ``websocket`` scope for an open head (``scheme``: the request's http/https,
    from X-Forwarded-Proto; it becomes ws/wss). Raises StrictError for offered subprotocols
    that are not tokens (deny with 400)."""
    scope = build_http_scope(
        head, client=client, server=server, scheme=scheme, root_path=root_path, state=state
    )
    del scope["method"]
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if scheme in ("https", "wss") else "ws"
    offered = subprotocols_of(head.headers)
    for name in offered:
        check_token(name, "subprotocol")
    scope["subprotocols"] = offered
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


def admission(head: RequestHead, open_now: int, settings: WsSettings) -> list[StreamOp] | None:
    """A receiver's check of an open head (ASGI and forward mode alike): None to serve it,
    else the denial to send (503 over ``max_open``, 400 for offered subprotocols that are
    not tokens)."""
    if open_now >= settings.max_open:
        return deny_ops(503, "too many open WebSockets on this receiver", [("retry-after", "5")])
    try:
        for name in subprotocols_of(head.headers):
            check_token(name, "subprotocol")
    except StrictError:
        return deny_ops(400, "malformed Sec-WebSocket-Protocol")
    return None


class AsgiWebSocketCall:
    """One WebSocket session between the tunnel and an ASGI app.

    States: ``connecting`` (nothing sent yet), ``accepted``, ``closing`` (the app sent
    close, the client's answer is awaited), ``denying`` (an HTTP denial is being sent),
    ``closed`` (disconnect delivered or denial complete), ``finished`` (the app returned).
    """

    def __init__(self, scope: dict[str, Any], settings: WsSettings) -> None:
        self.scope = scope
        self._settings = settings
        self._decoder = RecordDecoder(settings.max_message_size)
        self._inbox: deque[dict[str, Any]] = deque([{"type": "websocket.connect"}])
        self._parts: list[str | bytes] = []
        self._held_credit = 0  # stream bytes of messages the app has not received yet
        self._ops: list[StreamOp] = []
        self.state = "connecting"
        self._disconnect_queued = False
        self._close_sent = False
        self._app_returned = False
        self._final: dict[str, Any] | None = None  # the disconnect, once delivered
        self.close_code: int | None = None

    # --- tunnel -> app ------------------------------------------------------------------------

    def take_ops(self) -> list[StreamOp]:
        ops, self._ops = self._ops, []
        return ops

    def stream_data(self, data: bytes) -> None:
        if self._disconnect_queued:
            self._ops.append(StreamConsumed(len(data)))
            return
        try:
            records = self._decoder.feed(data)
        except ProtocolError as exc:
            if exc.code == "too_large" and self.state in ("accepted", "closing"):
                # Not a broken stream: close with 1009 by a CLOSE record, so the gateway gives
                # the client the same code (a reset would reach it as 1011); the rest of the
                # client's records are discarded (credited) until the stream ends.
                self._send_close(TOO_BIG, f"message over {self._settings.max_message_size} bytes")
                self._disconnect(TOO_BIG, "")
                self._held_credit += len(data)
                self._release_credit()
                return
            self._ops.append(StreamCancel(f"bad WebSocket record: {exc.message}"))
            self._disconnect(TOO_BIG if exc.code == "too_large" else ABNORMAL, "")
            return
        for record in records:
            if isinstance(record, CloseRecord):
                self._on_close(record.code, record.reason)
            elif not self._disconnect_queued:
                self._parts.append(record.data)
                if record.fin:
                    self._queue_message()
        self._held_credit += len(data)
        if not self._has_messages():
            self._release_credit()

    def stream_end(self) -> None:
        if not self._disconnect_queued:
            self._disconnect(ABNORMAL, "")

    def disconnected(self) -> None:
        """The stream was reset or the tunnel dropped: the app sees a 1006 disconnect."""
        if not self._disconnect_queued:
            self._disconnect(ABNORMAL, "")
        self._ops = []

    def going_away(self, reason: str) -> None:
        """This side shuts down: close with 1001 both ways (the app sees a 1001 disconnect);
        an upgrade not answered yet is denied with 503."""
        if self._disconnect_queued:
            return
        if self.state == "connecting":
            self._ops += deny_ops(503, "the receiver is shutting down", [("retry-after", "5")])
            self.state = "closed"
        elif self.state in ("accepted", "closing"):
            self._send_close(1001, reason)
        elif self.state == "denying":
            self._ops.append(StreamCancel(reason))
        self._disconnect(1001, reason)

    def receive(self) -> dict[str, Any] | None:
        if not self._inbox:
            # after the disconnect, every receive() gets it again: an app never waits forever
            return self._final
        message = self._inbox.popleft()
        if message["type"] == "websocket.disconnect":
            self._final = message
        if not self._has_messages():
            self._release_credit()
        return message

    # --- app -> tunnel ------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        kind = _message_type(message)
        state = self.state
        if state == "finished":
            raise AsgiError(f"ASGI message {kind!r} sent after the application returned")
        if state == "connecting":
            if self._disconnect_queued and kind in _ANSWERS:
                return  # the client left before the answer: nobody to tell
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._deny_forbidden()
            elif kind == "websocket.http.response.start":
                self._start_denial(message)
            else:
                raise AsgiError(f"expected 'websocket.accept' or a denial, got {kind!r}")
            return
        if state == "denying":
            if kind != "websocket.http.response.body":
                raise AsgiError(f"expected 'websocket.http.response.body', got {kind!r}")
            body = _as_bytes(message.get("body", b""), "'body'")
            more = message.get("more_body", False)
            if not isinstance(more, bool):
                raise AsgiError("'more_body' must be a bool")
            if body:
                self._ops.append(StreamSend(body))
            if not more:
                self._ops.append(StreamEnd())
                self.state = "closed"
            return
        if state in ("closing", "closed") or self._disconnect_queued:
            raise ClientDisconnected("the WebSocket is closed")
        if kind == "websocket.send":
            self._ops.append(StreamSend(encode_message(self._payload(message))))
        elif kind == "websocket.close":
            code, reason = self._close_args(message)
            self._send_close(code, reason)
            self.state = "closing"
        else:
            raise AsgiError(f"unexpected ASGI message {kind!r} on an accepted WebSocket")

    def app_returned(self, exc: BaseException | None) -> None:
        """The app's coroutine ended: deny (403, or 500 if it raised) if it never answered,
        close (1000, or 1011 if it raised) if it left the socket open."""
        state, self.state = self.state, "finished"
        if self._app_returned:
            raise AsgiError("app_returned called twice")
        self._app_returned = True
        if state == "connecting" and not self._disconnect_queued:
            if exc is None:
                self._ops += deny_ops(403, "Forbidden")
            else:
                self._ops += [
                    StreamStart(
                        ResponseHead(
                            500,
                            "Internal Server Error",
                            [
                                ("content-type", "text/plain; charset=utf-8"),
                                ("content-length", str(len(ERROR_BODY))),
                            ],
                        )
                    ),
                    StreamSend(ERROR_BODY),
                    StreamEnd(),
                ]
        elif state == "denying":
            self._ops.append(StreamCancel("application returned without completing its denial"))
        elif state == "accepted" and not self._disconnect_queued:
            self._send_close(1000 if exc is None else 1011, "")

    # --- internals ----------------------------------------------------------------------------

    def _has_messages(self) -> bool:
        return any(m["type"] == "websocket.receive" for m in self._inbox)

    def _release_credit(self) -> None:
        if self._held_credit:
            self._ops.append(StreamConsumed(self._held_credit))
            self._held_credit = 0

    def _queue_message(self) -> None:
        parts, self._parts = self._parts, []
        if parts and isinstance(parts[0], str):
            text = "".join(p for p in parts if isinstance(p, str))
            self._inbox.append({"type": "websocket.receive", "text": text})
        else:
            data = b"".join(p for p in parts if isinstance(p, bytes))
            self._inbox.append({"type": "websocket.receive", "bytes": data})

    def _on_close(self, code: int | None, reason: str) -> None:
        self._parts = []
        if not self._close_sent and self.state == "accepted":
            # the client closed first: echo its code, as RFC 6455 section 5.5.1 suggests
            self._send_close(code if code is None or close_sendable(code) else None, "")
        self._disconnect(NO_STATUS if code is None else code, reason)

    def _disconnect(self, code: int, reason: str) -> None:
        self._disconnect_queued = True
        self.close_code = code
        self._parts = []
        self._inbox.append({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.state in ("accepted", "closing"):
            self.state = "closed"

    def _send_close(self, code: int | None, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        self._ops.append(StreamSend(encode_close(code, reason)))
        self._ops.append(StreamEnd())

    def _accept(self, message: Mapping[str, Any]) -> None:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if not isinstance(subprotocol, str):
                raise AsgiError("'subprotocol' must be a str or None")
            if subprotocol not in self.scope.get("subprotocols", []):
                raise AsgiError(f"subprotocol {subprotocol!r} was not offered by the client")
        headers = _response_headers(message.get("headers", ()))
        self._ops.append(StreamStart(accept_head(subprotocol, headers)))
        self.state = "accepted"

    def _deny_forbidden(self) -> None:
        self._ops += deny_ops(403, "Forbidden")
        self.state = "closed"

    def _start_denial(self, message: Mapping[str, Any]) -> None:
        status = message.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 999:
            raise AsgiError(f"'status' must be an integer from 200 to 999, got {status!r}")
        headers = _response_headers(message.get("headers", ()))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        self._ops.append(StreamStart(ResponseHead(status, reason, headers)))
        self.state = "denying"

    @staticmethod
    def _payload(message: Mapping[str, Any]) -> str | bytes:
        data = message.get("bytes")
        text = message.get("text")
        if (data is None) == (text is None):
            raise AsgiError("'websocket.send' needs exactly one of 'bytes' and 'text'")
        if text is not None:
            if not isinstance(text, str):
                raise AsgiError("'text' must be a str")
            try:
                return check_text(text, "'text'")
            except StrictError as exc:
                raise AsgiError(str(exc)) from None
        return _as_bytes(data, "'bytes'")

    @staticmethod
    def _close_args(message: Mapping[str, Any]) -> tuple[int, str]:
        code = message.get("code", 1000)
        if code is None:
            code = 1000
        if isinstance(code, bool) or not isinstance(code, int) or not close_sendable(code):
            raise AsgiError(f"'code' {code!r} cannot be sent in a Close frame")
        reason = message.get("reason") or ""
        if not isinstance(reason, str):
            raise AsgiError("'reason' must be a str")
        try:
            check_text(reason, "'reason'")
        except StrictError as exc:
            raise AsgiError(str(exc)) from None
        return code, reason
