"""Streams multiplexed over one tunnel: ANPX messages, stream states and flow control.

A :class:`TunnelSession` sits on one open WebSocket (gateway or receiver side).
Each HTTP exchange is a stream named by its request_id. The session turns
outgoing heads and body parts into frames, incoming frames into
:class:`StreamEvent` s for known streams, and enforces bounded buffering:

* With a peer that negotiated the ``flow`` extension (handshake header
  ``ANPX-Extensions: flow=<window>``), every stream has a credit window: body
  bytes sent minus credit granted by the peer never exceeds the peer's window,
  and we grant credit only as our own consumer (client socket, app) takes the
  bytes. One slow stream never stalls the others.
* With a v1 peer there is no per-stream flow control; the session reports the
  connection's output backlog and the engine pauses whole connections.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from . import frames as F
from . import messages as M
from .errors import ProtocolError
from .meta import RequestHead, ResponseHead
from .strict import StrictError, parse_uint

log = logging.getLogger("anpx.tunnel")

EXTENSIONS_HEADER = "anpx-extensions"
CONTROL_CREDIT = "anpx.credit"
CONTROL_DRAIN = "anpx.drain"

DEFAULT_STREAM_WINDOW = 1024 * 1024  # bulk needs ~1 MiB in flight; see docs/performance.md
#: Output backlog (bytes not yet taken by the driver) above which a
#: connection counts as full and producers are paused.
DEFAULT_HIGH_WATER = 1024 * 1024
_BAD_FRAME = "bad frame from peer: "
#: Cancellations that are part of a normal exchange (logged at debug level only).
_ROUTINE_CANCELS = frozenset({"response complete"})
#: The largest flow window or credit grant a peer may announce (2 GiB - 1); a larger
#: value is refused as malformed, like any other non-number.
MAX_WINDOW = 2**31 - 1
#: Recently ended streams whose late frames are dropped quietly.
_RECENTLY_CLOSED = 4096


def offer_extensions(window: int | None) -> list[tuple[str, str]]:
    """Handshake header announcing our flow-control window (None: v1 behaviour)."""
    return [] if window is None else [(EXTENSIONS_HEADER, f"flow={window}")]


def parse_extensions(headers: list[tuple[str, str]]) -> int | None:
    """The peer's flow window from its handshake headers, or None for a v1 peer."""
    for name, value in headers:
        if name.lower() != EXTENSIONS_HEADER:
            continue
        for item in value.split(","):
            key, _, arg = item.strip().partition("=")
            if key.strip() != "flow":
                continue
            try:
                return parse_uint(arg.strip(), MAX_WINDOW, "flow window", minimum=1)
            except StrictError:
                continue  # not a window we can use: as if not offered (v1 behaviour)
    return None


# --- events ---------------------------------------------------------------------------------


class StreamEvent:
    """What a :class:`TunnelSession` reports about its streams and the tunnel.

    Each layer has one such base class: dispatch with ``isinstance`` or ``match``.
    """

    __slots__ = ()


@dataclass(slots=True)
class StreamHead(StreamEvent):
    request_id: str
    head: RequestHead | ResponseHead


@dataclass(slots=True)
class StreamData(StreamEvent):
    request_id: str
    data: bytes


@dataclass(slots=True)
class StreamEnd(StreamEvent):
    request_id: str


@dataclass(slots=True)
class StreamMessage(StreamEvent):
    """A whole message that arrived in one frame: what :class:`StreamHead`,
    :class:`StreamData` (when ``body`` is not empty) and :class:`StreamEnd` report, as one
    event, so that a consumer handles the usual small message in one dispatch. A consumer
    without special handling takes the three events of :func:`split_message` instead."""

    request_id: str
    head: RequestHead | ResponseHead
    body: bytes


def split_message(event: StreamMessage) -> list[StreamEvent]:
    """The events the three-event path reports for the same message, in order."""
    rid = event.request_id
    if event.body:
        return [StreamHead(rid, event.head), StreamData(rid, event.body), StreamEnd(rid)]
    return [StreamHead(rid, event.head), StreamEnd(rid)]


@dataclass(slots=True)
class StreamReset(StreamEvent):
    """The peer cancelled or failed the stream (an ERROR frame), or it broke a rule."""

    request_id: str
    reason: str
    by_peer: bool = True


@dataclass(slots=True)
class StreamWritable(StreamEvent):
    """Credit arrived or the backlog drained: the producer of this stream may resume."""

    request_id: str


@dataclass(slots=True)
class PeerDraining(StreamEvent):
    """The peer asked for no new streams (it is shutting down)."""


@dataclass(slots=True)
class TunnelBroken(StreamEvent):
    """The peer sent bytes that cannot be framed; the tunnel must close (code 1002)."""

    reason: str


# --- per-stream state ----------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    encoder: M.MessageEncoder | None = None
    send_credit: int = 0  # flow mode: body bytes we may still send
    blocked: list[bytes] = field(default_factory=list)  # body waiting for credit
    blocked_bytes: int = 0
    end_pending: bool = False  # end() called while body was still blocked
    sent_end: bool = False
    received_end: bool = False
    recv_outstanding: int = 0  # flow mode: peer may still send this much
    recv_unacked: int = 0  # consumed by us, credit not yet granted
    want_writable: bool = False
    window: int = 0  # a receive window above the session's (widen()); 0: the session's


class TunnelSocket(Protocol):
    """What a session sends through: an open WsServer or WsClient."""

    def send_binary(self, data: bytes) -> None: ...

    def send_control(self, message: dict[str, Any], *, v1_untyped: bool = False) -> None: ...


class TunnelSession:
    """Stream multiplexer over one WebSocket.

    ``ws`` is the open :class:`~anpx_core.websocket.WsServer` or ``WsClient``
    (anything with ``send_binary`` / ``send_control``); ``local_window`` is the
    window we announced (None: we did not offer flow control) and
    ``peer_window`` the one the peer announced. Flow control is on only when
    both are set.
    """

    def __init__(
        self,
        ws: TunnelSocket,
        *,
        accepts: type[RequestHead] | type[ResponseHead],
        local_window: int | None,
        peer_window: int | None,
        send_frame_size: int = M.DEFAULT_SEND_FRAME_SIZE,
        limits: M.Limits | None = None,
    ) -> None:
        self.ws = ws
        self._accepts = accepts
        self.flow = local_window is not None and peer_window is not None
        self.local_window = local_window or 0
        self.peer_window = peer_window or 0
        self.send_frame_size = send_frame_size
        limits = limits or M.Limits()
        if peer_window is None:
            # A v1 peer sends whole bodies in one frame: allow up to v1_max_frame_size, and drop
            # a larger one as it arrives (resetting only its stream) rather than the tunnel.
            size = max(limits.max_frame_size, limits.v1_max_frame_size)
            limits = replace(limits, max_frame_size=size)
            if hasattr(ws, "discard_oversized"):
                ws.max_message_size = size  # type: ignore[attr-defined]
                ws.discard_oversized = True
        self._decoder = M.MessageDecoder(limits)
        self._streams: dict[str, _Stream] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._credit_due: dict[str, int] = {}
        self.peer_draining = False
        self.bytes_in = 0
        self.bytes_out = 0

    # --- bookkeeping ---------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def has_stream(self, request_id: str) -> bool:
        return request_id in self._streams

    def unsent(self, request_id: str) -> int:
        """Body bytes of this stream waiting for credit (0 for a finished stream)."""
        stream = self._streams.get(request_id)
        return 0 if stream is None else stream.blocked_bytes

    def _new_stream(self, request_id: str) -> _Stream:
        stream = _Stream(send_credit=self.peer_window, recv_outstanding=self.local_window)
        self._streams[request_id] = stream
        return stream

    def _finish(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._credit_due.pop(request_id, None)
        self._decoder.forget(request_id)
        self._closed[request_id] = None
        if len(self._closed) > _RECENTLY_CLOSED:
            self._closed.popitem(last=False)

    def _maybe_finish(self, request_id: str, stream: _Stream) -> None:
        if stream.sent_end and stream.received_end:
            self._finish(request_id)

    # --- sending -------------------------------------------------------------------------

    def start(
        self, request_id: str, head: RequestHead | ResponseHead, meta: bytes | None = None
    ) -> None:
        """Begin our message on a stream (the gateway opens streams this way). ``meta``:
        the head's meta, from :meth:`check_head`."""
        stream = self._streams.get(request_id)
        if stream is None:
            stream = self._new_stream(request_id)
        if stream.encoder is not None or stream.sent_end:
            raise RuntimeError(f"stream {request_id} already has a message head")
        stream.encoder = M.MessageEncoder(head, request_id, self.send_frame_size, meta=meta)

    def check_head(self, request_id: str, head: RequestHead | ResponseHead) -> bytes:
        """Raise what :meth:`start` would raise for ``head`` now, without starting the
        message; return the head's meta, for the later :meth:`start` or
        :meth:`send_message` (a head held until its body is known)."""
        stream = self._streams.get(request_id)
        if stream is not None and (stream.encoder is not None or stream.sent_end):
            raise RuntimeError(f"stream {request_id} already has a message head")
        meta = M.head_meta(head)
        M.check_head(meta, request_id, self.send_frame_size)
        return meta

    def send_message(
        self,
        request_id: str,
        head: RequestHead | ResponseHead,
        body: bytes,
        meta: bytes | None = None,
    ) -> None:
        """:meth:`start`, :meth:`send` (when ``body`` is not empty) and :meth:`end` for a
        message known whole: the same frames, the usual single one built without a
        MessageEncoder. ``meta``: the head's meta, from :meth:`check_head`."""
        stream = self._streams.get(request_id)
        if stream is not None and (stream.encoder is not None or stream.sent_end):
            raise RuntimeError(f"stream {request_id} already has a message head")
        frame = M.whole_frame(head, request_id, body, self.send_frame_size, meta)
        credit = self.peer_window if stream is None else stream.send_credit
        if frame is None or (self.flow and len(body) > credit):
            # more than one frame, more than the credit, or a head the encoder refuses
            self.start(request_id, head, meta)
            self.send(request_id, body)
            self.end(request_id)
            return
        if stream is None:
            stream = self._new_stream(request_id)
        if self.flow:
            stream.send_credit -= len(body)
        self.bytes_out += len(frame)
        self.ws.send_binary(frame)
        stream.sent_end = True
        self._maybe_finish(request_id, stream)

    def _emit(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.bytes_out += len(frame)
            self.ws.send_binary(frame)

    def send(self, request_id: str, data: bytes) -> None:
        """Queue body bytes; in flow mode bytes beyond the credit wait for it."""
        stream = self._streams.get(request_id)
        if stream is None or stream.encoder is None or stream.sent_end or not data:
            return
        if not self.flow:
            self._emit(stream.encoder.data(data))
            return
        if stream.blocked:
            stream.blocked.append(data)
            stream.blocked_bytes += len(data)
            return
        allowed = min(len(data), stream.send_credit)
        if allowed:
            stream.send_credit -= allowed
            self._emit(stream.encoder.data(data[:allowed] if allowed < len(data) else data))
        if allowed < len(data):
            rest = data[allowed:]
            stream.blocked.append(rest)
            stream.blocked_bytes += len(rest)
            # More credit comes only once the peer has what we sent: flush it out now.
            self._emit(stream.encoder.flush())

    def end(self, request_id: str) -> None:
        """Finish our message (the last frame goes out once blocked body is sent)."""
        stream = self._streams.get(request_id)
        if stream is None or stream.encoder is None or stream.sent_end:
            return
        if stream.blocked:
            stream.end_pending = True
            return
        self._emit(stream.encoder.end())
        stream.sent_end = True
        self._maybe_finish(request_id, stream)

    def flush(self, request_id: str) -> None:
        """Send held body now rather than waiting to fill a frame (streaming)."""
        stream = self._streams.get(request_id)
        if stream is not None and stream.encoder is not None and not stream.sent_end:
            self._emit(stream.encoder.flush())

    def writable(self, request_id: str) -> bool:
        """May the producer of this stream hand us more body now?"""
        stream = self._streams.get(request_id)
        if stream is None:
            return True  # gone: sends are dropped, never block the producer
        # v1: no per-stream limit; the engine applies connection-level backpressure
        ok = not self.flow or (not stream.blocked and stream.send_credit > 0)
        if not ok:
            stream.want_writable = True
        return ok

    def cancel(self, request_id: str, reason: str) -> None:
        """Abort a stream and tell the peer with an ERROR frame."""
        if request_id in self._streams:
            level = logging.DEBUG if reason in _ROUTINE_CANCELS else logging.INFO
            log.log(level, "stream %s cancelled: %s", request_id, reason)
            self._finish(request_id)
            self.ws.send_binary(M.encode_error(reason, request_id))

    # --- receiving -----------------------------------------------------------------------

    def receive_binary(self, data: bytes) -> list[StreamEvent]:
        self.bytes_in += len(data)
        decoder = self._decoder
        if type(data) is bytes:
            whole = F.whole_message(data, decoder.limits.max_frame_size, M.MAX_REQUEST_ID_BYTES)
            if whole is not None:  # the common case: a whole message in one plain frame
                return self._receive_whole(*whole)
        frame = None
        try:
            frame = F.decode_frame(data, decoder.limits.max_frame_size)
            if self._accepts is ResponseHead and frame.type != F.TYPE_ERROR:
                # A gateway only takes responses to requests it sent: anything else is refused
                # before decoding, so a peer cannot make us hold chunks of made-up messages.
                rid = _frame_request_id(frame)
                if frame.type == F.TYPE_REQUEST and rid is not None:
                    return self._reset(rid, "unexpected message type on this tunnel")
                if rid not in self._streams:
                    return []
            decoded = decoder.receive(frame)
        except ProtocolError as exc:
            return self._refused(exc)
        except Exception:  # the crash barrier: a bug decoding one frame resets its stream
            rid = _frame_request_id(frame) if frame is not None else None
            log.exception("internal error decoding a frame of stream %s", rid)
            if rid is None:
                return [TunnelBroken("internal error decoding a frame")]
            return self._reset(rid, "internal error")
        events: list[StreamEvent] = []
        for event in decoded:
            rid = event.request_id
            if isinstance(event, M.ErrorReceived):
                if rid is not None and rid in self._streams:
                    self._finish(rid)
                    text = event.text or "reset by peer"
                    # the peer refused a frame of ours: our fault, so louder than a plain cancel
                    level = logging.ERROR if text.startswith(_BAD_FRAME) else logging.INFO
                    log.log(level, "stream %s reset by peer: %s", rid, text)
                    events.append(StreamReset(rid, text))
                elif rid is None:
                    log.warning("peer reported an error for no stream: %s", event.text)
                continue
            assert rid is not None
            if rid in self._closed:
                # late frames of a stream we ended or cancelled: keep no partial message
                self._decoder.forget(rid)
                continue
            stream = self._streams.get(rid)
            if isinstance(event, M.HeadReceived):
                if not isinstance(event.head, self._accepts):
                    events.extend(self._reset(rid, "unexpected message type on this tunnel"))
                    continue
                if stream is None:
                    if self._accepts is ResponseHead:
                        # a response for a stream we never opened
                        self._decoder.forget(rid)
                        continue
                    stream = self._new_stream(rid)
                events.append(StreamHead(rid, event.head))
            elif stream is None:
                continue
            elif isinstance(event, M.BodyReceived):
                if self.flow:
                    stream.recv_outstanding -= len(event.data)
                    if stream.recv_outstanding < 0:
                        events.extend(self._reset(rid, "peer exceeded its flow-control window"))
                        continue
                events.append(StreamData(rid, event.data))
            else:
                stream.received_end = True
                events.append(StreamEnd(rid))
                self._maybe_finish(rid, stream)
        return events

    def _refused(self, exc: ProtocolError) -> list[StreamEvent]:
        """A frame the decoder refused: reset its stream, or break the tunnel if it has none."""
        if exc.request_id is None:
            return [TunnelBroken(str(exc))]
        if exc.request_id in self._closed:
            return []  # the rest of a message we stopped decoding when its stream ended
        return self._reset(exc.request_id, f"{_BAD_FRAME}{exc}")

    def _receive_whole(
        self, frame_type: int, rid: str, meta: bytes, body: bytes
    ) -> list[StreamEvent]:
        """A whole message in one frame (frames.whole_message): what receive_binary's general
        path makes of it (the same checks in the same order), without a Frame or the
        decoder's head, body and end events, reported as one :class:`StreamMessage`."""
        try:
            if self._accepts is ResponseHead:  # see receive_binary
                if frame_type == F.TYPE_REQUEST:
                    return self._reset(rid, "unexpected message type on this tunnel")
                if rid not in self._streams:
                    return []
            head = self._decoder.whole_head(frame_type, rid, meta)
        except ProtocolError as exc:
            return self._refused(exc)
        except Exception:  # the crash barrier, as in receive_binary
            log.exception("internal error decoding a frame of stream %s", rid)
            return self._reset(rid, "internal error")
        if rid in self._closed:  # as below: late frames of a stream that ended
            self._decoder.forget(rid)
            return []
        if not isinstance(head, self._accepts):
            return self._reset(rid, "unexpected message type on this tunnel")
        stream = self._streams.get(rid)
        if stream is None:
            if self._accepts is ResponseHead:
                self._decoder.forget(rid)
                return []
            stream = self._new_stream(rid)
        if body and self.flow:
            stream.recv_outstanding -= len(body)
            if stream.recv_outstanding < 0:
                events: list[StreamEvent] = [StreamHead(rid, head)]
                return events + self._reset(rid, "peer exceeded its flow-control window")
        stream.received_end = True
        self._maybe_finish(rid, stream)
        return [StreamMessage(rid, head, body)]

    def receive_discarded(self, prefix: bytes, size: int) -> list[StreamEvent]:
        """A binary message over the size limit was dropped unread: reset only its stream."""
        self.bytes_in += size
        rid = _prefix_request_id(prefix)
        limit = self._decoder.limits.max_frame_size
        why = f"message of over {size} bytes exceeds the {limit}-byte limit"
        # A receiver answers even a request it never saw begin, so the gateway can fail it.
        if rid is None or (rid not in self._streams and self._accepts is ResponseHead):
            log.warning("dropped a %s", why)
            return []
        if rid not in self._streams:
            log.warning("stream %s reset: %s", rid, why)
        return self._reset(rid, why)

    def _reset(self, request_id: str, reason: str) -> list[StreamEvent]:
        known = request_id in self._streams
        if known:
            log.warning("stream %s reset: %s", request_id, reason)
        self._finish(request_id)
        self.ws.send_binary(M.encode_error(reason, request_id))
        return [StreamReset(request_id, reason, by_peer=False)] if known else []

    def receive_control(self, message: dict[str, Any]) -> list[StreamEvent]:
        kind = message.get("type")
        if kind == CONTROL_CREDIT and self.flow:
            return self._credit(message.get("credits"))
        if kind == CONTROL_DRAIN:
            self.peer_draining = True
            return [PeerDraining()]
        if kind not in ("v1.auth", "v1.status", CONTROL_CREDIT):
            log.debug("ignoring control message of unknown type %r", kind)
        if kind == "v1.auth" and self._accepts is ResponseHead:
            # A v1 receiver's plaintext auth message. Receivers that must authenticate were
            # checked in the upgrade already (a v1 one cannot pass), so this one may serve.
            self.ws.send_control({"status": "authenticated"}, v1_untyped=True)
        return []

    def greet_v1_gateway(self) -> None:
        """A v1 gateway waits for the receiver's auth message before it routes requests."""
        self.ws.send_control({"auth_enabled": False}, v1_untyped=True)

    def _credit(self, credits: object) -> list[StreamEvent]:
        if not isinstance(credits, list):
            return []
        events: list[StreamEvent] = []
        for item in credits:
            if not (isinstance(item, list) and len(item) == 2 and type(item[1]) is int):
                continue  # type() is int: a JSON true is not a credit of 1
            rid, amount = item
            stream = self._streams.get(rid) if isinstance(rid, str) else None
            if stream is None or not 0 < amount <= MAX_WINDOW:
                continue
            stream.send_credit += amount
            self._release_blocked(rid, stream)
            if stream.want_writable and not stream.blocked and stream.send_credit > 0:
                stream.want_writable = False
                events.append(StreamWritable(rid))
        return events

    def _release_blocked(self, request_id: str, stream: _Stream) -> None:
        assert stream.encoder is not None or not stream.blocked
        while stream.blocked and stream.send_credit > 0:
            part = stream.blocked[0]
            take = min(len(part), stream.send_credit)
            if take == len(part):
                stream.blocked.pop(0)
            else:
                stream.blocked[0] = part[take:]
                part = part[:take]
            stream.blocked_bytes -= take
            stream.send_credit -= take
            self._emit(stream.encoder.data(part))  # type: ignore[union-attr]
        if stream.end_pending and not stream.blocked:
            stream.end_pending = False
            self.end(request_id)
        else:
            self.flush(request_id)  # also when credit ran out: the peer must see these bytes

    def consumed(self, request_id: str, nbytes: int) -> None:
        """Our consumer took ``nbytes`` of this stream's body: the peer may send more."""
        if not self.flow or nbytes <= 0:
            return
        stream = self._streams.get(request_id)
        if stream is None or stream.received_end:
            return
        stream.recv_unacked += nbytes
        if stream.recv_unacked >= (stream.window or self.local_window) // 4:
            self._credit_due[request_id] = self._credit_due.get(request_id, 0) + stream.recv_unacked
            stream.recv_outstanding += stream.recv_unacked
            stream.recv_unacked = 0

    def widen(self, request_id: str, window: int) -> None:
        """Let the peer send up to ``window`` bytes of this stream ahead of our consumer,
        above the session's window (TCP streams, ``tcp_stream_window``). Only credit goes
        on the wire (sent by the next :meth:`flush_credits`): any peer with flow control
        honours it. Call it before the stream's first body byte arrives; a no-op when the
        window is not larger, the stream unknown or flow control off."""
        stream = self._streams.get(request_id)
        if not self.flow or stream is None or stream.received_end or stream.window:
            return
        extra = min(window, MAX_WINDOW) - self.local_window
        if extra <= 0:
            return
        stream.window = self.local_window + extra
        stream.recv_outstanding += extra
        self._credit_due[request_id] = self._credit_due.get(request_id, 0) + extra

    def flush_credits(self) -> None:
        """Send the credit granted since the last call as one control message."""
        if self._credit_due:
            credits = [[rid, n] for rid, n in self._credit_due.items()]
            self._credit_due.clear()
            self.ws.send_control({"type": CONTROL_CREDIT, "credits": credits})

    def send_drain(self) -> None:
        self.ws.send_control({"type": CONTROL_DRAIN})

    def abandon(self) -> list[str]:
        """The tunnel is gone: forget every stream, return their request_ids."""
        ids = list(self._streams)
        for rid in ids:
            self._finish(rid)
        return ids


def _prefix_request_id(prefix: bytes) -> str | None:
    """The request_id of a frame from its first bytes: the first TLV, as every sender puts it."""
    head = F.HEADER_SIZE
    if len(prefix) < head + F.TLV_HEADER_SIZE or prefix[:4] != F.MAGIC:
        return None
    tag, length = prefix[head], int.from_bytes(prefix[head + 1 : head + 5], "big")
    start = head + F.TLV_HEADER_SIZE
    if tag != F.TAG_REQUEST_ID or not 0 < length <= M.MAX_REQUEST_ID_BYTES:
        return None
    if len(prefix) < start + length:
        return None
    try:
        return prefix[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _frame_request_id(frame: F.Frame) -> str | None:
    """The request_id TLV of a frame, or None (absent or not UTF-8: the decoder says why)."""
    for tag, value in frame.tlvs:
        if tag == F.TAG_REQUEST_ID:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None
