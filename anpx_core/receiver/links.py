"""Gateway links: one tunnel per gateway URL, dialled, authenticated and re-dialled.

A :class:`GatewayLink` is a connection of the receiver (it answers the driver's calls for
its socket) and a timer owner (WebSocket handshake, ping and close timeouts, the JSON pings
a v1 gateway needs, and the reconnect backoff). The streams its tunnel carries go to the
:class:`LinkOwner` (the coordinator), which hands them to a stream kind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..auth import H_CLIENT_ID
from ..didwba import DID_REFUSAL_CODE
from ..endpoint import EndpointEvent, TunnelEndpoint
from ..meta import RequestHead
from ..routing import ROUTES_HEADER
from ..siblings import TUNNEL_PORTS_HEADER, parse_tunnel_ports
from ..strict import StrictError
from ..tcp import has_tcp, offer_tcp
from ..tunnel import StreamEvent, TunnelSession, parse_extensions
from ..websocket import (
    Closed,
    HandshakeAccepted,
    HandshakeRejected,
    HandshakeRequested,
    WsClient,
)
from ..wsstream import offer_ws_extensions, ws_in_effect
from .context import ReceiverContext
from .settings import MAX_RECONNECT_DELAY, ConnectRequest, GatewayAddress

log = logging.getLogger("anpx.receiver")


class LinkOwner(Protocol):
    """What a link needs from the coordinator."""

    def stream_event(self, link: GatewayLink, event: StreamEvent, now: float) -> None: ...
    def link_lost(self, link: GatewayLink) -> None: ...  # the tunnel is over: fail its streams
    def holding_body(self, link: GatewayLink) -> bool: ...  # v1: a request body waits
    def link_gave_up(self) -> None: ...
    def learned(self, link: GatewayLink, ports: list[int]) -> None: ...  # anpx-tunnel-ports
    def link_retired(self, link: GatewayLink) -> None: ...  # a learned link is forgotten


@dataclass(slots=True, eq=False)
class GatewayLink:
    """One gateway we keep a tunnel to."""

    address: GatewayAddress
    ctx: ReceiverContext
    owner: LinkOwner
    cid: int | None = None
    ep: TunnelEndpoint[WsClient] | None = None  # the tunnel, from connected() to down()
    attempts: int = 0  # failed attempts since a tunnel was last up (a 4003 is one)
    retry_at: float | None = 0.0  # when to connect next; None: connected or given up
    # idle | connecting | handshake | open | closed (flushing its Close) | refused (DID, 4003)
    state: str = "idle"
    close_reason: str = ""
    warned: str = ""  # the refusal last logged at warning (once per run of the same one)
    lost_reason: str = ""  # the socket error that ended it, if any (e.g. a TLS alert)
    streams: dict[str, Any] = field(default_factory=dict)  # request id -> a stream kind's stream
    ws_streams: bool = False  # the ws extension is in effect on the open tunnel
    # the configured link whose gateway named this endpoint (anpx-tunnel-ports); None: configured
    origin: GatewayLink | None = None
    retired: bool = False  # no longer named: close, never reconnect, then forgotten

    @property
    def key(self) -> tuple[str, int, str, bool]:
        a = self.address
        return (a.host.lower(), a.port, a.path, a.tls)

    tcp: bool = False  # the gateway accepted our TCP services (protocol.md §21)

    @property
    def session(self) -> TunnelSession | None:
        return None if self.ep is None else self.ep.session

    @property
    def backlog(self) -> int:
        """Frames we queued for the gateway that the driver has not written yet."""
        return 0 if self.ep is None else self.ep.backlog

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def may_produce(self, producer: int, rid: str) -> bool:
        """May ``producer`` (an app call, an upstream) queue more on stream ``rid`` now?
        If the tunnel's backlog is the reason it may not, it is woken once that drains."""
        return True if self.ep is None else self.ep.may_produce(producer, rid)

    # --- timers ----------------------------------------------------------------------------

    def deadline(self) -> float | None:
        if self.ep is not None:
            return None if self.cid in self.ctx.doomed else self.ep.next_deadline()
        if self.state == "idle" and not self.ctx.stopping:
            return self.retry_at
        return None

    def rearm(self) -> None:
        self.ctx.arm(self, self.deadline())

    def on_timer(self, now: float) -> None:
        if self.cid in self.ctx.doomed:
            return
        if self.ep is not None:
            ep, cid = self.ep, self.cid
            open_before = not ep.ws.closed
            self._events(ep.timers(now), now)
            if open_before and ep.stalled() and cid is not None:
                self.ctx.abort(cid)  # timed out with output unwritten: see Endpoint.stalled
            self.ctx.wake(self.cid)  # a keepalive ping may be queued
        elif (
            self.state == "idle"
            and self.retry_at is not None
            and now >= self.retry_at
            and not self.ctx.stopping
        ):
            self.dial()
        self.rearm()

    # --- the driver's calls for our socket --------------------------------------------------

    def dial(self) -> None:
        ctx = self.ctx
        cid = ctx.new_id()
        self.cid, self.state, self.retry_at = cid, "connecting", None
        ctx.conns[cid] = self
        addr = self.address
        ctx.connect(ConnectRequest(cid, addr.host, addr.port, addr.tls, "gateway"))
        self.rearm()

    def connected(self, now: float) -> None:
        assert self.cid is not None
        if self.retired:  # forgotten while dialling: the driver closes the unknown socket
            self.ctx.wake(self.cid)
            self.down(now, "no longer named by the gateway")
            return
        self.state = "handshake"
        ws = WsClient(
            self.address.host_header,
            self.address.path,
            self.ctx.settings.ws,
            now,
            headers=self._handshake_headers(now),
            mask_source=self.ctx.settings.mask_source,
        )
        self.ep = TunnelEndpoint(self.cid, ws, self.ctx.settings.high_water)
        self.rearm()

    def _handshake_headers(self, now: float) -> list[tuple[str, str]]:
        settings, addr = self.ctx.settings, self.address
        wall = now + self.ctx.wall_offset
        headers = list(settings.auth.request_headers(addr.host_header, addr.path, wall))
        if settings.client_id and not any(n == H_CLIENT_ID for n, _ in headers):
            headers.append((H_CLIENT_ID, settings.client_id))
        headers += offer_ws_extensions(settings.stream_window, ws=settings.websocket.enabled)
        if settings.routes:
            headers.append((ROUTES_HEADER, ", ".join(settings.routes)))
        return headers + offer_tcp(list(settings.tcp_services))

    def connect_failed(self, now: float, reason: str) -> None:
        addr = self.address
        self.down(now, f"cannot connect to {addr.host}:{addr.port}: {reason}")

    def note_lost(self, reason: str) -> None:
        if reason:
            self.lost_reason = reason

    def receive(self, data: bytes, now: float) -> None:
        if self.ep is None:
            return
        self._events(self.ep.receive(data, now), now)
        self.rearm()

    def take_output(self) -> tuple[bytes, bool]:
        return (b"", False) if self.ep is None else self.ep.take_output()

    def written(self, now: float) -> None:
        if self.ep is not None:
            self.ctx.wakeups.update(self.ep.written())

    def can_read(self) -> bool:
        return self.ep is not None and self.ep.can_read(held=self.owner.holding_body(self))

    def closed(self, now: float) -> None:
        self.down(now, "tunnel closed" if self.ep is not None else "connection closed")

    # --- what the coordinator asks of every link -------------------------------------------

    def send_drain(self) -> None:
        if self.session is not None:
            self.session.send_drain()
            self.ctx.wake(self.cid)

    def close(self) -> None:
        self.fail(1001, "receiver shutting down")
        self.retry_at = None
        self.rearm()

    def retire(self) -> None:
        """The gateway no longer names this (learned) endpoint: close it for good."""
        self.retired = True
        if self.ep is not None:
            self.fail(1000, "endpoint no longer named by the gateway")
        elif self.state == "idle":
            self.retry_at = None
            self.rearm()
            self.owner.link_retired(self)
        # "connecting": connected() or connect_failed() finishes the job

    def fail(self, code: int, reason: str) -> None:
        """Close the tunnel with ``code`` (e.g. 1002 for frames we cannot parse)."""
        if self.ep is not None:
            self.ep.ws.close(code, reason)
            self.ctx.wake(self.cid)

    def cancel_stream(self, rid: str, reason: str) -> None:
        if self.session is not None:
            self.session.cancel(rid, reason)
            self.ctx.wake(self.cid)

    # --- the tunnel's life ------------------------------------------------------------------

    def lose(self) -> None:
        """The tunnel is over (its socket may still be flushing a Close): fail its streams."""
        wake = self.ep.abandon() if self.ep is not None else set()
        self.owner.link_lost(self)
        self.streams.clear()
        self.ctx.wakeups.update(wake)

    def down(self, now: float, why: str) -> None:
        """The socket is gone: forget it and schedule the next attempt."""
        ctx = self.ctx
        was_open = self.state in ("open", "closed")
        self.lose()
        if self.cid is not None:
            ctx.conns.pop(self.cid, None)
        self.state, self.ep, self.cid = "idle", None, None
        self.ws_streams = False
        why = self.close_reason or why
        if self.lost_reason:
            why += f" ({self.lost_reason})"
        self.close_reason = self.lost_reason = ""
        if was_open:
            level = logging.INFO if ctx.stopping else logging.WARNING
            log.log(level, "tunnel to %s closed: %s", self.address.host_header, why)
            self.attempts = 0
            self.warned = ""  # a tunnel was up: a refusal after it is news again
        else:
            ctx.last_error = why
        self.attempts += 1
        self._schedule_retry(now, why)
        self.rearm()

    def _schedule_retry(self, now: float, why: str) -> None:
        settings = self.ctx.settings
        limit = settings.max_reconnect_attempts
        if self.retired:
            self.retry_at = None
            self.owner.link_retired(self)
        elif self.ctx.stopping:
            self.retry_at = None
        elif not settings.reconnect_enabled or (limit and self.attempts > limit):
            self.retry_at = None
            log.error(
                "giving up on %s after %d attempts: %s",
                self.address.host_header,
                self.attempts,
                why,
            )
            self.owner.link_gave_up()
        else:
            delay = backoff(settings.reconnect_delay, self.attempts, settings.jitter())
            self.retry_at = now + delay
            log.info(
                "reconnecting to %s in %.1fs (attempt %d): %s",
                self.address.host_header,
                delay,
                self.attempts,
                why,
            )

    def _events(self, events: Iterator[EndpointEvent], now: float) -> None:
        for event in events:  # lazily: the handshake opens the session for what follows
            if isinstance(event, StreamEvent):  # the usual case: one test
                self.owner.stream_event(self, event, now)
            elif isinstance(event, HandshakeAccepted):
                self._accepted(event, now)
            elif isinstance(event, HandshakeRejected):
                lines = event.body.decode("utf-8", "replace").strip().splitlines()
                detail = lines[0][:200] if lines else ""  # one log line, whatever it sent
                why = f"gateway refused the tunnel: HTTP {event.status}" + (
                    f": {detail}" if detail else ""
                )
                log.error("%s", why)
                self.ctx.last_error = self.close_reason = why
            elif isinstance(event, Closed):
                # Streams fail now; the socket stays until the driver has written our Close
                # frame (take_output reports close) and called closed().
                if event.code == DID_REFUSAL_CODE and self.state == "open":
                    self._did_refused(event)
                elif not self.close_reason:  # a refusal we logged already says more
                    self.close_reason = f"closed ({event.code} {event.reason})".strip()
                if self.state == "open":
                    self.state = "closed"
                self.lose()
            elif not isinstance(event, HandshakeRequested):
                self.owner.stream_event(self, event, now)

    def _accepted(self, event: HandshakeAccepted, now: float) -> None:
        ep, settings = self.ep, self.ctx.settings
        assert ep is not None
        problem = settings.auth.check_response(event.headers)
        if problem is not None:
            log.error("refusing gateway %s: %s", self.address.host_header, problem)
            self.ctx.last_error = self.close_reason = problem
            ep.ws.close(1008, "gateway failed authentication")
            return
        peer_window = parse_extensions(event.headers)
        local_window = settings.stream_window if peer_window is not None else None
        self.ws_streams = settings.websocket.enabled and ws_in_effect(
            local_window, peer_window, event.headers
        )
        self.tcp = has_tcp(event.headers) and peer_window is not None
        if settings.tcp_services and not self.tcp:
            log.warning("gateway %s does not take TCP services", self.address.host_header)
        session = ep.open_session(
            accepts=RequestHead,
            local_window=local_window,
            peer_window=peer_window,
            send_frame_size=settings.send_frame_size,
            limits=settings.codec,
        )
        if peer_window is None:
            session.greet_v1_gateway()
            # a v1 gateway drops receivers whose JSON pings stop for 2 x its ping interval
            ep.ws.ping_every(settings.v1_ping_interval, now)
        # attempts are reset when an open tunnel goes down: a gateway that accepts and then
        # refuses the DID (4003) is a failed attempt, with the backoff that goes with it
        self.state = "open"
        log.info(
            "tunnel to %s open (%s)",
            self.address.host_header,
            ("flow control, websocket" if self.ws_streams else "flow control")
            if session.flow
            else "v1 gateway",
        )
        if self.origin is None and settings.learn_endpoints:
            self._learn(event.headers)

    def _learn(self, headers: list[tuple[str, str]]) -> None:
        """A configured gateway's 101 names its workers' tunnel ports (none: only itself)."""
        values = [v for n, v in headers if n.lower() == TUNNEL_PORTS_HEADER]
        try:
            if len(values) > 1:
                raise StrictError(f"{TUNNEL_PORTS_HEADER} given {len(values)} times")
            limit = self.ctx.settings.max_learned_endpoints + 1  # itself and the others
            ports = parse_tunnel_ports(values[0], limit) if values else []
        except StrictError as exc:
            log.warning(
                "ignoring %s from %s: %s", TUNNEL_PORTS_HEADER, self.address.host_header, exc
            )
            return
        self.owner.learned(self, ports)

    def _did_refused(self, event: Closed) -> None:
        """The gateway accepted the upgrade, then closed it with 4003: it refused our DID.

        A failed attempt (backed off like any other), logged at warning once while the same
        refusal repeats; the gateway's log says which check failed.
        """
        reason = "".join(c if " " <= c <= "~" else "?" for c in event.reason[:123])  # one line
        why = (
            f"gateway {self.address.host_header} refused our DID ({event.code} {reason}): "
            "check [gateway.auth] allowed_dids, did_fetch_hosts and did_service_domains there"
        )
        if self.warned != why:
            log.warning("%s", why)
            self.warned = why
        self.ctx.last_error = self.close_reason = why
        self.state = "refused"


def backoff(first: float, attempts: int, jitter: float) -> float:
    """The wait before attempt ``attempts + 1``: ``first`` doubling per failure up to
    MAX_RECONNECT_DELAY, scaled by 0.5 + ``jitter`` (``jitter`` in [0, 1): x0.5 .. x1.5)."""
    base = first * 2.0 ** min(attempts - 1, 16)
    jitter = min(max(jitter, 0.0), 1.0)
    return min(base, MAX_RECONNECT_DELAY) * (0.5 + jitter)
