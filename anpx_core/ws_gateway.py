"""The gateway's WebSocket unit: a client's upgrade carried as a WebSocket stream.

:func:`upgrade_decision` says what to do with a request head from :class:`HttpFront`: not
a WebSocket (serve it as HTTP), refuse it with a short explained HTTP error (malformed, a
receiver without the ``ws`` extension, over a limit), or open a stream.
:class:`GatewayWebSocket` then owns the client connection: it opens the stream, waits for the
receiver's answer (``101``, or a denial relayed as an HTTP response), switches the front to
the WebSocket and relays through :class:`~anpx_core.ws_relay.PeerRelay`.

Extensions: the client's ``Sec-WebSocket-Extensions`` offer is never passed on and our
``101`` accepts none, so no hop ever sees compressed frames (permessage-deflate is stripped
end to end; docs/websocket.md). Subprotocols are negotiated end to end: the receiver's
choice must be one the client offered, or the client gets 502.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token

from .headers import strip_hop_by_hop
from .http1 import HttpFront, RequestStarted
from .meta import Headers, RequestHead, ResponseHead
from .strict import StrictError, check_fields, check_token
from .ws_relay import GOING_AWAY, INTERNAL_ERROR, PeerRelay, WsSettings
from .wsstream import (
    HANDSHAKE_ONLY,
    StreamCancel,
    StreamConsumed,
    StreamEnd,
    StreamOp,
    StreamStart,
    open_head,
    subprotocols_of,
)

__all__ = ["GatewayWebSocket", "Open", "Refuse", "upgrade_decision"]

#: The answer to an upgrade through a receiver that cannot carry it (a v1 peer, or one
#: without the ws extension): immediate, with the reason, never a hang.
NO_WS_STATUS = 501
NO_WS_TEXT = (
    "WebSocket is not available on this route: its receiver does not support "
    "WebSocket streams (anpx ws extension)"
)


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the upgrade with this HTTP error (``HttpFront.send_error``)."""

    status: int
    text: str
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Open:
    """Open a WebSocket stream with ``head`` (see :class:`GatewayWebSocket`)."""

    head: RequestHead
    key: str  # the client's Sec-WebSocket-Key
    subprotocols: list[str]


def _field(headers: Headers, name: str) -> list[str]:
    return [v.strip() for n, v in headers if n.lower() == name]


def upgrade_decision(
    started: RequestStarted,
    *,
    ws_on_tunnel: bool,
    open_on_tunnel: int = 0,
    open_for_client: int = 0,
    settings: WsSettings | None = None,
) -> Open | Refuse | None:
    """What to do with a request head: None when it is no WebSocket upgrade (serve it as
    HTTP; its Upgrade field was stripped), else refuse it or open a stream.

    ``ws_on_tunnel``: the tunnel the request would take has the ``ws`` extension
    (:func:`~anpx_core.wsstream.ws_in_effect`); ``open_*``: WebSockets open now on that
    tunnel and from this client address.
    """
    if started.upgrade is None or "websocket" not in (
        token.strip() for token in started.upgrade.split(",")
    ):
        return None
    settings = settings or WsSettings()
    head = started.head
    headers = head.headers
    if head.method != "GET":
        return Refuse(400, "a WebSocket upgrade must use GET")
    if started.content_length != 0:
        return Refuse(400, "a WebSocket upgrade has no body")
    if _field(headers, "sec-websocket-version") != ["13"]:
        return Refuse(426, "unsupported WebSocket version", [("sec-websocket-version", "13")])
    keys = _field(headers, "sec-websocket-key")
    try:
        if len(keys) != 1 or len(base64.b64decode(keys[0], validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        return Refuse(400, "missing or malformed Sec-WebSocket-Key")
    offered = subprotocols_of(headers)
    try:
        for name in offered:
            check_token(name, "subprotocol")
    except StrictError as exc:
        return Refuse(400, f"bad Sec-WebSocket-Protocol: {exc}")
    if not ws_on_tunnel:
        return Refuse(NO_WS_STATUS, NO_WS_TEXT)
    if open_on_tunnel >= settings.max_open:
        return Refuse(503, "too many open WebSockets on this route", [("retry-after", "5")])
    if settings.max_per_client and open_for_client >= settings.max_per_client:
        return Refuse(429, "too many open WebSockets from your address", [("retry-after", "5")])
    return Open(open_head(head.target, headers, offered), keys[0], offered)


# The receiver's 101 fields that must not reach the client as they are.
_OWN_101 = HANDSHAKE_ONLY | {"content-length", "transfer-encoding"}


class GatewayWebSocket:
    """One client's WebSocket session at the gateway (phases: opening, open, denied, done).

    Coordinator contract: feed the client's bytes to :meth:`receive_data`, write
    :meth:`data_to_send` and report :meth:`written`; feed the stream's events to
    :meth:`stream_head` / :meth:`stream_data` / :meth:`stream_end` / :meth:`stream_reset`;
    apply :meth:`take_ops` to the stream after every call; run :meth:`handle_timer` at
    :meth:`next_deadline`; close the socket when :attr:`closed` and the output is written.
    """

    def __init__(self, front: HttpFront, opening: Open, settings: WsSettings, now: float) -> None:
        self._front = front
        self._opening = opening
        self._settings = settings
        self._now = now
        self._ops: list[StreamOp] = [StreamStart(opening.head)]
        self._relay: PeerRelay | None = None
        self._head_out = b""  # the 101 (and anything queued before it)
        self.phase = "opening"
        self._deadline: float | None = now + settings.open_timeout
        self.status: int | None = None  # the HTTP status the client got (101 or a denial)
        self._denial_unwritten = 0  # denial body bytes not yet written to the client

    # --- state ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Close the client socket once :meth:`data_to_send` is empty."""
        if self._relay is not None:
            return self._relay.done
        return self.phase == "done" or self._front.closed

    @property
    def close_code(self) -> int | None:
        return self._relay.close_code if self._relay is not None else None

    @property
    def wants_read(self) -> bool:
        if self._relay is not None:
            return self._relay.wants_read
        return self.phase == "opening" and self._front.wants_read

    @property
    def http_continues(self) -> bool:
        """After a denial: the client's connection may serve further HTTP requests (give
        the front back to the HTTP unit instead of closing the socket)."""
        return self.phase == "done" and self._relay is None and not self._front.closed

    def take_ops(self) -> list[StreamOp]:
        ops, self._ops = self._ops, []
        if self._relay is not None:
            ops += self._relay.take_ops()
        return ops

    def next_deadline(self) -> float | None:
        if self._relay is not None:
            return self._relay.next_deadline()
        return self._deadline if self.phase == "opening" else None

    # --- client side ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self._relay is not None:
            self._relay.receive_data(data, now)
        elif self.phase == "opening":
            # Bytes before the 101 wait in HttpFront (bounded by its head limit) and become
            # the WebSocket's first input; EOF means the client left.
            self._front.receive_data(data, now)
            if self._front.closed:
                self._end_opening(StreamCancel("client went away"))

    def data_to_send(self) -> bytes:
        out = self._head_out + self._front.data_to_send()
        self._head_out = b""
        if self._relay is not None:
            out += self._relay.data_to_send()
        return out

    def written(self) -> None:
        if self._relay is not None:
            self._relay.written()
        elif self._denial_unwritten and self.phase == "denied":
            self._ops.append(StreamConsumed(self._denial_unwritten))
            self._denial_unwritten = 0

    def set_stream_writable(self, writable: bool) -> None:
        if self._relay is not None:
            self._relay.set_stream_writable(writable)

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._relay is not None:
            self._relay.handle_timer(now)
        elif self.phase == "opening" and self._deadline is not None and now >= self._deadline:
            self._front.send_error(504, "the WebSocket was not accepted in time")
            self._end_opening(StreamCancel("no answer to the WebSocket upgrade in time"))

    def drain(self, now: float) -> None:
        """The gateway shuts down: close with 1001 (each side's answer is awaited)."""
        if self._relay is not None:
            self._relay.close(GOING_AWAY, "gateway shutting down", now)
        elif self.phase == "opening":
            self._front.send_error(503, "the gateway is shutting down")
            self._end_opening(StreamCancel("gateway shutting down"))

    # --- stream side ---------------------------------------------------------------------------

    def stream_head(self, head: ResponseHead, now: float) -> None:
        self._now = now
        if self.phase != "opening":
            return
        if head.status == 101:
            self._switch(head, now)
        elif head.status >= 200:
            self.phase = "denied"
            self.status = head.status
            self._front.send_response(head)
        else:
            self._front.send_error(502, "bad answer to the WebSocket upgrade")
            self._end_opening(StreamCancel(f"status {head.status} answering an upgrade"))

    def stream_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self._relay is not None:
            self._relay.far_data(data, now)
        elif self.phase == "denied":
            self._front.send_data(data)
            # credit once written: an app's long denial waits for a client that reads
            self._denial_unwritten += len(data)

    def stream_end(self, now: float) -> None:
        self._now = now
        if self._relay is not None:
            self._relay.far_end(now)
        elif self.phase == "denied":
            self._front.end_response()
            self._ops.append(StreamEnd())  # our side of a denied session carries nothing
            self.phase = "done"
        elif self.phase == "opening":
            self._front.send_error(502, "the receiver ended the WebSocket stream")
            self._end_opening(StreamCancel("stream ended without an answer"))

    def stream_reset(self, reason: str, now: float) -> None:
        """The stream was reset (or the receiver failed it): 1011, or 502 before the 101."""
        self.tunnel_lost(now, going_away=False, reason=reason)

    def tunnel_lost(self, now: float, *, going_away: bool = False, reason: str = "") -> None:
        """The tunnel is gone: 1001 if the gateway is going away, else 1011."""
        self._now = now
        if self._relay is not None:
            code = GOING_AWAY if going_away else INTERNAL_ERROR
            self._relay.far_gone(code, now, "gateway going away" if going_away else "")
        elif self.phase == "opening":
            self._front.send_error(502, "the receiver failed the WebSocket upgrade")
            self.phase = "done"
        elif self.phase == "denied":
            self._front.abort()
            self.phase = "done"
        self._ops = []  # the stream is gone: nothing more to do to it

    # --- internals -----------------------------------------------------------------------------

    def _end_opening(self, cancel: StreamCancel) -> None:
        self._ops.append(cancel)
        self.phase = "done"
        self._deadline = None

    def _switch(self, head: ResponseHead, now: float) -> None:
        chosen = _field(head.headers, "sec-websocket-protocol")
        if len(chosen) > 1 or (chosen and chosen[0] not in self._opening.subprotocols):
            self._front.send_error(502, "the app chose a subprotocol the client did not offer")
            self._end_opening(StreamCancel("subprotocol not offered by the client"))
            return
        extra = [(n, v) for n, v in strip_hop_by_hop(head.headers) if n.lower() not in _OWN_101]
        try:
            check_fields(extra, "accept header")
        except StrictError:
            extra = []
        accept = generate_accept_token(self._opening.key.encode("ascii")).decode("ascii")
        fields = [("upgrade", "websocket"), ("connection", "Upgrade")]
        fields.append(("sec-websocket-accept", accept))
        if chosen:
            fields.append(("sec-websocket-protocol", chosen[0]))
        fields += extra
        leftover = self._front.switch_protocols(fields)
        self._head_out = self._front.data_to_send()
        self.phase = "open"
        self.status = 101
        self._deadline = None
        conn = Connection(ConnectionType.SERVER, extensions=[], trailing_data=leftover)
        relay = PeerRelay(conn, self._settings.relay_limits(), now, abnormal_code=INTERNAL_ERROR)
        self._relay = relay
        relay.process(conn.events())
