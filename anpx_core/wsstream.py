"""WebSocket streams over ANPX: the ``ws`` extension's codec (standard library only).

A WebSocket session is one ANPX stream (docs/protocol.md section 20):

* the gateway opens it with a request head: ``GET <target>`` with ``upgrade: websocket``
  among its headers and the client's offered subprotocols in ``sec-websocket-protocol``;
* the receiver answers ``101`` (accepted; ``sec-websocket-protocol`` names the chosen
  subprotocol) or any status from 200 (an HTTP denial, whose body is sent to the client);
* after a 101 both message bodies are sequences of **records** (``kind u8 | length u32 |
  payload``), each direction ending with a CLOSE record and then the message's end.

Records are carried in ``http_body`` TLVs, so the flow-control credit of section 17 applies
unchanged (record headers count as body bytes) and one slow WebSocket stalls only its own
stream. A record may span frames and a frame may hold several records.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .errors import ProtocolError
from .meta import Headers, RequestHead, ResponseHead
from .strict import StrictError, parse_uint

__all__ = [
    "ABNORMAL",
    "MAX_PIECE",
    "MIN_WS_WINDOW",
    "WS_VERSION",
    "CloseRecord",
    "MessagePiece",
    "Record",
    "RecordDecoder",
    "accept_head",
    "close_sendable",
    "deny_ops",
    "encode_close",
    "encode_message",
    "encode_piece",
    "is_open_head",
    "offer_ws_extensions",
    "open_head",
    "parse_ws_extension",
    "subprotocols_of",
    "ws_in_effect",
]

EXTENSIONS_HEADER = "anpx-extensions"
#: Version of the record layer this module speaks (``ws=1`` in ``anpx-extensions``).
WS_VERSION = 1
#: Both flow windows must be at least this large for ``ws`` to be in effect: a receiver
#: grants credit for a record only once it is consumed whole, so a window must hold a
#: largest record (MAX_PIECE + 5) plus the quarter-window of credit it batches.
MIN_WS_WINDOW = 128 * 1024

KIND_TEXT = 0x01  # a text message's last (or only) piece
KIND_BINARY = 0x02
KIND_CLOSE = 0x08
KIND_TEXT_MORE = 0x81  # a text message's piece, more pieces follow
KIND_BINARY_MORE = 0x82
_DATA_KINDS = {
    KIND_TEXT: (True, True),
    KIND_BINARY: (False, True),
    KIND_TEXT_MORE: (True, False),
    KIND_BINARY_MORE: (False, False),
}
#: Largest payload of one data record; longer messages are sent as several pieces.
MAX_PIECE = 64 * 1024
#: Largest CLOSE reason in bytes (a Close frame's payload is at most 125 bytes).
MAX_REASON = 123
#: In a CLOSE record: the WebSocket on the sender's side ended without a Close frame.
ABNORMAL = 1006
_RECORD = struct.Struct(">BI")
_CODE = struct.Struct(">H")


# --- handshake: the extension -------------------------------------------------------------


def offer_ws_extensions(window: int | None, ws: bool = True) -> list[tuple[str, str]]:
    """The ``anpx-extensions`` header announcing flow control and, when the window allows
    it, WebSocket streams (section 20.1). ``window`` None: no extensions (v1 behaviour)."""
    if window is None:
        return []
    value = f"flow={window}"
    if ws and window >= MIN_WS_WINDOW:
        value += f", ws={WS_VERSION}"
    return [(EXTENSIONS_HEADER, value)]


def parse_ws_extension(headers: Iterable[tuple[str, str]]) -> int | None:
    """The ``ws`` version the peer announced, or None (absent or not a version we read)."""
    for name, value in headers:
        if name.lower() != EXTENSIONS_HEADER:
            continue
        for item in value.split(","):
            key, _, arg = item.strip().partition("=")
            if key.strip() != "ws":
                continue
            try:
                version = parse_uint(arg.strip(), 999, "ws version", minimum=1)
            except StrictError:
                continue
            if version == WS_VERSION:
                return version
    return None


def ws_in_effect(
    local_window: int | None, peer_window: int | None, peer_headers: Iterable[tuple[str, str]]
) -> bool:
    """May WebSocket streams be opened on this tunnel? Both sides announced ``ws=1`` (we did
    exactly when our window is at least MIN_WS_WINDOW) and flow control is on with both
    windows at least MIN_WS_WINDOW."""
    return (
        local_window is not None
        and peer_window is not None
        and local_window >= MIN_WS_WINDOW
        and peer_window >= MIN_WS_WINDOW
        and parse_ws_extension(peer_headers) == WS_VERSION
    )


# --- stream heads -----------------------------------------------------------------------------

# Fields of the client's handshake that concern one hop only: never carried in an open head.
HANDSHAKE_ONLY = frozenset(
    {
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)


def subprotocols_of(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The subprotocols offered in ``sec-websocket-protocol`` fields, in order (empty items
    dropped); the caller checks they are tokens."""
    return [
        item.strip()
        for name, value in headers
        if name.lower() == "sec-websocket-protocol"
        for item in value.split(",")
        if item.strip()
    ]


def open_head(target: str, headers: Headers, subprotocols: list[str]) -> RequestHead:
    """The head that opens a WebSocket stream (section 20.2): ``headers`` are the client's
    end-to-end fields (the handshake's own are dropped here), then the upgrade marker."""
    kept = [(n, v) for n, v in headers if n.lower() not in HANDSHAKE_ONLY]
    kept += [("connection", "upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13")]
    if subprotocols:
        kept.append(("sec-websocket-protocol", ", ".join(subprotocols)))
    return RequestHead("GET", target, kept)


def is_open_head(head: RequestHead) -> bool:
    """Does this request head open a WebSocket stream (on a tunnel where ``ws`` is on)?"""
    return head.method == "GET" and any(
        name.lower() == "upgrade" and value.strip().lower() == "websocket"
        for name, value in head.headers
    )


def accept_head(subprotocol: str | None, headers: Iterable[tuple[str, str]] = ()) -> ResponseHead:
    """The receiver's answer accepting a WebSocket stream (section 20.2)."""
    kept = [(n, v) for n, v in headers if n.lower() not in HANDSHAKE_ONLY]
    if subprotocol is not None:
        kept.append(("sec-websocket-protocol", subprotocol))
    return ResponseHead(101, "Switching Protocols", kept)


# --- what a unit asks of its stream --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Begin our message on the stream with this head (and flush it out at once)."""

    head: RequestHead | ResponseHead


@dataclass(frozen=True, slots=True)
class StreamSend:
    data: bytes  # records (after a 101) or a denial's body


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """End our message (after the CLOSE record, or a denial's body)."""


@dataclass(frozen=True, slots=True)
class StreamCancel:
    reason: str  # reset the stream (an ERROR frame): a rule was broken or a side failed


@dataclass(frozen=True, slots=True)
class StreamConsumed:
    nbytes: int  # body bytes of the peer's our consumer took: grant credit


StreamOp = StreamStart | StreamSend | StreamEnd | StreamCancel | StreamConsumed


def apply_ops(session: Any, request_id: str, ops: Iterable[StreamOp]) -> None:
    """Carry out a unit's stream operations on a TunnelSession (what a coordinator does)."""
    for op in ops:
        if isinstance(op, StreamSend):
            session.send(request_id, op.data)
            session.flush(request_id)
        elif isinstance(op, StreamConsumed):
            session.consumed(request_id, op.nbytes)
        elif isinstance(op, StreamStart):
            session.start(request_id, op.head)
            session.flush(request_id)
        elif isinstance(op, StreamEnd):
            session.end(request_id)
        else:
            session.cancel(request_id, op.reason)


def deny_ops(status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> list[StreamOp]:
    """A receiver's short text/plain denial of a WebSocket stream (e.g. 503 when full)."""
    body = (text.rstrip("\n") + "\n").encode("utf-8")
    fields = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        *headers,
    ]
    return [
        StreamStart(ResponseHead(status, _phrase(status), fields)),
        StreamSend(body),
        StreamEnd(),
    ]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagePiece:
    """A piece of a WebSocket message: ``data`` is str for text, bytes for binary."""

    data: str | bytes
    fin: bool  # the message's last piece

    @property
    def text(self) -> bool:
        return isinstance(self.data, str)


@dataclass(frozen=True, slots=True)
class CloseRecord:
    code: int | None  # None: the Close frame had no status code (1005)
    reason: str = ""


Record = MessagePiece | CloseRecord


def close_sendable(code: int) -> bool:
    """May ``code`` appear in a WebSocket Close frame (RFC 6455 section 7.4)?"""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _record(kind: int, payload: bytes) -> bytes:
    return _RECORD.pack(kind, len(payload)) + payload


def encode_piece(data: str | bytes, fin: bool) -> bytes:
    """Records for one piece of a message (split into MAX_PIECE pieces as needed)."""
    text = isinstance(data, str)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    more, last = (KIND_TEXT_MORE, KIND_TEXT) if text else (KIND_BINARY_MORE, KIND_BINARY)
    out = []
    while len(raw) > MAX_PIECE:
        out.append(_record(more, raw[:MAX_PIECE]))
        raw = raw[MAX_PIECE:]
    out.append(_record(last if fin else more, raw))
    return b"".join(out)


def encode_message(data: str | bytes) -> bytes:
    """Records for one whole message."""
    return encode_piece(data, True)


def encode_close(code: int | None, reason: str = "") -> bytes:
    """A CLOSE record. ``reason`` is cut to MAX_REASON bytes at a character boundary."""
    if code is None:
        return _record(KIND_CLOSE, b"")
    if not (close_sendable(code) or code == ABNORMAL):
        raise ValueError(f"close code {code} cannot be carried")
    raw = reason.encode("utf-8", "replace")
    if len(raw) > MAX_REASON:
        raw = raw[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _record(KIND_CLOSE, _CODE.pack(code) + raw)


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_record", message)


class RecordDecoder:
    """Records from a stream body split at arbitrary points (one decoder per direction).

    Raises :class:`ProtocolError` ``bad_record`` for a malformed record and ``too_large``
    for a message over ``max_message_size`` bytes; after an error it keeps raising.
    Holds at most one record (MAX_PIECE + 5 bytes) of input.
    """

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._text: bool | None = None  # the type of the message in progress
        self._size = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._closed = False
        self._error: ProtocolError | None = None

    @property
    def closed(self) -> bool:
        """A CLOSE record was decoded (nothing may follow it)."""
        return self._closed

    @property
    def in_message(self) -> bool:
        return self._text is not None

    def feed(self, data: bytes) -> list[Record]:
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def end(self) -> None:
        """The stream's body ended: a record cut short is ``bad_record``."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._error = _bad("stream ended inside a record")
            raise self._error

    def _feed(self, data: bytes) -> list[Record]:
        buf = self._buf
        buf += data
        out: list[Record] = []
        pos = 0
        while len(buf) - pos >= _RECORD.size:
            kind, length = _RECORD.unpack_from(buf, pos)
            if self._closed and not 0xF0 <= kind <= 0xFF:
                raise _bad("record after CLOSE")
            limit = 125 if kind == KIND_CLOSE else MAX_PIECE
            if length > limit and not 0xF0 <= kind <= 0xFF:
                raise _bad(f"record of {length} bytes over the {limit}-byte limit")
            if length > MAX_PIECE:  # an extension record we would skip: still bounded
                raise _bad(f"record of {length} bytes over the {MAX_PIECE}-byte limit")
            end = pos + _RECORD.size + length
            if len(buf) < end:
                break
            payload = bytes(buf[pos + _RECORD.size : end])
            pos = end
            record = self._decode(kind, payload)
            if record is not None:
                out.append(record)
        del buf[:pos]
        return out

    def _decode(self, kind: int, payload: bytes) -> Record | None:
        if kind == KIND_CLOSE:
            return self._close(payload)
        shape = _DATA_KINDS.get(kind)
        if shape is None:
            if 0xF0 <= kind <= 0xFF:
                return None  # reserved for extensions: skipped
            raise _bad(f"unknown record kind 0x{kind:02x}")
        text, fin = shape
        if self._text is not None and self._text != text:
            raise _bad("a piece of another type inside a fragmented message")
        self._text = text
        self._size += len(payload)
        if self._size > self.max_message_size:
            raise ProtocolError(
                "too_large", f"WebSocket message over {self.max_message_size} bytes"
            )
        data: str | bytes = payload
        if text:
            try:
                data = self._utf8.decode(payload, final=fin)
            except UnicodeDecodeError:
                raise _bad("invalid UTF-8 in a text message") from None
        if fin:
            self._text = None
            self._size = 0
            self._utf8.reset()
        return MessagePiece(data, fin)

    def _close(self, payload: bytes) -> CloseRecord:
        if self._text is not None:
            # RFC 6455 allows a Close between fragments; the unfinished message is dropped
            self._text = None
            self._size = 0
            self._utf8.reset()
        self._closed = True
        if not payload:
            return CloseRecord(None, "")
        if len(payload) < 2:
            raise _bad("CLOSE payload of one byte")
        (code,) = _CODE.unpack_from(payload)
        if not (close_sendable(code) or code == ABNORMAL):
            raise _bad(f"close code {code} is not allowed")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("close reason is not UTF-8") from None
        return CloseRecord(code, reason)
