"""The receiver's forward-mode WebSocket back end: a WebSocket client to the local service.

:class:`ForwardWebSocket` runs the handshake with the service on wsproto (its own key, the
client's end-to-end headers and offered subprotocols, no extensions), answers the stream
with the service's ``101`` or its refusal (relayed as the denial, body capped at 64 KiB),
then relays messages with :class:`~anpx_core.ws_relay.PeerRelay`. The driver owns the
socket: connect to the service, write :meth:`ForwardWebSocket.data_to_send`, feed what it
reads to :meth:`ForwardWebSocket.receive_data` (``b""`` at EOF), report
:meth:`ForwardWebSocket.written`, and call :meth:`ForwardWebSocket.connect_failed` when the
service cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from .headers import strip_hop_by_hop
from .meta import Headers, RequestHead, ResponseHead
from .strict import check_token, wire_bytes
from .ws_relay import GOING_AWAY, PeerRelay, WsSettings
from .wsstream import (
    HANDSHAKE_ONLY,
    StreamEnd,
    StreamOp,
    StreamSend,
    StreamStart,
    accept_head,
    deny_ops,
    subprotocols_of,
)

__all__ = ["ForwardWebSocket"]

#: Longest refusal body from the service that is passed on (the rest is dropped).
MAX_REJECT_BODY = 64 * 1024
_DENIAL_DROP = frozenset({"content-length", "transfer-encoding"})


def _str_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw]


class ForwardWebSocket:
    """One WebSocket session relayed to the local service (phases: handshake, open,
    denying, done). ``authority`` is the service's host:port, the Host sent when the
    client's request had none."""

    def __init__(self, head: RequestHead, authority: str, settings: WsSettings, now: float):
        self._settings = settings
        self._now = now
        self._ops: list[StreamOp] = []
        self._out: list[bytes] = []
        self._relay: PeerRelay | None = None
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._reject_left = MAX_REJECT_BODY
        self.phase = "handshake"
        self._deadline: float | None = now + settings.open_timeout
        host = authority
        extra: list[tuple[bytes, bytes]] = []
        try:
            offered = subprotocols_of(head.headers)
            for name in offered:
                check_token(name, "subprotocol")
            for name, value in strip_hop_by_hop(head.headers):
                low = name.lower()
                if low == "host":
                    host = value
                elif low not in HANDSHAKE_ONLY:
                    extra.append((wire_bytes(low), wire_bytes(value)))
            request = Request(
                host=host, target=head.target, extra_headers=extra, subprotocols=offered
            )
            self._out.append(self._ws.send(request))
        except Exception:  # wsproto/h11 refuse what they cannot send (any of their errors)
            self._deny(400, "cannot forward this WebSocket request: invalid header or target")

    # --- state ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Close the socket to the service once :meth:`data_to_send` is empty."""
        if self._relay is not None:
            return self._relay.done
        return self.phase == "done"

    @property
    def wants_read(self) -> bool:
        if self._relay is not None:
            return self._relay.wants_read
        return self.phase in ("handshake", "denying")

    def take_ops(self) -> list[StreamOp]:
        ops, self._ops = self._ops, []
        if self._relay is not None:
            ops += self._relay.take_ops()
        return ops

    def next_deadline(self) -> float | None:
        if self._relay is not None:
            return self._relay.next_deadline()
        return self._deadline if self.phase == "handshake" else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._relay is not None:
            self._relay.handle_timer(now)
        elif self.phase == "handshake" and self._deadline is not None and now >= self._deadline:
            self._deny(504, "the local service did not answer the WebSocket upgrade in time")

    # --- service side --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        if self._relay is not None:
            out += self._relay.data_to_send()
        return out

    def written(self) -> None:
        if self._relay is not None:
            self._relay.written()

    def connect_failed(self, reason: str = "") -> None:
        """The service could not be reached (the reason goes to the log, not the client)."""
        if self.phase == "handshake":
            self._deny(502, "the local service is not reachable")

    def receive_data(self, data: bytes, now: float) -> None:
        self._now = now
        if self._relay is not None:
            self._relay.receive_data(data, now)
            return
        if self.phase not in ("handshake", "denying"):
            return
        try:
            self._ws.receive_data(data or None)
            events = list(self._ws.events())
        except Exception:
            events = None
        if events is None:
            if self.phase == "handshake":
                self._deny(502, "the local service sent a malformed WebSocket answer")
            else:
                self._end_denial()
            return
        for i, ev in enumerate(events):
            if isinstance(ev, AcceptConnection):
                self._accepted(ev, events[i + 1 :], now)
                return
            if isinstance(ev, RejectConnection):
                headers = [
                    (n, v)
                    for n, v in strip_hop_by_hop(_str_headers(ev.headers))
                    if n not in _DENIAL_DROP
                ]
                self._ops.append(StreamStart(ResponseHead(ev.status_code, "", headers)))
                self.phase = "denying"
                self._deadline = None
                if not ev.has_body:
                    self._end_denial()
                    return
            elif isinstance(ev, RejectData) and self.phase == "denying":
                part = ev.data[: self._reject_left]
                self._reject_left -= len(part)
                if part:
                    self._ops.append(StreamSend(bytes(part)))
                if ev.body_finished or self._reject_left <= 0:
                    self._end_denial()
                    return
        if not data and self.phase == "handshake":
            self._deny(502, "the local service closed the connection during the upgrade")
        elif not data and self.phase == "denying":
            self._end_denial()

    # --- stream side ---------------------------------------------------------------------------

    def set_stream_writable(self, writable: bool) -> None:
        if self._relay is not None:
            self._relay.set_stream_writable(writable)

    def stream_data(self, data: bytes, now: float) -> None:
        if self._relay is not None:
            self._relay.far_data(data, now)

    def stream_end(self, now: float) -> None:
        if self._relay is not None:
            self._relay.far_end(now)

    def stream_reset(self, now: float) -> None:
        """The stream was reset or the tunnel dropped: the service sees 1001 (going away)."""
        if self._relay is not None:
            self._relay.far_gone(GOING_AWAY, now, "client went away")
            self._ops = []
        else:
            self.phase = "done"
            self._ops = []

    def going_away(self, now: float, reason: str) -> None:
        """This side shuts down: close with 1001 both ways (the service's and the client's
        answers are awaited, at most close_timeout); a handshake under way is denied 503."""
        if self._relay is not None:
            self._relay.close(GOING_AWAY, reason, now)
        elif self.phase == "handshake":
            self._deny(503, "the receiver is shutting down")

    # --- internals -----------------------------------------------------------------------------

    def _deny(self, status: int, text: str) -> None:
        self._ops += deny_ops(status, text)
        self.phase = "done"
        self._deadline = None

    def _end_denial(self) -> None:
        self._ops.append(StreamEnd())
        self.phase = "done"

    def _accepted(self, ev: AcceptConnection, rest: list[Any], now: float) -> None:
        headers = _str_headers(ev.extra_headers)
        self._ops.append(StreamStart(accept_head(ev.subprotocol, strip_hop_by_hop(headers))))
        self.phase = "open"
        self._deadline = None
        relay = PeerRelay(
            self._ws,  # type: ignore[arg-type]  # WSConnection has the Connection API
            self._settings.relay_limits(),
            now,
            abnormal_code=GOING_AWAY,
        )
        self._relay = relay
        relay.process(rest)
        relay.process(self._ws.events())
