"""Raw TCP connections carried as tunnel streams (the ``tcp`` extension, protocol.md §21).

What both sides share: the handshake headers that negotiate the extension and name a
receiver's services, the open head and the answers, and :class:`TcpPipe`, the sans-IO
bridge between one TCP socket and one tunnel stream. A pipe is used by every place a socket
meets a stream: the gateway's public TCP listeners, the visitor command's local
connections (both *open* streams) and the receiver's connections to its local services
(which *answer* them).

Half-close: a socket's EOF ends our message on the stream (its final frame); the peer's end
becomes a shutdown of our socket's write side once the bytes before it are written, and the
other direction keeps flowing. A reset (an ERROR frame, a socket error, a timeout) resets
both: the socket is aborted and the stream cancelled.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Protocol

from .meta import RequestHead, ResponseHead
from .tunnel import EXTENSIONS_HEADER, TunnelSession

log = logging.getLogger("anpx.tcp")

TCP_EXTENSION = "tcp"
SERVICES_HEADER = "anpx-tcp-services"
ROLE_HEADER = "anpx-role"
ROLE_VISITOR = "visitor"
TCP_METHOD = "ANPX-TCP"
PEER_HEADER = "anpx-tcp-peer"
CONNECTED = ResponseHead(200, "connected")
MAX_SERVICES = 64
CONNECT_FAILED = "connect failed"  # the start of a receiver's reset reason for a failed connect
TCP_STREAM_WINDOW = 8 * 1024 * 1024
MAX_TCP_STREAM_WINDOW = 256 * 1024 * 1024
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(slots=True)
class TcpSettings:
    """Limits of TCP streams, on every side (docs/configuration.md, [gateway]/[receiver] tcp_*)."""

    #: A TCP stream with no byte in either direction for this long is reset; 0: never.
    idle_timeout: float = 3600.0
    #: An opened stream whose receiver has not answered (connected or failed) by then is reset.
    open_timeout: float = 15.0
    #: TCP keepalive on the sockets (idle seconds before probes, drivers only); 0: off.
    keepalive: float = 60.0
    #: Receive window of each TCP stream (credit granted above the tunnel's stream_window
    #: when larger): what one stream may have in flight toward us, so its throughput.
    window: int = TCP_STREAM_WINDOW


def check_service(name: str) -> str:
    """A service name: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _SERVICE.fullmatch(name):
        raise ValueError(
            f"service name {name!r} must be 1-64 of A-Z a-z 0-9 . _ - (a letter or digit first)"
        )
    return name


def offer_tcp(services: list[str]) -> list[tuple[str, str]]:
    """Receiver handshake headers offering ``services`` (none: no header at all)."""
    if not services:
        return []
    return [(EXTENSIONS_HEADER, TCP_EXTENSION + "=1"), (SERVICES_HEADER, ", ".join(services))]


def has_tcp(headers: list[tuple[str, str]]) -> bool:
    """Did the peer's handshake announce ``tcp=1`` (in any ``anpx-extensions`` line)?"""
    for name, value in headers:
        if name.lower() == EXTENSIONS_HEADER:
            for item in value.split(","):
                key, _, arg = item.strip().partition("=")
                if key.strip() == TCP_EXTENSION and arg.strip() == "1":
                    return True
    return False


def parse_services(headers: list[tuple[str, str]]) -> list[str]:
    """The services a receiver offers (none unless it announced ``tcp=1``); ValueError
    with the reason for a malformed list (the handshake is refused with 400)."""
    if not has_tcp(headers):
        return []
    values = [v for n, v in headers if n.lower() == SERVICES_HEADER]
    names: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item and item not in names:
                if len(names) == MAX_SERVICES:  # before the list grows: no quadratic work
                    raise ValueError(f"more than {MAX_SERVICES} services")
                names.append(check_service(item))
    return names


def is_visitor(headers: list[tuple[str, str]]) -> bool:
    return any(n.lower() == ROLE_HEADER and v.strip() == ROLE_VISITOR for n, v in headers)


def open_head(service: str, peer: str | None = None) -> RequestHead:
    """The head that opens a TCP stream to ``service`` (``peer``: for the receiver's log)."""
    headers = [(PEER_HEADER, peer)] if peer else []
    return RequestHead(TCP_METHOD, check_service(service), headers)


def service_of(head: RequestHead) -> str | None:
    """The service a TCP open head names (None: not a TCP open, or a malformed name)."""
    if head.method != TCP_METHOD:
        return None
    try:
        return check_service(head.target)
    except ValueError:
        return None


def short_reason(reason: str) -> str:
    """A connect failure as one word for the peer (the OS text stays in our log)."""
    text = reason.lower()
    if "refused" in text:
        return "refused"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if "unreachable" in text or "no route" in text:
        return "unreachable"
    return "failed"


# --- the pipe ----------------------------------------------------------------------------------


class PipeTunnel(Protocol):
    """The tunnel a pipe's stream runs on (a TunnelEndpoint or a receiver's GatewayLink)."""

    @property
    def session(self) -> TunnelSession | None: ...

    def may_produce(self, key: int, request_id: str) -> bool: ...


class PipeHost(Protocol):
    """What a pipe asks of its side's coordinator."""

    def wake(self, cid: int) -> None: ...
    def abort(self, cid: int) -> None: ...


class TcpPipe:
    """One TCP socket (connection ``cid``) bridged to stream ``rid`` of ``tunnel``.

    ``answered``: an opener's pipe starts False and waits for the receiver's answer
    (``open_timeout``); the receiver's pipe starts connected once its socket is.
    """

    __slots__ = (
        "answered",
        "cid",
        "dead",
        "host",
        "last",
        "opened",
        "out",
        "peer_eof",
        "rid",
        "settings",
        "sock_eof",
        "taken",
        "tunnel",
        "tunnel_cid",
        "what",
    )

    def __init__(
        self,
        cid: int,
        rid: str,
        tunnel: PipeTunnel,
        tunnel_cid: int,
        host: PipeHost,
        settings: TcpSettings,
        now: float,
        *,
        answered: bool,
        what: str,
    ) -> None:
        self.cid = cid
        self.rid = rid
        self.tunnel = tunnel
        self.tunnel_cid = tunnel_cid
        self.host = host
        self.settings = settings
        self.what = what  # for logs: "service db for 127.0.0.1:5555"
        self.answered = answered
        self.opened = self.last = now
        self.out: list[bytes] = []  # stream bytes for the socket, not yet taken
        self.taken = 0  # bytes the driver is writing (credited once written)
        self.sock_eof = False  # the socket's read side ended: our message is ended
        self.peer_eof = False  # the stream's peer ended: shut our write side when drained
        self.dead = False  # reset: the socket is aborted, the stream cancelled

    # --- socket side (the driver's calls, through the unit) ---------------------------------

    def sock_data(self, data: bytes, now: float) -> None:
        if self.dead or self.sock_eof:
            return
        self.last = now
        session = self.tunnel.session
        if session is None:
            return
        if data:
            session.send(self.rid, data)
            session.flush(self.rid)  # interactive traffic: never wait to fill a frame
        else:
            self.sock_eof = True
            session.end(self.rid)
        self.host.wake(self.tunnel_cid)

    def sock_lost(self, reason: str) -> None:
        """The socket failed (a reset, a broken pipe): reset the stream."""
        if not self.dead:
            log.info("%s: connection lost (%s)", self.what, reason or "error")
            self.reset("connection reset")

    def can_read(self) -> bool:
        if self.dead or self.sock_eof:
            return False
        return self.tunnel.may_produce(self.cid, self.rid)

    def take_output(self) -> tuple[bytes, bool]:
        """``close`` here means: shut the socket's write side (or, when dead, abort it)."""
        if self.out and not self.dead:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.taken += len(data)
            return data, False
        return b"", self.dead or self.peer_eof

    def written(self, now: float) -> None:
        self.last = now
        session = self.tunnel.session
        if self.taken and session is not None:
            session.consumed(self.rid, self.taken)
            session.flush_credits()
            self.host.wake(self.tunnel_cid)
        self.taken = 0

    def closed(self) -> None:
        """The driver closed the socket. A stream both sides finished is left to send what
        credit still holds back; anything else is reset."""
        if not (self.sock_eof and self.peer_eof):
            self.reset("connection closed")
        self.dead = True

    @property
    def finished(self) -> bool:
        """Both directions are over (or reset): the pipe holds nothing the peer needs."""
        return self.dead or (self.sock_eof and self.peer_eof)

    # --- stream side (tunnel events) ---------------------------------------------------------

    def stream_head(self, head: ResponseHead) -> None:
        """The receiver's answer to an opener."""
        if head.status == CONNECTED.status:
            self.answered = True
            self.host.wake(self.cid)
        else:
            log.warning("%s: the receiver answered %d %s", self.what, head.status, head.reason)
            self.reset(f"unexpected answer {head.status}")

    def stream_data(self, data: bytes, now: float) -> None:
        if self.dead:
            return
        self.answered = True
        self.last = now
        self.out.append(data)
        self.host.wake(self.cid)

    def stream_end(self) -> None:
        self.peer_eof = True
        self.host.wake(self.cid)

    def stream_reset(self, reason: str) -> None:
        """The peer reset the stream (or the tunnel went): abort the socket."""
        if self.dead:
            return
        level = logging.INFO if reason.startswith(("connection", "idle")) else logging.WARNING
        if not self.answered:
            level = logging.WARNING
        log.log(level, "%s: stream reset: %s", self.what, reason)
        self.dead = True
        self.out.clear()
        self.host.abort(self.cid)

    def writable(self) -> None:
        self.host.wake(self.cid)

    # --- timers ------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        if self.dead:
            return None
        when: float | None = None
        if not self.answered:
            when = self.opened + self.settings.open_timeout
        if self.settings.idle_timeout > 0:
            idle = self.last + self.settings.idle_timeout
            when = idle if when is None else min(when, idle)
        return when

    def on_timer(self, now: float) -> None:
        if self.dead:
            return
        if not self.answered and now >= self.opened + self.settings.open_timeout:
            log.warning(
                "%s: no answer from the receiver within %.0fs", self.what, now - self.opened
            )
            self.reset("no answer")
        elif self.settings.idle_timeout > 0 and now >= self.last + self.settings.idle_timeout:
            log.info("%s: idle for %.0fs, closing", self.what, now - self.last)
            self.reset("idle timeout")

    def reset(self, reason: str) -> None:
        """Reset both: cancel the stream (an ERROR frame) and abort the socket."""
        session = self.tunnel.session
        if session is not None and session.has_stream(self.rid):
            session.cancel(self.rid, reason)
            self.host.wake(self.tunnel_cid)
        if not self.dead:
            self.dead = True
            self.out.clear()
            self.host.abort(self.cid)
