"""One open WebSocket peer relayed to a WebSocket stream, sans-IO, on wsproto.

The gateway relays its client this way, the receiver's forward mode the local service.
"Peer" is that WebSocket (bytes in, bytes out); "far side" is the other end of the ANPX
stream (records in, :mod:`~anpx_core.wsstream` stream operations out).

Messages are relayed piece by piece as they arrive, never reassembled: a 16 MiB message
costs a record's worth of memory per hop. Pings are answered on each hop (not relayed).

Closing (docs/protocol.md section 20.4): whoever hears a Close first passes it on and
waits, at most ``close_timeout``, for the other side's answer, whose code it then uses for
its own echo, so both ends see each other's code and reason. A peer that vanishes becomes a
CLOSE 1006 towards the far side; a far side that vanishes (stream reset, tunnel lost)
becomes ``far_gone(code)`` (1011, or 1001 when the gateway goes away).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from .errors import ProtocolError
from .wsstream import (
    ABNORMAL,
    CloseRecord,
    RecordDecoder,
    StreamCancel,
    StreamConsumed,
    StreamEnd,
    StreamOp,
    StreamSend,
    close_sendable,
    encode_close,
    encode_piece,
)

__all__ = ["GOING_AWAY", "INTERNAL_ERROR", "PeerRelay", "RelayLimits", "WsSettings"]

KiB = 1024
MiB = 1024 * KiB
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS = 1005
TOO_BIG = 1009
INTERNAL_ERROR = 1011


@dataclass(frozen=True, slots=True)
class RelayLimits:
    #: Largest message either way, in bytes; a larger one closes with 1009.
    max_message_size: int = 16 * MiB
    #: Silence from the peer before we ping it; 0 disables keepalive.
    ping_interval: float = 30.0
    #: After our ping, how long the peer has to send anything before it counts as gone.
    ping_timeout: float = 20.0
    #: How long to wait for the other side's answer to a Close.
    close_timeout: float = 5.0
    #: No message either way for this long closes the session with 1001; 0 disables.
    idle_timeout: float = 3600.0
    #: Unwritten output to the peer above which the far side gets no more credit.
    high_water: int = 256 * KiB
    #: Unwritten output above which we stop reading the peer (pongs cannot pile up).
    max_backlog: int = 4 * MiB
    #: Pings the peer may send per minute; beyond, the session closes with 1008. 0: no limit.
    max_pings_per_minute: int = 120


@dataclass(frozen=True, slots=True)
class WsSettings:
    """WebSocket limits of one side ([gateway.websocket] / [receiver.websocket] in the
    configuration; docs/configuration.md)."""

    #: Offer the ``ws`` extension in the tunnel handshake (False: clients get 501).
    enabled: bool = True
    #: Open WebSocket sessions per receiver (the gateway counts per tunnel, a receiver
    #: its own); more are refused with 503.
    max_open: int = 1000
    #: Gateway: open WebSockets per client address; more are refused with 429. 0: no cap.
    max_per_client: int = 100
    max_message_size: int = 16 * MiB
    idle_timeout: float = 3600.0
    ping_interval: float = 30.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    #: Gateway: how long the receiver has to accept or deny an upgrade (else 504).
    open_timeout: float = 30.0

    @classmethod
    def receiver_defaults(cls) -> WsSettings:
        """A receiver's defaults: no per-client cap (the gateway has it), no idle timeout
        (the gateway has one)."""
        return cls(max_per_client=0, idle_timeout=0.0)

    def relay_limits(self) -> RelayLimits:
        return RelayLimits(
            max_message_size=self.max_message_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            idle_timeout=self.idle_timeout,
        )


class PeerRelay:
    """Relays an open wsproto connection (``conn``) to a WebSocket stream.

    ``abnormal_code`` is the Close code sent to the peer when the far side reports 1006
    (its WebSocket vanished): 1011 at the gateway (the app failed), 1001 at the receiver
    (the client went away).
    """

    def __init__(
        self, conn: Connection, limits: RelayLimits, now: float, *, abnormal_code: int
    ) -> None:
        self._ws = conn
        self._limits = limits
        self._abnormal_code = abnormal_code
        self._now = now
        self._decoder = RecordDecoder(limits.max_message_size)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._taken = 0
        self._ops: list[StreamOp] = []
        self._credit = 0  # far side's bytes we processed but did not grant yet
        self._in_size = 0  # bytes of the peer's message in progress
        self._stream_writable = True
        self._parser_alive = True
        # closing state, per side
        self._peer_close_sent = False
        self._peer_close_received = False
        self._peer_code: int | None = None
        self._peer_reason = ""
        self._far_close_sent = False
        self._far_close_received = False
        self._far_code: int | None = None
        self._far_reason = ""
        self._far_ended = False
        self._close_deadline: float | None = None
        self.done = False
        self.close_code: int | None = None  # the code the peer saw or sent, once done
        # timers
        self._last_recv = now
        self._last_message = now
        self._ping_sent_at: float | None = None
        self._ping_window = now
        self._pings = 0
        self._ping_count = 0

    # --- the driver side (peer bytes) ---------------------------------------------------------

    @property
    def wants_read(self) -> bool:
        return (
            not self.done
            and self._parser_alive
            and not (self._peer_close_received)
            and self._stream_writable
            and self.backlog <= self._limits.max_backlog
        )

    @property
    def backlog(self) -> int:
        return self._out_bytes + self._taken

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        self._taken += self._out_bytes
        self._out_bytes = 0
        return b"".join(out)

    def written(self) -> None:
        """The driver wrote everything ``data_to_send()`` gave it."""
        self._taken = 0
        self._grant()

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer; ``b""`` is EOF."""
        self._now = now
        if self.done or self._peer_close_received:
            return
        if not data:
            self._peer_gone("connection closed without a Close frame")
            return
        self._last_recv = now
        self._ping_sent_at = None
        if self._parser_alive:
            self._ws.receive_data(data)
            self.process(self._ws.events())

    def process(self, events: Any) -> None:
        """Act on wsproto events (the forward unit passes those that came with the 101)."""
        for ev in events:
            if isinstance(ev, TextMessage | BytesMessage):
                self._on_message(ev)
            elif isinstance(ev, Ping):
                if not self._ping_flood():
                    self._send(ev.response())
            elif isinstance(ev, CloseConnection):
                self._on_close(ev)
            if self.done or not self._parser_alive:
                return

    # --- the stream side (far side) ----------------------------------------------------------

    def take_ops(self) -> list[StreamOp]:
        """What to do to the stream, adjacent sends joined (many tiny client frames become
        one ANPX frame, not one each)."""
        ops, self._ops = self._ops, []
        if len(ops) < 2:
            return ops
        merged: list[StreamOp] = []
        for op in ops:
            last = merged[-1] if merged else None
            if isinstance(op, StreamSend) and isinstance(last, StreamSend):
                merged[-1] = StreamSend(last.data + op.data)
            else:
                merged.append(op)
        return merged

    def set_stream_writable(self, writable: bool) -> None:
        """The tunnel takes more of this stream now (credit) or not: read the peer or not."""
        self._stream_writable = writable

    def far_data(self, data: bytes, now: float) -> None:
        """Records from the far side."""
        self._now = now
        if self.done or self._far_close_received:
            self._credit += len(data)
            self._grant()
            return
        try:
            records = self._decoder.feed(data)
        except ProtocolError as exc:
            if exc.code == "too_large":
                # A message over our limit: close both ways with 1009 (a CLOSE record, so the
                # far side tells its own peer the same code) and discard the far side's
                # records from here on, as after its CLOSE.
                self._credit += len(data)
                self._far_close_received = True
                self._far_code, self._far_reason = TOO_BIG, ""
                self.close(TOO_BIG, f"message over {self._limits.max_message_size} bytes", now)
                self._grant()
                return
            self._ops.append(StreamCancel(f"bad WebSocket record: {exc.message}"))
            self.far_gone(INTERNAL_ERROR, now, exc.message[:100])
            return
        for record in records:
            if isinstance(record, CloseRecord):
                self._on_far_close(record.code, record.reason)
            elif not self._peer_close_sent:
                self._last_message = now
                self._send(Message(data=record.data, message_finished=record.fin))
        self._credit += len(data)
        self._grant()

    def far_end(self, now: float) -> None:
        """The far side's message ended (after its CLOSE record, normally)."""
        self._now = now
        self._far_ended = True
        if not self._far_close_received and not self.done:
            self._on_far_close(ABNORMAL, "stream ended without a CLOSE record")
        self._maybe_done()

    def far_gone(self, code: int, now: float, reason: str = "") -> None:
        """The stream is gone (reset, tunnel lost, shutdown): close the peer with ``code``."""
        self._now = now
        self._far_close_sent = self._far_close_received = self._far_ended = True
        self._ops = [op for op in self._ops if isinstance(op, StreamCancel)]
        if not self._peer_close_sent:
            self._close_peer(code, reason)
        self._arm_close()
        self._maybe_done()

    def close(self, code: int, reason: str, now: float) -> None:
        """Close both ways (idle timeout, drain): each side's answer is awaited."""
        self._now = now
        if not self._peer_close_sent:
            self._close_peer(code, reason)
        if not self._far_close_sent:
            self._close_far(code, reason)
        self._arm_close()
        self._maybe_done()

    # --- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        if self._close_deadline is not None:
            return self._close_deadline
        deadlines = []
        lim = self._limits
        if lim.ping_interval > 0 and not self._peer_close_received:
            if self._ping_sent_at is None:
                deadlines.append(self._last_recv + lim.ping_interval)
            elif lim.ping_timeout > 0:
                deadlines.append(self._ping_sent_at + lim.ping_timeout)
        if lim.idle_timeout > 0:
            deadlines.append(self._last_message + lim.idle_timeout)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.done:
            return
        lim = self._limits
        if self._close_deadline is not None:
            if now >= self._close_deadline:
                self._give_up_closing()
            return
        if lim.idle_timeout > 0 and now >= self._last_message + lim.idle_timeout:
            self.close(GOING_AWAY, "idle timeout", now)
            return
        if lim.ping_interval <= 0 or self._peer_close_received:
            return
        if self._ping_sent_at is not None:
            if lim.ping_timeout > 0 and now >= self._ping_sent_at + lim.ping_timeout:
                self._peer_gone("keepalive timeout")
        elif now >= self._last_recv + lim.ping_interval:
            self._ping_count += 1
            self._send(Ping(payload=self._ping_count.to_bytes(8, "big")))
            self._ping_sent_at = now

    # --- internals ----------------------------------------------------------------------------

    def _send(self, event: Any) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            return  # the peer's side is closing: nothing more may go out
        if data:
            self._out.append(bytes(data))
            self._out_bytes += len(data)

    def _grant(self) -> None:
        if self._credit and self.backlog <= self._limits.high_water:
            self._ops.append(StreamConsumed(self._credit))
            self._credit = 0

    def _ping_flood(self) -> bool:
        limit = self._limits.max_pings_per_minute
        if limit <= 0:
            return False
        if self._now - self._ping_window >= 60.0:
            self._ping_window, self._pings = self._now, 0
        self._pings += 1
        if self._pings <= limit:
            return False
        self.close(1008, f"more than {limit} pings in a minute", self._now)
        return True

    def _on_message(self, ev: TextMessage | BytesMessage) -> None:
        if self._far_close_sent:
            return  # the far side was told the session is closing
        data = ev.data
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        self._in_size += size
        if self._in_size > self._limits.max_message_size:
            self.close(TOO_BIG, f"message over {self._limits.max_message_size} bytes", self._now)
            return
        if ev.message_finished:
            self._in_size = 0
        self._last_message = self._now
        payload = data if isinstance(data, str) else bytes(data)
        self._ops.append(StreamSend(encode_piece(payload, ev.message_finished)))

    def _on_close(self, ev: CloseConnection) -> None:
        state = self._ws.state
        if state not in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
            # wsproto's own parse failure (bad frame, bad UTF-8), reported as a close
            self._parser_alive = False
            failed = int(ev.code)
            self._peer_close_received = True
            self._close_peer(failed, ev.reason or "protocol error")
            if not self._far_close_sent:
                self._close_far(failed, ev.reason or "protocol error")
            self._arm_close()
            self._maybe_done()
            return
        code = None if ev.code == NO_STATUS else int(ev.code)
        if self.close_code is None:
            self.close_code = code
        self._peer_close_received = True
        self._peer_code, self._peer_reason = code, ev.reason or ""
        if not self._far_close_sent:
            self._close_far(code, self._peer_reason)  # pass it on (or answer the far side)
        if not self._peer_close_sent and self._far_close_received:
            self._close_peer(self._far_code, self._far_reason)
        self._arm_close()
        self._maybe_done()

    def _on_far_close(self, code: int | None, reason: str) -> None:
        self._far_close_received = True
        self._far_code, self._far_reason = code, reason
        if not self._peer_close_sent:
            self._close_peer(code, reason)  # pass it on (or answer the peer)
        if not self._far_close_sent and self._peer_close_received:
            self._close_far(self._peer_code, self._peer_reason)
        self._arm_close()
        self._maybe_done()

    def _close_peer(self, code: int | None, reason: str) -> None:
        self._peer_close_sent = True
        if code == ABNORMAL:
            code = self._abnormal_code
        if code is not None and not close_sendable(code):
            code = INTERNAL_ERROR
        if self.close_code is None:
            self.close_code = code
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            event = (
                CloseConnection(code=CloseReason.NO_STATUS_RCVD)  # the enum: wsproto tests `is`
                if code is None
                else CloseConnection(code=code, reason=reason)
            )
            self._send(event)

    def _close_far(self, code: int | None, reason: str) -> None:
        self._far_close_sent = True
        if code is not None and not (close_sendable(code) or code == ABNORMAL):
            code = ABNORMAL  # e.g. 1015 (TLS failure) is local to the peer's connection
        self._ops.append(StreamSend(encode_close(code, reason)))
        self._ops.append(StreamEnd())

    def _peer_gone(self, reason: str) -> None:
        self._parser_alive = False
        self._peer_close_sent = self._peer_close_received = True
        self._out, self._out_bytes = [], 0
        if self.close_code is None:
            self.close_code = ABNORMAL
        if not self._far_close_sent:
            self._close_far(ABNORMAL, reason)
        self._arm_close()
        self._maybe_done()

    def _arm_close(self) -> None:
        if self._close_deadline is None and not self.done:
            self._close_deadline = self._now + max(self._limits.close_timeout, 0.0)

    def _give_up_closing(self) -> None:
        """The other side's answer did not come in time: finish with what we know."""
        if not self._peer_close_sent:
            self._close_peer(self._far_code if self._far_close_received else GOING_AWAY, "")
        if not self._far_close_sent:
            code = self._peer_code if self._peer_close_received else ABNORMAL
            self._close_far(code, self._peer_reason)
        if not self._far_ended:
            self._ops.append(StreamCancel("WebSocket close not completed in time"))
            self._far_ended = True
        self._peer_close_received = True
        self._finish()

    def _maybe_done(self) -> None:
        if (
            self._peer_close_sent
            and self._peer_close_received
            and self._far_close_sent
            and self._far_close_received
            and self._far_ended
        ):
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._close_deadline = None
        self._grant_all()

    def _grant_all(self) -> None:
        # credit no longer matters once done; nothing more is granted
        self._credit = 0
