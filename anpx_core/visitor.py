"""The visitor (``python -m anpx_trio connect SERVICE``): local TCP connections carried as
streams to a gateway, which bridges each to a receiver offering SERVICE (protocol.md §21).

One sans-IO core over two kinds of connection: the tunnel to the gateway (a WebSocket
client, ``anpx-role: visitor``, authenticated with the visitor credential) and the local
connections (accepted on ``--listen`` or the process's stdin/stdout), each a
:class:`~anpx_core.tcp.TcpPipe` that opens a stream. The tunnel is dialled when the first
local connection arrives and again after it went away; local connections that arrive while
it is being set up wait for it (within ``open_timeout``). A tunnel that dies resets every
stream on it: a dead tunnel is noticed by the WebSocket keepalive (``ws.ping_interval`` +
``ws.ping_timeout``).

Driver contract: the same as the receiver's (:class:`~anpx_core.contract.DriverCore`, plus
``pop_connects`` / ``connected`` / ``connect_failed`` for the tunnel's socket) and
``open_local(now, peer) -> cid`` for each local connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from . import messages as M
from .auth import ClientAuth, NoAuth
from .barrier import CrashBarrier, guarded, guarded_close
from .contract import Signal, WakeKey
from .endpoint import TunnelEndpoint
from .meta import ResponseHead
from .receiver.settings import ConnectRequest, GatewayAddress
from .tcp import (
    ROLE_HEADER,
    ROLE_VISITOR,
    TCP_EXTENSION,
    TcpPipe,
    TcpSettings,
    check_service,
    has_tcp,
    open_head,
)
from .timers import Deadlines
from .tunnel import (
    DEFAULT_HIGH_WATER,
    DEFAULT_STREAM_WINDOW,
    EXTENSIONS_HEADER,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamMessage,
    StreamReset,
    StreamWritable,
    TunnelBroken,
    offer_extensions,
    parse_extensions,
    split_message,
)
from .websocket import Closed, HandshakeAccepted, HandshakeRejected, WsClient, WsLimits

log = logging.getLogger("anpx.visitor")


@dataclass(slots=True)
class VisitorSettings:
    gateway_url: str = "ws://127.0.0.1:8765/"
    service: str = ""
    client_id: str = ""
    auth: ClientAuth = field(default_factory=NoAuth)
    ws: WsLimits = field(default_factory=lambda: WsLimits(ping_interval=15.0, ping_timeout=15.0))
    stream_window: int = DEFAULT_STREAM_WINDOW
    send_frame_size: int = M.DEFAULT_SEND_FRAME_SIZE
    codec: M.Limits = field(default_factory=M.Limits)
    high_water: int = DEFAULT_HIGH_WATER
    tcp: TcpSettings = field(default_factory=TcpSettings)
    new_request_id: Any = None  # Callable[[], str]; None: a counter
    mask_source: Any = None  # Callable[[int], bytes] (os.urandom), as ReceiverSettings'


class _Link:
    """The tunnel to the gateway."""

    def __init__(self, core: VisitorCore, cid: int) -> None:
        self.core = core
        self.cid = cid
        self.ep: TunnelEndpoint[WsClient] | None = None
        self.state = "connecting"  # connecting | handshake | open | closed

    @property
    def session(self) -> Any:
        return None if self.ep is None else self.ep.session

    def may_produce(self, key: int, rid: str) -> bool:
        return True if self.ep is None else self.ep.may_produce(key, rid)

    def deadline(self) -> float | None:
        return None if self.ep is None else self.ep.next_deadline()

    def connected(self, now: float) -> None:
        settings = self.core.settings
        addr = self.core.address
        wall = now + self.core.wall_offset
        headers = list(settings.auth.request_headers(addr.host_header, addr.path, wall))
        headers += [(ROLE_HEADER, ROLE_VISITOR)]
        headers += offer_extensions(settings.stream_window)
        headers += [(EXTENSIONS_HEADER, TCP_EXTENSION + "=1")]
        ws = WsClient(
            addr.host_header,
            addr.path,
            settings.ws,
            now,
            headers=headers,
            mask_source=settings.mask_source,
        )
        self.ep = TunnelEndpoint(self.cid, ws, settings.high_water)
        self.state = "handshake"

    def connect_failed(self, now: float, reason: str) -> None:
        self.core.link_down(self, f"cannot connect to the gateway: {reason}")

    def note_lost(self, reason: str) -> None:
        pass

    def receive(self, data: bytes, now: float) -> None:
        if self.ep is not None:
            for event in self.ep.receive(data, now):
                self._event(event, now)

    def on_timer(self, now: float) -> None:
        if self.ep is not None:
            for event in self.ep.timers(now):
                self._event(event, now)
            self.core.wake(self.cid)

    def take_output(self) -> tuple[bytes, bool]:
        return (b"", False) if self.ep is None else self.ep.take_output()

    def written(self, now: float) -> None:
        if self.ep is not None:
            for key in self.ep.written():
                self.core.wake(key)

    def can_read(self) -> bool:
        return self.ep is not None and self.ep.can_read()

    def closed(self, now: float) -> None:
        self.core.link_down(self, "tunnel closed")

    def _event(self, event: Any, now: float) -> None:
        core = self.core
        core.wake(self.cid)
        if isinstance(event, HandshakeAccepted):
            self._accepted(event, now)
        elif isinstance(event, HandshakeRejected):
            lines = event.body.decode("utf-8", "replace").strip().splitlines()
            detail = lines[0][:200] if lines else ""
            core.last_error = f"gateway refused the visitor: HTTP {event.status}" + (
                f": {detail}" if detail else ""
            )
            log.error("%s", core.last_error)
        elif isinstance(event, Closed):
            core.link_down(self, f"tunnel closed ({event.code} {event.reason})".strip())
        elif isinstance(event, TunnelBroken):
            assert self.ep is not None
            self.ep.ws.close(1002, "bad ANPX frame")
            core.link_down(self, "gateway sent a malformed frame")
        elif isinstance(event, StreamMessage):  # a whole message: its three events, in order
            for part in split_message(event):
                self._event(part, now)
        elif isinstance(event, StreamHead | StreamData | StreamEnd | StreamReset | StreamWritable):
            local = core.streams.get(event.request_id)
            if local is not None:
                local.stream_event(event, now)

    def _accepted(self, event: HandshakeAccepted, now: float) -> None:
        core, ep = self.core, self.ep
        assert ep is not None
        problem = core.settings.auth.check_response(event.headers)
        if problem is not None:
            core.last_error = problem
            log.error("refusing gateway: %s", problem)
            ep.ws.close(1008, "gateway failed authentication")
            return
        peer_window = parse_extensions(event.headers)
        if peer_window is None or not has_tcp(event.headers):
            core.last_error = "the gateway does not take visitors (no flow/tcp extension)"
            log.error("%s", core.last_error)
            ep.ws.close(1000, "no tcp extension")
            return
        ep.open_session(
            accepts=ResponseHead,
            local_window=core.settings.stream_window,
            peer_window=peer_window,
            send_frame_size=core.settings.send_frame_size,
            limits=core.settings.codec,
        )
        self.state = "open"
        log.info("visitor tunnel to %s open", core.address.host_header)
        core.link_open(self, now)


class _Local:
    """One local connection: a pipe once the tunnel is open (waiting for it until then)."""

    def __init__(self, core: VisitorCore, cid: int, peer: str, now: float) -> None:
        self.core = core
        self.cid = cid
        self.peer = peer
        self.since = now
        self.pipe: TcpPipe | None = None
        self.gone = False

    def start(self, link: _Link, now: float) -> None:
        session = link.session
        assert session is not None
        core = self.core
        rid = core.new_request_id()
        session.start(rid, open_head(core.settings.service, self.peer))
        session.flush(rid)
        session.widen(rid, core.settings.tcp.window)
        session.flush_credits()
        what = f"tcp {core.settings.service} for {self.peer}"
        self.pipe = TcpPipe(
            self.cid, rid, link, link.cid, core, core.settings.tcp, now, answered=False, what=what
        )
        self.pipe.opened = self.since  # the wait for the tunnel counts against open_timeout
        core.streams[rid] = self
        core.wake(link.cid)
        core.wake(self.cid)

    def fail(self, why: str) -> None:
        if self.pipe is not None:
            self.pipe.stream_reset(why)
        elif not self.gone:
            log.warning("tcp %s for %s: %s", self.core.settings.service, self.peer, why)
            self.gone = True
            self.core.abort(self.cid)

    def stream_event(self, event: Any, now: float) -> None:
        pipe = self.pipe
        assert pipe is not None
        if isinstance(event, StreamHead):
            assert isinstance(event.head, ResponseHead)  # the session accepts nothing else
            pipe.stream_head(event.head)
        elif isinstance(event, StreamData):
            pipe.stream_data(event.data, now)
        elif isinstance(event, StreamEnd):
            pipe.stream_end()
        elif isinstance(event, StreamReset):
            pipe.stream_reset(event.reason)
        elif isinstance(event, StreamWritable):
            pipe.writable()

    # the driver's calls
    def receive(self, data: bytes, now: float) -> None:
        if self.pipe is not None:
            self.pipe.sock_data(data, now)

    def note_lost(self, reason: str) -> None:
        if self.pipe is not None:
            self.pipe.sock_lost(reason)

    def take_output(self) -> tuple[bytes, bool]:
        if self.pipe is None:
            return b"", self.gone
        return self.pipe.take_output()

    def written(self, now: float) -> None:
        if self.pipe is not None:
            self.pipe.written(now)

    def can_read(self) -> bool:
        return self.pipe is not None and self.pipe.can_read()

    def closed(self, now: float) -> None:
        self.gone = True
        if self.pipe is not None:
            self.pipe.closed()
            self.core.streams.pop(self.pipe.rid, None)

    def deadline(self) -> float | None:
        if self.pipe is not None:
            return self.pipe.deadline()
        return None if self.gone else self.since + self.core.settings.tcp.open_timeout

    def on_timer(self, now: float) -> None:
        if self.pipe is not None:
            self.pipe.on_timer(now)
        elif not self.gone and now >= self.since + self.core.settings.tcp.open_timeout:
            self.fail(f"no tunnel to the gateway ({self.core.last_error or 'timed out'})")


class VisitorCore(CrashBarrier):
    _barrier_log = log

    def __init__(self, settings: VisitorSettings) -> None:
        check_service(settings.service)
        self.settings = settings
        self.address = GatewayAddress.parse(settings.gateway_url)
        self._conns: dict[int, _Link | _Local] = {}
        self._doomed: set[int] = set()
        self.streams: dict[str, _Local] = {}
        self.link: _Link | None = None
        self._wakeups: set[WakeKey] = set()
        self._aborts: set[int] = set()
        self._connects: list[ConnectRequest] = []
        self._timers: Deadlines[int] = Deadlines()
        self._next_id = 1
        self._rid = 0
        self.wall_offset = 0.0
        self.last_error = ""
        self.opened = 0  # local connections seen

    # --- services for the units --------------------------------------------------------------

    def wake(self, key: WakeKey) -> None:
        self._wakeups.add(key)

    def abort(self, cid: int) -> None:
        self._aborts.add(cid)
        self._wakeups.add(cid)

    def new_request_id(self) -> str:
        if self.settings.new_request_id is not None:
            rid: str = self.settings.new_request_id()
            return rid
        self._rid += 1
        return f"v-{self._rid}"

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def link_open(self, link: _Link, now: float) -> None:
        for conn in list(self._conns.values()):
            if isinstance(conn, _Local) and conn.pipe is None and not conn.gone:
                conn.start(link, now)
        self._arm_all()

    def link_down(self, link: _Link, why: str) -> None:
        if self.link is not link:
            return
        self.link = None
        if link.ep is not None:
            for key in link.ep.abandon():
                self.wake(key)
        if why and link.state == "open":
            log.warning("visitor tunnel closed: %s", why)
        elif why:
            self.last_error = self.last_error or why
            log.error("%s", why)
        link.state = "closed"
        for conn in list(self._conns.values()):
            if isinstance(conn, _Local):
                conn.fail("tunnel lost" if conn.pipe is not None else why)
        self.streams.clear()
        self.wake(link.cid)

    def _dial(self) -> None:
        cid = self._new_id()
        link = self.link = _Link(self, cid)
        self._conns[cid] = link
        addr = self.address
        self._connects.append(ConnectRequest(cid, addr.host, addr.port, addr.tls, "gateway"))
        self._wakeups.add(Signal.CONNECTS)

    def _arm_all(self) -> None:
        for cid, conn in self._conns.items():
            self._arm(cid, conn)

    def _arm(self, cid: int, conn: _Link | _Local) -> None:
        before = self._timers.next()
        when = conn.deadline()
        self._timers.set(cid, when)
        if when is not None and (before is None or when < before):
            self._wakeups.add(Signal.TIMER)

    # --- opening ---------------------------------------------------------------------------

    def open_local(self, now: float, peer: str) -> int:
        """A local connection (accepted, or stdin/stdout): open a stream for it."""
        cid = self._new_id()
        local = _Local(self, cid, peer, now)
        self._conns[cid] = local
        self.opened += 1
        link = self.link
        if link is None:
            self.last_error = ""
            self._dial()
        elif link.state == "open":
            local.start(link, now)
        self._arm(cid, local)
        return cid

    def pop_connects(self) -> list[ConnectRequest]:
        out, self._connects = self._connects, []
        return out

    @guarded()
    def connected(self, cid: int, now: float) -> None:
        conn = self._conns.get(cid)
        if isinstance(conn, _Link):
            conn.connected(now)
            self.wake(cid)
            self._arm(cid, conn)

    @guarded_close
    def connect_failed(self, cid: int, now: float, reason: str) -> None:
        conn = self._conns.pop(cid, None)
        if isinstance(conn, _Link):
            conn.connect_failed(now, reason)
        self._timers.set(cid, None)

    # --- driver contract -------------------------------------------------------------------

    @guarded()
    def receive(self, cid: int, data: bytes, now: float) -> None:
        conn = self._conns.get(cid)
        if conn is not None:
            self.wake(cid)
            conn.receive(data, now)
            self._arm(cid, conn)

    def lost(self, cid: int, now: float, reason: str = "") -> None:
        conn = self._conns.get(cid)
        if conn is not None and cid not in self._doomed:
            conn.note_lost(reason)
        self.receive(cid, b"", now)

    @guarded((b"", True))
    def take_output(self, cid: int) -> tuple[bytes, bool]:
        conn = self._conns.get(cid)
        return (b"", True) if conn is None else conn.take_output()

    @guarded()
    def written(self, cid: int, now: float) -> None:
        conn = self._conns.get(cid)
        if conn is not None:
            conn.written(now)
            self._arm(cid, conn)

    @guarded(False)
    def can_read(self, cid: int) -> bool:
        conn = self._conns.get(cid)
        return conn is not None and conn.can_read()

    @guarded_close
    def closed(self, cid: int, now: float) -> None:
        conn = self._conns.pop(cid, None)
        self._timers.set(cid, None)
        if conn is not None:
            conn.closed(now)

    def pop_wakeups(self) -> set[WakeKey]:
        out, self._wakeups = self._wakeups, set()
        return out

    def pop_aborts(self) -> set[int]:
        out, self._aborts = self._aborts, set()
        return out

    def next_deadline(self) -> float | None:
        return self._timers.next()

    def handle_timer(self, now: float) -> None:
        for cid in self._timers.pop_due(now):
            conn = self._conns.get(cid)
            if conn is None:
                continue
            try:
                conn.on_timer(now)
            except Exception as exc:  # the crash barrier: this connection only
                self._contain(cid, exc, "a timer")
                continue
            when = conn.deadline()
            if when is not None and when <= now:
                when = now + 0.01  # never a hot loop in the driver
            self._timers.set(cid, when)

    def set_wall_clock(self, now: float, wall: float) -> None:
        self.wall_offset = wall - now

    @property
    def active(self) -> int:
        """Local connections open."""
        return sum(1 for c in self._conns.values() if isinstance(c, _Local))
