"""The gateway's admin responder: /health (open), /stats and /metrics (behind
``admin_token`` when set), answered by the gateway itself on the admin listener."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from ..headers import get_header
from ..http1 import FrontEvent, HttpFront, RequestStarted
from ..meta import RequestHead, ResponseHead

if TYPE_CHECKING:
    from .core import GatewayCore


class AdminConn:
    """One connection to the admin listener."""

    __slots__ = ("cid", "core", "front")

    def __init__(self, core: GatewayCore, cid: int, front: HttpFront) -> None:
        self.core = core
        self.cid = cid
        self.front = front

    # --- the coordinator's calls -----------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        for event in self.front.receive_data(data, now):
            self._event(event)

    def resume(self, now: float) -> None:
        for event in self.front.tick(now):
            self._event(event)

    def take_output(self) -> tuple[bytes, bool]:
        return self.front.data_to_send(), self.front.closed

    def written(self, now: float) -> None:
        pass

    def can_read(self) -> bool:
        return self.front.wants_read

    def closed(self, now: float) -> None:
        pass

    def deadline_at(self, now: float) -> float | None:
        return self.front.next_deadline()

    def on_timer(self, now: float) -> None:
        events = self.front.tick(now)
        if events or self.front.closed:  # an idle keep-alive connection closes silently
            self.core.wake(self.cid)
        for event in events:
            self._event(event)

    # --- answering -------------------------------------------------------------------------

    def _event(self, event: FrontEvent) -> None:
        if not isinstance(event, RequestStarted):
            return
        core, front = self.core, self.front
        core.wake(self.cid)
        core.defer(self)  # the answer is complete at once: a pipelined request may follow
        path = event.head.target.partition("?")[0]
        receivers = len(core.tunnels.describe())
        content_type = "application/json"
        status = 200
        if path in ("/stats", "/metrics") and not self._allowed(event.head):
            front.send_error(
                401, "a bearer token is required", [("www-authenticate", 'Bearer realm="anpx"')]
            )
            return
        if path == "/health":
            ready = receivers > 0
            body = core.stats.health_json(ready=ready, receivers=receivers, draining=core.draining)
            status = 200 if ready and not core.draining else 503
        elif path == "/stats":
            body = core.stats.stats_json(
                receivers=core.receivers,
                routes=core.routes.routes,
                in_flight=core.in_flight,
                tcp_open=core.tcp.open_streams(),
            )
        elif path == "/metrics":
            body = core.stats.prometheus(
                receivers=receivers,
                in_flight=core.in_flight,
                identities=tuple(t.identity for t in core.tunnels.open if t.session is not None),
                tcp_open=core.tcp.open_streams(),
            )
            content_type = "text/plain; version=0.0.4; charset=utf-8"
        else:
            front.send_error(404, "unknown admin path; try /health, /stats or /metrics")
            return
        front.send_response(
            ResponseHead(
                status,
                "OK" if status == 200 else "Service Unavailable",
                [("content-type", content_type), ("content-length", str(len(body)))],
            )
        )
        front.send_data(body)
        front.end_response()

    def _allowed(self, head: RequestHead) -> bool:
        token = self.core.settings.admin_token
        if token is None:
            return True
        scheme, _, given = (get_header(head.headers, "authorization") or "").strip().partition(" ")
        # compare_digest takes the same time whatever matches; the length may show, not the token
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), token
        )
