"""The gateway's coordinator: the connection table, the driver contract, timers and
wake-ups; each call goes to the connection's unit by kind (see the package docstring)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import messages as M
from ..auth import NoAuth, ServerAuth
from ..barrier import CrashBarrier, guarded, guarded_close
from ..contract import Signal, WakeKey
from ..http1 import FrontLimits, HttpFront
from ..routing import Route, RouteTable
from ..stats import Stats
from ..timers import Deadlines
from ..tunnel import DEFAULT_HIGH_WATER, DEFAULT_STREAM_WINDOW
from ..websocket import WsLimits
from ..ws_relay import WsSettings
from .admin import AdminConn
from .http import REQUEST_ID_HEADER, WRITE_CHUNK, HttpExchanges
from .proxy import IPNetwork, ProxyTrust
from .tcp import GatewayTcp, GatewayTcpSettings, TcpListen
from .tunnels import Tunnels
from .websocket import WebSockets

__all__ = [
    "REQUEST_ID_HEADER",
    "WRITE_CHUNK",
    "Connection",
    "GatewayCore",
    "GatewaySettings",
    "counter_request_ids",
]

log = logging.getLogger("anpx.gateway")

MIN_TIMER_STEP = 0.01  # a connection's timer runs at most this often if it stays due


def counter_request_ids() -> Callable[[], str]:
    """Request ids from a counter, formatted like UUIDs (deterministic: for tests and
    embedders who do not care; the host passes ``lambda: str(uuid.uuid4())``)."""
    counter = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(counter):012x}"


@dataclass(slots=True)
class GatewaySettings:
    """Every limit of the gateway core; the config layer fills it from the file and options."""

    timeout: float = 30.0  # seconds from request head to response head, then 504
    max_streams_per_receiver: int = 100  # concurrent requests on one tunnel, beyond: 503
    max_connections: int = 1000  # concurrent client connections, beyond: 503 and close
    front: FrontLimits = field(default_factory=FrontLimits)
    ws: WsLimits = field(default_factory=WsLimits)
    stream_window: int | None = DEFAULT_STREAM_WINDOW  # None: do not offer flow control
    send_frame_size: int = M.DEFAULT_SEND_FRAME_SIZE
    codec: M.Limits = field(default_factory=M.Limits)
    high_water: int = DEFAULT_HIGH_WATER
    auth: ServerAuth = field(default_factory=NoAuth)
    # receiver id -> the routes it may claim (None: any receiver may claim any route)
    route_claims: dict[str, list[Route]] | None = None
    # per-client-address request rate: key, now -> None (allowed) or seconds to wait
    rate_limit: Callable[[str, float], float | None] | None = None
    # reverse proxies in front of the gateway whose X-Forwarded-* headers are believed
    trusted_proxies: list[IPNetwork] = field(default_factory=list)
    # /stats and /metrics need "Authorization: Bearer <token>" when set (/health stays open)
    admin_token: bytes | None = None
    # Response bytes queued for one client connection and not yet written to it; above
    # this no further pipelined request is served until the client reads.
    max_output_bytes: int = 1024 * 1024
    # Fairness: one client address (IPv6: its /64) holds at most this many connections
    # (connections from trusted proxies are not counted) and in-flight requests; 0: no cap.
    max_connections_per_address: int = 100
    # half of max_streams_per_receiver: an office behind one NAT or an agent fanning out gets
    # 50 at once, one address never more than half a receiver (docs/security.md)
    max_streams_per_address: int = 50
    # A client connection whose pending output makes no progress for this long (the client
    # stopped reading but keeps the connection open) is reset; 0: never.
    send_timeout: float = 60.0
    # clients' WebSockets carried through the tunnel ([gateway.websocket], docs/websocket.md)
    websocket: WsSettings = field(default_factory=WsSettings)
    # The id of each stream (and of the gateway's own answers): injected, see counter_request_ids
    new_request_id: Callable[[], str] = field(default_factory=counter_request_ids)
    # Every worker's tunnel port, named in each 101 (anpx-tunnel-ports) so that a receiver
    # holds a tunnel to every worker of a multi-process gateway; []: one process, no header.
    tunnel_ports: list[int] = field(default_factory=list)
    # TCP streams: listeners, service claims, visitors, timeouts (gateway/tcp.py)
    tcp: GatewayTcpSettings = field(default_factory=GatewayTcpSettings)


class Connection(Protocol):
    """One accepted socket of some kind; the coordinator hands it the driver's calls."""

    @property
    def cid(self) -> int: ...

    def receive(self, data: bytes, now: float) -> None: ...
    def take_output(self) -> tuple[bytes, bool]: ...
    def written(self, now: float) -> None: ...
    def can_read(self) -> bool: ...
    def closed(self, now: float) -> None: ...

    def resume(self, now: float) -> None:
        """Work deferred to the end of the current call (a pipelined request)."""
        ...

    def deadline_at(self, now: float) -> float | None:
        """When :meth:`on_timer` must run next (None: never), asked at the end of every
        call that touched the connection (``now``: that call's time)."""
        ...

    def on_timer(self, now: float) -> None: ...


class GatewayCore(CrashBarrier):
    _barrier_log = log

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self._doomed: set[int] = set()  # reset by the crash barrier, socket not closed yet
        self.stats = Stats()
        self.routes = RouteTable()
        self.proxies = ProxyTrust(self.settings.trusted_proxies)
        self.http = HttpExchanges(self)
        self.tunnels = Tunnels(self)
        self.websockets = WebSockets(self)
        self.tcp = GatewayTcp(self)
        self._conns: dict[int, Connection] = {}
        self._next_id = 1
        self._wakeups: set[WakeKey] = set()
        self._aborts: set[int] = set()
        self._touched: set[int] = set()  # connections whose deadline may have changed
        self._due: list[Connection] = []  # resume() at the end of the current call
        self._timers: Deadlines[int] = Deadlines()
        self._reported: float | None = None  # what next_deadline() last told the driver
        self._now = 0.0  # the time of the call being handled, for access-log durations
        self.wall_offset = 0.0  # Unix time minus the driver's clock (set_wall_clock)
        self.draining = False
        self._drained_told = False

    # --- services for the units ------------------------------------------------------------

    @property
    def now(self) -> float:
        """The time of the call being handled."""
        return self._now

    def wake(self, cid: int) -> None:
        """Connection ``cid`` has something new for the driver (and maybe a new deadline)."""
        self._wakeups.add(cid)
        self._touched.add(cid)

    def signal(self, key: Signal) -> None:
        """Name ``key`` in the next ``pop_wakeups()``."""
        self._wakeups.add(key)

    def wake_all(self, cids: Iterable[int]) -> None:
        for cid in cids:
            self.wake(cid)

    def abort(self, cid: int) -> None:
        """Have the driver reset connection ``cid`` (close without flushing)."""
        self._aborts.add(cid)
        self.wake(cid)

    def defer(self, conn: Connection) -> None:
        """Run ``conn.resume(now)`` at the end of the current call."""
        self._due.append(conn)

    def contain(self, cid: int, exc: BaseException, where: str) -> None:
        """The crash barrier: log ``exc`` and reset connection ``cid`` only."""
        self._contain(cid, exc, where)

    def connection(self, cid: int) -> Connection | None:
        return self._conns.get(cid)

    def replace(self, cid: int, conn: Connection) -> None:
        """Connection ``cid`` changes hands (an HTTP connection switched to a WebSocket and
        back): the driver's calls for it go to ``conn`` from now on."""
        if cid in self._conns:
            self._conns[cid] = conn
            self.wake(cid)

    # --- opening connections ---------------------------------------------------------------

    def _add(self, conn: Connection) -> int:
        self._conns[conn.cid] = conn
        self._touched.add(conn.cid)
        self._settle()
        return conn.cid

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def open_client(
        self,
        now: float,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        scheme: str = "http",
    ) -> int:
        self._now = now
        return self._add(self.http.open(self._new_id(), now, client, server, scheme))

    def open_tunnel(self, now: float, peer: tuple[str, int] | None) -> int:
        self._now = now
        return self._add(self.tunnels.new(self._new_id(), now, peer))

    def open_tcp(self, now: float, client: tuple[str, int] | None, listen: TcpListen) -> int:
        """A connection accepted on a ``[[gateway.tcp]]`` listener (reset at once when
        refused: the driver registers it before ``sync()`` so the abort is seen)."""
        self._now = now
        return self._add(self.tcp.open(self._new_id(), now, client, listen))

    def open_admin(
        self, now: float, client: tuple[str, int] | None, server: tuple[str, int] | None
    ) -> int:
        self._now = now
        front = HttpFront(self.settings.front, now, client=client, server=server)
        return self._add(AdminConn(self, self._new_id(), front))

    def open(
        self,
        kind: str,
        now: float,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        tls: bool = False,
    ) -> int:
        """A connection accepted on a listener of ``kind`` ("http", "tunnel" or "admin")."""
        if kind == "http":
            return self.open_client(now, client, server, "https" if tls else "http")
        if kind == "tunnel":
            return self.open_tunnel(now, client)
        if kind == "admin":
            return self.open_admin(now, client, server)
        raise ValueError(f"no listener kind {kind!r}")

    # --- driver contract -------------------------------------------------------------------

    def receive(self, cid: int, data: bytes, now: float) -> None:
        self._now = now
        self._receive(cid, data, now)
        self._settle()

    @guarded()
    def _receive(self, cid: int, data: bytes, now: float) -> None:
        conn = self._conns.get(cid)
        if conn is not None:
            self._touched.add(cid)
            wants_write = getattr(conn, "wants_write", None)
            conn.receive(data, now)
            # The driver's writer for ``cid`` wakes only when it has something to do: a
            # connection that can tell (wants_write) saves a wake-up per request that would
            # find nothing to write; any other connection is woken after every read.
            if wants_write is None or wants_write():
                self._wakeups.add(cid)

    def lost(self, cid: int, now: float, reason: str = "") -> None:
        """The socket failed (``reason``: the error, for logs): EOF, after telling a
        connection that wants to know (a TCP stream propagates it as a reset)."""
        note = getattr(self._conns.get(cid), "note_lost", None)
        if note is not None:
            self._now = now
            self._note_lost(cid, note, reason)
        self.receive(cid, b"", now)

    @guarded()
    def _note_lost(self, cid: int, note: Callable[[str], None], reason: str) -> None:
        note(reason)

    def take_output(self, cid: int) -> tuple[bytes, bool]:
        out: tuple[bytes, bool] = self._take_output(cid)
        # No _settle(): the driver does not sync after this call. A connection's deadline
        # only moves later here (see ClientConn.deadline_at); the heap notices when it fires.
        return out

    @guarded((b"", True))
    def _take_output(self, cid: int) -> tuple[bytes, bool]:
        conn = self._conns.get(cid)
        if conn is None:
            return b"", True
        self._touched.add(cid)
        return conn.take_output()

    def written(self, cid: int, now: float) -> None:
        self._now = now
        self._written(cid, now)
        self._settle()

    @guarded()
    def _written(self, cid: int, now: float) -> None:
        conn = self._conns.get(cid)
        if conn is not None:
            self._touched.add(cid)
            conn.written(now)

    @guarded(False)
    def can_read(self, cid: int) -> bool:
        conn = self._conns.get(cid)
        return conn is not None and conn.can_read()

    def closed(self, cid: int, now: float) -> None:
        """The driver closed the socket: forget the connection."""
        self._now = now
        self._closed(cid, now)
        self._timers.set(cid, None)
        self._settle()

    @guarded_close
    def _closed(self, cid: int, now: float) -> None:
        conn = self._conns.pop(cid, None)
        if conn is not None:
            conn.closed(now)

    def resume_handshakes(self, now: float) -> None:
        """The authenticator got what it waited for (a DID document): decide parked handshakes."""
        self._now = now
        self.tunnels.resume_parked(now)
        self._settle()

    def pop_wakeups(self) -> set[WakeKey]:
        woken, self._wakeups = self._wakeups, set()
        return woken

    def pop_aborts(self) -> set[int]:
        """Connections to reset now: the driver aborts the socket (a pending write too)."""
        aborts, self._aborts = self._aborts, set()
        return aborts

    def set_wall_clock(self, now: float, wall: float) -> None:
        """Tell the core the Unix time ``wall`` at driver time ``now`` (auth timestamps)."""
        self.wall_offset = wall - now

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`handle_timer` must run; None: no timer."""
        self._reported = self._timers.next()
        return self._reported

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now`` (cheap when none is)."""
        self._now = now
        ran = self._timers.pop_due(now)
        for cid in ran:
            conn = self._conns.get(cid)
            if conn is None or cid in self._doomed:
                continue
            self._touched.add(cid)
            try:
                conn.on_timer(now)
            except Exception as exc:  # the crash barrier: this connection only
                self._contain(cid, exc, "a timer")
        self._settle(set(ran))

    def _settle(self, ran: set[int] | None = None) -> None:
        """The end of every call: deferred work, deadlines, the TIMER and DRAINED signals.
        ``ran``: connections whose timer just ran (handle_timer)."""
        while self._due:
            conn = self._due.pop()
            cid = conn.cid
            if self._conns.get(cid) is not conn or cid in self._doomed:
                continue
            self.wake(cid)
            try:
                conn.resume(self._now)
            except Exception as exc:  # the crash barrier: this connection only
                self._contain(cid, exc, "a pipelined request")
        touched_set, conns, doomed, timers = self._touched, self._conns, self._doomed, self._timers
        while touched_set:
            cid = touched_set.pop()
            touched = conns.get(cid)
            if touched is None or cid in doomed:
                timers.set(cid, None)
                continue
            try:
                when = touched.deadline_at(self._now)
                if ran and cid in ran and when is not None and when <= self._now:
                    # A timer that did not move its own deadline would spin the driver's
                    # timer task: run it again a little later instead (a bug, not a plan).
                    log.warning("connection %d: a timer left its deadline due", cid)
                    when = self._now + MIN_TIMER_STEP
                timers.set(cid, when)
            except Exception as exc:  # the crash barrier: this connection only
                timers.set(cid, None)
                self._contain(cid, exc, "arming a timer")
        earliest = self._timers.next()
        if earliest is not None and (self._reported is None or earliest < self._reported):
            self._wakeups.add(Signal.TIMER)
        if self.draining:
            if self.in_flight:
                self._drained_told = False
            elif not self._drained_told:
                self._drained_told = True
                self._wakeups.add(Signal.DRAINED)

    # --- lifecycle -------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Stop taking new requests; in-flight ones go on (SIGTERM). ``Signal.DRAINED``
        is woken once none is left."""
        self.draining = True
        self._settle()

    @property
    def in_flight(self) -> int:
        return self.tunnels.in_flight

    def close_tunnels(self, code: int = 1001, reason: str = "gateway shutting down") -> None:
        self.websockets.going_away(self._now)
        self.tunnels.close_all(code, reason)
        self._settle()

    @property
    def receivers(self) -> list[dict[str, Any]]:
        return self.tunnels.describe()
