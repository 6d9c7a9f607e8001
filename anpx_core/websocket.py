"""The tunnel's WebSocket layer, sans-IO, on top of wsproto.

:class:`WsServer` is the gateway's end of one tunnel connection, :class:`WsClient`
the receiver's. Both are driven the same way: feed bytes with
``receive_data(data, now)`` (``b""`` means the peer closed its side), call
``tick(now)`` when ``next_deadline()`` has passed, and write out whatever
``data_to_send()`` returns. Once ``closed`` is true and the output is drained,
the driver closes the socket. Time is always an argument (monotonic seconds);
nothing here reads a clock or touches a socket.

Binary messages carry ANPX frames (:class:`BinaryReceived`); text messages carry
JSON control messages (:class:`ControlReceived`), as v1 peers already use them:

* ``{"type": "ping", "timestamp": x}`` is answered with ``{"type": "pong",
  "timestamp": x}`` and not surfaced; ``pong`` is consumed silently. A v1
  gateway drops receivers that stop sending these, so the client sends one
  every ``ping_interval``.
* Any other object with a string ``"type"`` is surfaced; so are v1's untyped
  auth messages, as ``type`` ``"v1.auth"`` (``auth_enabled`` / ``shared_secret``
  / ``user_id`` keys) and ``"v1.status"`` (a ``status`` key). Anything else
  (not JSON, not an object, no string ``type``) closes the connection with 1003.

Every connection ends with exactly one :class:`Closed` event:

=====================================================  ======  =====
situation                                              code    clean
=====================================================  ======  =====
peer's Close frame (echoed)                            peer's  True
our ``close()``, peer echoed                           ours    True
our ``close()``, no echo in ``close_timeout`` / EOF    ours    False
EOF without a Close frame                              1006    False
bad frame / control frame / close frame from the peer  1002    False
text message that is not a typed JSON object           1003    False
invalid UTF-8 in a text message                        1007    False
message over ``max_message_size``                      1009    False
keepalive timeout                                      1011    False
server: bad upgrade request (HTTP 400 or 426 sent)     1002    False
server: request head over ``max_handshake_size`` (431) 1009    False
server: ``reject()`` called                            1008    False
client: malformed handshake response                   1002    False
client: non-101 answer (after HandshakeRejected)       1006    False
handshake timeout / EOF during the handshake           1006    False
=====================================================  ======  =====

After an error we send a Close frame with the code and report :class:`Closed`
at once, but keep reading (and discarding) until the peer's Close, EOF or
``close_timeout``: closing a socket with unread input makes the kernel send a
reset, which can destroy our Close frame before the peer reads it.
A keepalive timeout closes at once (the peer is gone). Sends after the
connection stopped being open are dropped silently, because the tunnel layer
may race with a close it has not seen yet.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from . import wsmask
from .wsframe import AVAILABLE as _FRAMES_AVAILABLE
from .wsframe import MASK_BIT, MaskKeys, binary_header, plain_binary, wsproto_idle

# wsproto masks and unmasks in C from here on (when websockets' speedups are installed).
wsmask.install()

__all__ = [
    "BinaryReceived",
    "Closed",
    "ControlReceived",
    "HandshakeAccepted",
    "HandshakeRejected",
    "HandshakeRequested",
    "WsClient",
    "WsEvent",
    "WsLimits",
    "WsServer",
]

KiB = 1024
MiB = 1024 * KiB

NORMAL = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
#: Keys of the untyped authentication message a v1 receiver sends first.
V1_AUTH_KEYS = frozenset({"auth_enabled", "shared_secret", "user_id"})
ABNORMAL = 1006
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011

#: Bytes of a discarded oversized message kept to name its stream (header, request_id TLV).
DISCARD_PREFIX = 512
#: Longest rejection body a client keeps (the rest is dropped).
MAX_REJECT_BODY = 64 * KiB

_HEAD_END = re.compile(rb"\n\r?\n")  # the same end-of-head rule as h11
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
# Request headers wsproto needs to validate an upgrade; the rest stays with us.
_UPGRADE_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
    }
)


@dataclass(frozen=True, slots=True)
class WsLimits:
    #: Largest message (binary or text) accepted; over it the connection closes with 1009.
    max_message_size: int = 16 * MiB
    #: Silence (server) / period (client) before a keepalive ping; 0 disables keepalive.
    ping_interval: float = 30.0
    #: After a ping, how long to wait for any data before closing with 1011; 0 waits forever.
    ping_timeout: float = 20.0
    #: After sending Close, how long to wait for the peer's Close.
    close_timeout: float = 5.0
    #: Largest handshake request head the server reads (431 beyond it).
    max_handshake_size: int = 16 * KiB
    #: Time from connection start until the handshake request (server) or the
    #: handshake response (client) has fully arrived; 0 disables.
    handshake_timeout: float = 10.0
    #: Pings (WebSocket Ping frames and JSON pings) the peer may send per minute;
    #: beyond, the connection closes with 1008. 0: no limit.
    max_pings_per_minute: int = 60
    #: Unwritten output (bytes queued plus bytes the driver is writing) above which the
    #: owner stops reading from the peer (``over_backlog``): answers to a peer that does not
    #: read (pongs, resets) cannot pile up. Far above what producers queue (they pause at the
    #: tunnel's high-water mark), so two busy peers never both stop reading.
    max_backlog: int = 16 * MiB


# --- events ----------------------------------------------------------------------------------


class WsEvent:
    """What a WebSocket endpoint (:class:`WsServer`, :class:`WsClient`) reports.

    Each layer has one such base class: dispatch with ``isinstance`` or ``match``.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeRequested(WsEvent):
    """Server only: a valid upgrade request arrived; call ``accept()`` or ``reject()``."""

    path: str  # the request-target as sent
    host: str
    headers: list[tuple[str, str]]  # every request header, names lower-case, latin-1 values
    subprotocols: list[str]


@dataclass(frozen=True, slots=True)
class HandshakeAccepted(WsEvent):
    """Client only: the server answered 101; the connection is open."""

    headers: list[tuple[str, str]]  # response headers except the upgrade machinery
    subprotocol: str | None


@dataclass(frozen=True, slots=True)
class HandshakeRejected(WsEvent):
    """Client only: the server answered something else than 101. Closed follows."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes  # at most MAX_REJECT_BODY bytes


@dataclass(frozen=True, slots=True)
class BinaryReceived(WsEvent):
    data: bytes  # one whole binary message


@dataclass(frozen=True, slots=True)
class BinaryDiscarded(WsEvent):
    """A binary message over the limit was dropped as it arrived (``discard_oversized``)."""

    prefix: bytes  # its first DISCARD_PREFIX bytes, enough to name its ANPX stream
    size: int  # bytes it had when dropped (at least; the rest was never counted)


@dataclass(frozen=True, slots=True)
class ControlReceived(WsEvent):
    message: dict[str, Any]  # one JSON object with a str "type" (never ping / pong)


@dataclass(frozen=True, slots=True)
class Closed(WsEvent):
    code: int
    reason: str
    clean: bool  # True only when Close frames went both ways


# --- helpers -----------------------------------------------------------------------------------


def _str_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers]


def _byte_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def _check_close_code(code: int) -> None:
    # 1004-1006 and 1015 must never appear in a Close frame; 1016-2999 are unassigned.
    if not (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} cannot be sent")


def _http_error(status: int, body: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a text/plain body."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    payload = body.encode("utf-8")
    own = {"content-length", "connection", "transfer-encoding"}
    lines = [f"HTTP/1.1 {status} {phrase}"]
    extra: list[str] = []
    for name, value in headers:
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        if name.lower() not in own:
            extra.append(f"{name}: {value}")
    if not any(h.lower().startswith("content-type:") for h in extra):
        lines.append("content-type: text/plain; charset=utf-8")
    lines += extra
    lines += [f"content-length: {len(payload)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + payload


# --- the shared connection state machine ----------------------------------------------------


class _WsConnection(ABC):
    _client: bool
    #: Whole plain binary frames are written and read without wsproto's per-frame objects
    #: (:mod:`anpx_core.wsframe`) while wsproto holds no state; False: wsproto does every
    #: frame (the reference the tests compare with).
    fast_frames: bool = _FRAMES_AVAILABLE

    def __init__(self, limits: WsLimits, now: float) -> None:
        self._limits = limits
        self._ws = WSConnection(ConnectionType.CLIENT if self._client else ConnectionType.SERVER)
        self._now = now
        self._state = "handshake"
        self._out: list[bytes] = []
        self._out_bytes = 0  # bytes in _out
        self._taken = 0  # bytes data_to_send() gave the driver, not yet reported written
        # Index in _out of a pong not yet taken by the driver: a newer ping replaces it
        # (RFC 6455 5.5.3 allows answering only the most recent), so pongs cannot pile up.
        self._pong_at: int | None = None
        self._json_pong_at: int | None = None
        self._ping_window = now
        self._pings = 0
        self._events: list[WsEvent] = []
        self._closed_emitted = False
        self._close_code = NORMAL
        self._close_reason = ""
        self._close_deadline: float | None = None
        self._handshake_deadline: float | None = (
            now + limits.handshake_timeout if limits.handshake_timeout > 0 else None
        )
        self._parser_alive = True  # False after wsproto hit a parse error: it parses no more
        self._discarding = False  # True after we failed the connection: ignore messages
        self._parts: list[Any] = []  # fragments of the message being reassembled
        self._size = 0
        # Largest message; the tunnel raises it for v1 peers. With discard_oversized, a binary
        # message over it is dropped as it arrives (BinaryDiscarded) instead of closing 1009.
        self.max_message_size = limits.max_message_size
        self.discard_oversized = False
        self._dropping: bytes | None = None  # prefix of the binary message being dropped
        # keepalive
        self._last_recv = now
        self._ping_sent_at: float | None = None
        self._next_ping = 0.0
        # masking keys of our plain frames: None for a server (unmasked); a client without
        # an entropy source leaves its sends to wsproto
        self._keys: MaskKeys | None = None
        self._send_plain = self.fast_frames and not self._client

    # --- public API ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"handshake"``, ``"open"``, ``"closing"`` or ``"closed"``."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the socket may be closed (after ``data_to_send()`` is drained)."""
        return self._state == "closed"

    def receive_data(self, data: bytes, now: float) -> list[WsEvent]:
        """Feed bytes from the peer; ``b""`` is EOF. Never raises on bad input."""
        self._now = now
        state = self._state
        if state == "closed":
            pass
        elif not data:
            self._eof()
        elif state == "handshake":
            self._handshake_data(data)
        else:
            self._last_recv = now
            self._ping_sent_at = None
            if self._parser_alive:
                self._feed(data)
        self._timers(now)
        return self._take_events()

    def tick(self, now: float) -> list[WsEvent]:
        """Run the timers (keepalive, close and handshake timeouts)."""
        self._now = now
        self._timers(now)
        return self._take_events()

    def next_deadline(self) -> float | None:
        state = self._state
        if state == "open":
            return self._keepalive_deadline()
        if state == "closing":
            return self._close_deadline
        if state == "handshake":
            return self._handshake_deadline
        return None

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        self._taken += self._out_bytes
        self._out_bytes = 0
        self._pong_at = self._json_pong_at = None
        return out[0] if len(out) == 1 else b"".join(out)

    def sent(self) -> None:
        """The driver wrote everything ``data_to_send()`` gave it."""
        self._taken = 0

    @property
    def backlog(self) -> int:
        """Output bytes not yet written: queued here or being written by the driver."""
        return self._out_bytes + self._taken

    @property
    def over_backlog(self) -> bool:
        """Stop reading from the peer until the output drains (see ``WsLimits.max_backlog``)."""
        return self._out_bytes + self._taken > self._limits.max_backlog

    def send_binary(self, data: bytes) -> None:
        """Send one binary message (one ANPX frame). Dropped unless the connection is open."""
        if self._state == "open":
            conn = self._ws.connection
            if (
                self.fast_frames
                and conn._state is ConnectionState.OPEN  # type: ignore[union-attr]
                and conn._proto._outbound_opcode is None  # type: ignore[union-attr]
            ):
                if self._send_plain:
                    self._plain_frame(data)
                else:  # a client without an entropy source: wsproto frames and masks it
                    self._emit(bytes(conn._proto.send_data(data)))  # type: ignore[union-attr]
            else:
                self._emit(self._ws.send(BytesMessage(data=data)))
        elif self._state == "handshake":
            raise RuntimeError("the WebSocket handshake has not completed")

    def _plain_frame(self, data: bytes) -> None:
        """One final binary frame, byte for byte what wsproto writes (given the same key);
        header and payload are queued as separate pieces (joined once, by data_to_send)."""
        if type(data) is not bytes:
            data = bytes(data)
        keys = self._keys
        if keys is None:
            self._emit(binary_header(len(data), 0))
        else:
            key = keys.take()
            self._emit(binary_header(len(data), MASK_BIT) + key)
            data = wsmask.apply_mask(data, key)
        if data:
            self._emit(data)

    def send_control(self, message: dict[str, Any], *, v1_untyped: bool = False) -> None:
        """Send one JSON control message; it must be an object with a string "type"
        (``v1_untyped``: one of v1's untyped auth messages, sent as it is)."""
        if not isinstance(message, dict) or not (
            v1_untyped or isinstance(message.get("type"), str)
        ):
            raise ValueError("a control message is a dict with a str 'type'")
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if self._state == "open":
            self._emit(self._ws.send(TextMessage(data=text)))
        elif self._state == "handshake":
            raise RuntimeError("the WebSocket handshake has not completed")

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the close handshake; Closed follows when it ends (or times out)."""
        _check_close_code(code)
        if self._state == "open":
            self._emit(self._ws.send(CloseConnection(code=code, reason=reason)))
            self._start_closing(code, reason)
        elif self._state == "handshake":
            self._abort_handshake(code, reason)

    # --- internals shared by both sides -------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)

    def _pong(self, data: bytes, json_pong: bool) -> None:
        """Queue a pong, replacing one still queued of the same kind."""
        at = self._json_pong_at if json_pong else self._pong_at
        if at is not None:
            self._out_bytes += len(data) - len(self._out[at])
            self._out[at] = data
            return
        at = len(self._out)
        self._emit(data)
        if json_pong:
            self._json_pong_at = at
        else:
            self._pong_at = at

    def _ping_flood(self) -> bool:
        """Count a ping from the peer; over the limit, fail the connection with 1008."""
        limit = self._limits.max_pings_per_minute
        if limit <= 0:
            return False
        if self._now - self._ping_window >= 60.0:
            self._ping_window, self._pings = self._now, 0
        self._pings += 1
        if self._pings > limit:
            self._fail(POLICY, f"more than {limit} pings in a minute")
            return True
        return False

    def _take_events(self) -> list[WsEvent]:
        events = self._events
        self._events = []
        return events

    def _finish(self, code: int, reason: str, clean: bool) -> None:
        if not self._closed_emitted:
            self._closed_emitted = True
            self._events.append(Closed(code, reason, clean))
        self._state = "closed"
        self._parts = []
        self._close_deadline = None

    def _start_closing(self, code: int, reason: str) -> None:
        self._state = "closing"
        self._close_code = code
        self._close_reason = reason
        timeout = self._limits.close_timeout
        self._close_deadline = self._now + max(timeout, 0.0)

    def _fail(self, code: int, reason: str, *, linger: bool = True) -> None:
        """Fail the connection: send Close(code), report Closed now, stop delivering messages."""
        if self._state == "closed":
            return
        if self._ws.state is ConnectionState.OPEN:
            self._emit(self._ws.send(CloseConnection(code=code, reason=reason)))
        if not self._closed_emitted:
            self._closed_emitted = True
            self._events.append(Closed(code, reason, False))
        self._discarding = True
        self._parts = []
        self._size = 0
        if not linger:
            self._finish(code, reason, False)
        elif self._state != "closing":
            self._start_closing(code, reason)

    def _abort_handshake(self, code: int, reason: str) -> None:
        self._finish(code, reason, False)

    def _opened(self) -> None:
        self._state = "open"
        self._handshake_deadline = None
        self._last_recv = self._now
        self._ping_sent_at = None
        self._next_ping = self._now + self._limits.ping_interval

    def _eof(self) -> None:
        state = self._state
        if state == "open":
            self._finish(ABNORMAL, "connection closed without a Close frame", False)
        elif state == "closing":
            self._finish(self._close_code, self._close_reason, False)
        elif state == "handshake":
            self._finish(ABNORMAL, "connection closed during the handshake", False)

    def _feed(self, data: bytes) -> None:
        """Frame-level input: hand bytes to wsproto and act on what it parsed. Whole plain
        binary frames at the start of ``data`` are read directly while wsproto holds nothing
        (and we hold no message part), exactly as wsproto would deliver them."""
        ws = self._ws
        if (
            self.fast_frames
            and type(data) is bytes
            and self._state == "open"
            and not self._parts
            and self._dropping is None
            and wsproto_idle(ws.connection)
        ):
            masked, limit, pos, end = not self._client, self.max_message_size, 0, len(data)
            events = self._events
            while (found := plain_binary(data, pos, masked, limit)) is not None:
                payload, pos = found
                events.append(BinaryReceived(payload))
                if pos == end:
                    return
            if pos:
                data = data[pos:]
        ws.receive_data(data)
        self._process(ws.events())

    def _process(self, events: Iterable[Any]) -> None:
        for ev in events:
            cls = type(ev)
            if cls is BytesMessage:
                if not self._discarding:
                    self._on_message(ev.data, ev.message_finished, False)
            elif cls is TextMessage:
                if not self._discarding:
                    self._on_message(ev.data, ev.message_finished, True)
            elif cls is Ping:
                if not self._ping_flood() and self._ws.state is ConnectionState.OPEN:
                    self._pong(self._ws.send(ev.response()), json_pong=False)
            elif cls is CloseConnection:
                self._on_close(ev)
            # Pong: only liveness, already counted when the bytes arrived.
            if self._state == "closed" or not self._parser_alive:
                return

    def _on_message(self, data: Any, finished: bool, text: bool) -> None:
        size = self._size + (len(data.encode()) if text else len(data))
        if self._dropping is not None or (
            size > self.max_message_size and self.discard_oversized and not text
        ):
            self._drop(data, finished, size)
            return
        if size > self.max_message_size:
            self._fail(TOO_BIG, f"message larger than {self.max_message_size} bytes")
            return
        if not finished:
            self._parts.append(data)
            self._size = size
            return
        if self._parts:  # only multi-piece messages are joined: no copy for the common case
            self._parts.append(data)
            data = ("" if text else b"").join(self._parts)
            self._parts = []
            self._size = 0
        if text:
            self._on_text(data)
        else:
            self._events.append(BinaryReceived(data))

    def _drop(self, data: bytes, finished: bool, size: int) -> None:
        """Count and forget an oversized binary message, keeping only its first bytes."""
        if self._dropping is None:
            self._dropping = b"".join([*self._parts, data[:DISCARD_PREFIX]])[:DISCARD_PREFIX]
            self._parts = []
        self._size = size
        if finished:
            self._events.append(BinaryDiscarded(self._dropping, size))
            self._dropping, self._size = None, 0

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            message = None
        if isinstance(message, dict) and "type" not in message:
            # v1 peers open with untyped auth messages: {"auth_enabled": false} or
            # {"shared_secret": ..., "user_id": ...} from a receiver, {"status": ...} back.
            if message.keys() & V1_AUTH_KEYS:
                self._events.append(ControlReceived({**message, "type": "v1.auth"}))
                return
            if "status" in message:
                self._events.append(ControlReceived({**message, "type": "v1.status"}))
                return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._fail(UNSUPPORTED_DATA, "text message is not a JSON object with a 'type'")
            return
        kind = message["type"]
        if kind == "ping":
            if not self._ping_flood() and self._state == "open":
                # echo a number or short string only: a pong is never more than a few bytes,
                # and a nested value could be deeper than json.dumps may recurse
                stamp = message.get("timestamp")
                if type(stamp) not in (int, float, str) or len(str(stamp)) > 64:
                    stamp = None
                pong = json.dumps({"type": "pong", "timestamp": stamp})
                self._pong(self._ws.send(TextMessage(data=pong)), json_pong=True)
        elif kind != "pong":
            self._events.append(ControlReceived(message))

    def _on_close(self, ev: CloseConnection) -> None:
        wstate = self._ws.state
        if wstate is ConnectionState.REMOTE_CLOSING:  # the peer started closing: echo it
            self._emit(self._ws.send(CloseConnection(code=ev.code)))
            self._finish(int(ev.code), ev.reason or "", True)
        elif wstate is ConnectionState.CLOSED:  # the answer to our Close
            self._finish(self._close_code, self._close_reason, True)
        else:  # wsproto's own parse failure, reported as a close event
            self._parser_alive = False
            self._fail(int(ev.code), ev.reason or "protocol error")

    def _timers(self, now: float) -> None:
        state = self._state
        if state == "open":
            self._keepalive(now)
        elif state == "closing":
            if self._close_deadline is not None and now >= self._close_deadline:
                self._finish(self._close_code, self._close_reason, False)
        elif state == "handshake":
            deadline = self._handshake_deadline
            if deadline is not None and now >= deadline:
                self._handshake_deadline = None
                self._abort_handshake(ABNORMAL, "handshake timeout")

    def _timed_out(self, now: float) -> bool:
        sent = self._ping_sent_at
        timeout = self._limits.ping_timeout
        if sent is not None and timeout > 0 and now >= sent + timeout:
            self._fail(INTERNAL_ERROR, "keepalive timeout", linger=False)
            return True
        return False

    @abstractmethod
    def _keepalive(self, now: float) -> None: ...

    @abstractmethod
    def _keepalive_deadline(self) -> float | None: ...

    @abstractmethod
    def _handshake_data(self, data: bytes) -> None: ...


# --- server ------------------------------------------------------------------------------------


class WsServer(_WsConnection):
    """The gateway's end of one tunnel connection.

    Keepalive: a WebSocket Ping after ``ping_interval`` of silence; any data
    within ``ping_timeout`` after it keeps the connection, otherwise 1011.
    """

    _client = False

    def __init__(self, limits: WsLimits, now: float) -> None:
        super().__init__(limits, now)
        self._head = bytearray()  # the request head while it arrives
        self._request: Request | None = None
        self._early = bytearray()  # bytes after the request head, before accept()
        self._ping_count = 0

    def accept(
        self, headers: Iterable[tuple[str, str]] = (), subprotocol: str | None = None
    ) -> None:
        """Answer 101. ``subprotocol`` must be one the client offered."""
        if self._state == "closed":
            return  # the client left while we decided
        if self._state != "handshake" or self._request is None:
            raise RuntimeError("no pending handshake request to accept")
        try:
            data = self._ws.send(
                AcceptConnection(subprotocol=subprotocol, extra_headers=_byte_headers(headers))
            )
        except (LocalProtocolError, h11.LocalProtocolError, ValueError) as exc:
            raise ValueError(f"cannot accept: {exc}") from exc
        self._emit(data)
        self._opened()
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self._feed(early)  # its events come with the next receive_data() / tick()

    def reject(self, status: int, body: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer with an HTTP error and close (e.g. 401 from the authenticator, 503 when full)."""
        if self._state == "closed":
            return
        if self._state != "handshake":
            raise RuntimeError("the handshake is over")
        if not 200 <= status <= 599:
            raise ValueError(f"cannot reject with status {status}")
        self._emit(_http_error(status, body, headers))
        self._finish(POLICY, f"handshake rejected with HTTP {status}", False)

    def _handshake_data(self, data: bytes) -> None:
        limit = self._limits.max_handshake_size
        if self._request is not None:  # waiting for accept(): keep what the client sent early
            self._early += data
            if len(self._early) > limit:
                self._bad_request(400, "data sent before the handshake completed")
            return
        head = self._head
        start = max(0, len(head) - 3)
        head += data
        if head.startswith((b"\r", b"\n")):  # tolerate empty lines before the request line
            del head[: len(head) - len(head.lstrip(b"\r\n"))]
            start = 0
        match = _HEAD_END.search(head, start)
        end = match.end() if match else None
        if (end or len(head)) > limit:
            self._bad_request(431, "handshake request too large", code=TOO_BIG)
            return
        if end is None:
            return
        self._early = head[end:]
        request_bytes = bytes(head[:end])
        self._head = bytearray()
        self._handshake_deadline = None
        self._parse_request(request_bytes)

    def _parse_request(self, head: bytes) -> None:
        try:
            parser = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
            parser.receive_data(head)
            req = parser.next_event()
        except h11.RemoteProtocolError as exc:
            self._bad_request(exc.error_status_hint, f"malformed request: {exc}")
            return
        if not isinstance(req, h11.Request):
            self._bad_request(400, "malformed request")
            return
        if req.method != b"GET":
            self._bad_request(400, "a WebSocket upgrade must use GET")
            return
        # wsproto validates the upgrade fields; we keep every header for the authenticator.
        upgrade = [(n, v) for n, v in req.headers if n in _UPGRADE_HEADERS]
        try:
            self._ws.initiate_upgrade_connection(upgrade, req.target)
            events = list(self._ws.events())
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                self._bad_request(hint.status_code, str(exc), _str_headers(hint.headers))
            else:
                self._bad_request(400, str(exc))
            return
        except Exception as exc:  # e.g. a Host wsproto cannot IDNA-decode
            self._bad_request(400, f"bad upgrade request: {exc}")
            return
        request = next((e for e in events if isinstance(e, Request)), None)
        if request is None:
            self._bad_request(400, "bad upgrade request")
            return
        self._request = request
        self._events.append(
            HandshakeRequested(
                path=request.target,
                host=request.host,
                headers=_str_headers(req.headers),
                subprotocols=list(request.subprotocols),
            )
        )
        if len(self._early) > self._limits.max_handshake_size:
            self._bad_request(400, "data sent before the handshake completed")

    def _bad_request(
        self,
        status: int,
        text: str,
        headers: Iterable[tuple[str, str]] = (),
        code: int = PROTOCOL_ERROR,
    ) -> None:
        self._emit(_http_error(status, text, headers))
        self._finish(code, f"bad handshake (HTTP {status}): {text}", False)

    def _keepalive(self, now: float) -> None:
        interval = self._limits.ping_interval
        if interval <= 0 or self._timed_out(now):
            return
        if self._ping_sent_at is None and now >= self._last_recv + interval:
            self._ping_count += 1
            self._emit(self._ws.send(Ping(payload=self._ping_count.to_bytes(8, "big"))))
            self._ping_sent_at = now

    def _keepalive_deadline(self) -> float | None:
        if self._limits.ping_interval <= 0:
            return None
        if self._ping_sent_at is None:
            return self._last_recv + self._limits.ping_interval
        if self._limits.ping_timeout > 0:
            return self._ping_sent_at + self._limits.ping_timeout
        return None


# --- client ------------------------------------------------------------------------------------


class WsClient(_WsConnection):
    """The receiver's end. The handshake request is queued at construction.

    Keepalive: a JSON ``{"type": "ping", "timestamp": now}`` every
    ``ping_interval`` (v1 gateways drop receivers that stop sending them);
    WebSocket pings from the gateway are answered. No data within
    ``ping_timeout`` after a ping closes with 1011.
    """

    _client = True

    def __init__(
        self,
        host: str,
        path: str,
        limits: WsLimits,
        now: float,
        headers: Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] = (),
        mask_source: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(limits, now)
        if mask_source is not None and self.fast_frames:
            # ``mask_source(n)``: n unpredictable bytes (the host passes os.urandom); without
            # it, wsproto masks each frame with its own os.urandom call
            self._keys = MaskKeys(mask_source)
            self._send_plain = True
        extra = _byte_headers((n, v) for n, v in headers if n.lower() != "host")
        request = Request(
            host=host, target=path, extra_headers=extra, subprotocols=list(subprotocols)
        )
        self._emit(self._ws.send(request))
        self._reject: tuple[int, list[tuple[str, str]], bytearray] | None = None

    def _handshake_data(self, data: bytes | None) -> None:
        try:
            self._ws.receive_data(data)
        except Exception as exc:
            if self._reject is not None:  # e.g. EOF inside a Content-Length body
                self._rejected()
            else:
                self._finish(PROTOCOL_ERROR, f"bad handshake response: {exc}", False)
            return
        events = self._ws.events()
        for ev in events:
            if isinstance(ev, AcceptConnection):
                self._opened()
                self._events.append(
                    HandshakeAccepted(_str_headers(ev.extra_headers), ev.subprotocol)
                )
                self._process(events)  # frames that came with the 101
                return
            if isinstance(ev, RejectConnection):
                self._reject = (ev.status_code, _str_headers(ev.headers), bytearray())
                if not ev.has_body:
                    self._rejected()
                    return
            elif isinstance(ev, RejectData) and self._reject is not None:
                body = self._reject[2]
                body += ev.data[: MAX_REJECT_BODY - len(body)]
                if ev.body_finished or len(body) >= MAX_REJECT_BODY:
                    self._rejected()
                    return

    def _rejected(self) -> None:
        assert self._reject is not None
        status, headers, body = self._reject
        self._events.append(HandshakeRejected(status, headers, bytes(body)))
        self._finish(ABNORMAL, f"handshake rejected with HTTP {status}", False)

    def _eof(self) -> None:
        if self._state == "handshake" and self._reject is not None:
            self._handshake_data(None)  # lets h11 end a body delimited by EOF
            if self._state != "closed":
                self._rejected()
            return
        super()._eof()

    def ping_every(self, interval: float, now: float) -> None:
        """Send the JSON ping at least every ``interval`` seconds from now on (v1 gateways)."""
        if interval > 0 and (
            self._limits.ping_interval <= 0 or interval < self._limits.ping_interval
        ):
            self._limits = replace(self._limits, ping_interval=interval)
            self._next_ping = min(self._next_ping, now + interval)

    def _keepalive(self, now: float) -> None:
        interval = self._limits.ping_interval
        if interval <= 0 or self._timed_out(now):
            return
        if now >= self._next_ping:
            ping = json.dumps({"type": "ping", "timestamp": now})
            self._emit(self._ws.send(TextMessage(data=ping)))
            self._next_ping = now + interval
            if self._ping_sent_at is None:
                self._ping_sent_at = now

    def _keepalive_deadline(self) -> float | None:
        if self._limits.ping_interval <= 0:
            return None
        deadline = self._next_ping
        if self._ping_sent_at is not None and self._limits.ping_timeout > 0:
            deadline = min(deadline, self._ping_sent_at + self._limits.ping_timeout)
        return deadline
