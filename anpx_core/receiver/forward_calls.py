"""The forward backend of the HTTP stream kind: requests relayed to a local HTTP service.

Each call borrows an :class:`Upstream` (one h11 client connection, :mod:`..forward`) from
the keep-alive pool or asks the driver for a new one. An upstream is a connection of the
receiver: the coordinator routes the driver's calls for its socket here. Request body
bytes are credited back to the gateway only once the driver has written them upstream,
so a slow service slows its own stream, not the tunnel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..asgi import ResponseBody, ResponseStart
from ..forward import (
    ForwardConnection,
    ForwardError,
    ForwardEvent,
    ForwardPool,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from ..headers import get_header
from .context import ReceiverContext
from .http import HttpCall, HttpStreams, error_page
from .settings import ConnectRequest

log = logging.getLogger("anpx.receiver")


@dataclass(slots=True, eq=False)
class Upstream:
    """One connection to the local service (a :class:`.context.Connection`)."""

    cid: int
    conn: ForwardConnection
    unit: ForwardCalls
    call: HttpCall | None = None
    is_connected: bool = False
    taken: int = 0  # request body bytes the driver is writing
    pending_body: int = 0  # request body bytes handed to conn, not yet taken
    closing: bool = False

    def connected(self, now: float) -> None:
        self.is_connected = True

    def connect_failed(self, now: float, reason: str) -> None:
        if self.call is not None:
            self.unit.failed(self, f"local service unreachable: {reason}")

    def note_lost(self, reason: str) -> None:
        pass  # the EOF that follows says enough

    def receive(self, data: bytes, now: float) -> None:
        for event in self.conn.receive_data(data):
            self.unit.upstream_event(self, event)
        if self.call is None and not self.closing and not self.conn.reusable:
            # the service closed an idle pooled connection: never hand it out again
            self.unit.pool.discard(self.conn)
            self.closing = True

    def take_output(self) -> tuple[bytes, bool]:
        data = self.conn.data_to_send() if self.is_connected else b""
        self.taken += self.pending_body
        self.pending_body = 0
        return data, self.closing

    def written(self, now: float) -> None:
        if not self.taken:
            return
        call = self.call
        if call is not None and call.link.session is not None:
            call.link.session.consumed(call.rid, self.taken)
            call.link.session.flush_credits()
            self.unit.ctx.wake(call.link.cid)
        self.taken = 0

    def can_read(self) -> bool:
        call = self.call
        if call is None or call.link.session is None:
            return not self.closing
        return call.link.may_produce(self.cid, call.rid)

    def closed(self, now: float) -> None:
        self.unit.pool.discard(self.conn)
        if self.call is not None and not self.call.done:
            self.unit.failed(self, "local service closed the connection")


class ForwardCalls:
    def __init__(self, ctx: ReceiverContext, http: HttpStreams) -> None:
        self.ctx = ctx
        self.http = http
        self.pool = ForwardPool(ctx.settings.max_idle_upstreams)

    # --- HttpBackend ------------------------------------------------------------------------

    def start(
        self,
        call: HttpCall,
        server: tuple[str, int | None] | None,
        scheme: str,
        client: tuple[str, int] | None,
    ) -> None:
        self._forward(call, reuse=True)

    def body(self, call: HttpCall, data: bytes) -> None:
        up = call.upstream
        if up is None:
            return
        call.body_upstream += len(data)
        try:
            up.conn.send_body(data)
        except ForwardError as exc:
            self.failed(up, str(exc))
            return
        up.pending_body += len(data)
        self.ctx.wake(up.cid)

    def end(self, call: HttpCall) -> None:
        up = call.upstream
        if up is None:
            return
        call.request_ended = True
        try:
            up.conn.end_body()
        except ForwardError as exc:
            self.failed(up, str(exc))
            return
        self.ctx.wake(up.cid)

    def writable(self, call: HttpCall) -> None:
        self.ctx.wake(call.cid)
        if call.upstream is not None:
            self.ctx.wake(call.upstream.cid)

    def gone(self, call: HttpCall) -> bool:
        up = call.upstream
        if up is not None:
            up.call = None
            call.upstream = None
            up.closing = True  # mid-exchange: the connection cannot be reused
            self.ctx.wake(up.cid)
        return False

    def buffered(self, call: HttpCall) -> int:
        up = call.upstream
        return 0 if up is None else up.pending_body + up.taken

    def stop(self) -> None:
        for idle in self.pool.close_all():
            up: Upstream = idle.handle
            up.closing = True
            self.ctx.wake(up.cid)

    # --- upstream connections ---------------------------------------------------------------

    def _forward(self, call: HttpCall, *, reuse: bool) -> None:
        """Send the call's request to the local service, on a pooled connection if any."""
        pooled = self.pool.acquire() if reuse else None
        if pooled is not None:
            up: Upstream = pooled.handle
        else:
            forward = self.ctx.settings.forward
            assert forward is not None
            host, port = forward
            up = Upstream(self.ctx.new_id(), ForwardConnection(host, port), self)
            up.conn.handle = up
            self.ctx.conns[up.cid] = up
            self.ctx.connect(ConnectRequest(up.cid, host, port, False, "upstream"))
        up.call, call.upstream = call, up
        self.ctx.wake(up.cid)
        try:
            up.conn.start_request(call.head)
            if call.request_ended:
                up.conn.end_body()
        except ForwardError as exc:
            self.failed(up, f"cannot forward this request: {exc}")

    def upstream_event(self, up: Upstream, event: ForwardEvent) -> None:
        call = up.call
        if isinstance(event, UpstreamFailed):
            if (
                event.stale
                and call is not None
                and not call.body_upstream
                and not call.response_started
            ):
                # the service closed this idle connection: replay on a fresh one
                up.closing, up.call, call.upstream = True, None, None
                self.ctx.wake(up.cid)
                self._forward(call, reuse=False)
                return
            self.failed(up, event.reason)
            return
        if call is None:
            up.closing = True
            return
        if isinstance(event, UpstreamResponse):
            self.http.respond(call, [ResponseStart(event.head)])
        elif isinstance(event, UpstreamData):
            self.http.respond(call, [ResponseBody(event.data, True)])
        elif isinstance(event, UpstreamEnded):
            self.http.respond(call, [ResponseBody(b"", False)])
            self.http.finish(call)
            up.call, call.upstream = None, None
            if self.ctx.stopping or not self.pool.release(up.conn):
                up.closing = True
            self.ctx.wake(up.cid)

    def failed(self, up: Upstream, reason: str) -> None:
        up.closing = True
        self.ctx.wake(up.cid)
        call = up.call
        up.call = None
        if call is None:
            return
        call.upstream = None
        request_id = get_header(call.head.headers, "x-request-id") or call.rid
        log.warning(
            "forwarding %s %s (request %s) failed: %s",
            call.head.method,
            call.head.target,
            request_id,
            reason,
        )
        if call.response_started:
            self.http.cancel(call, reason)
        else:
            # Internet clients read this page: the local service's address and the OS error
            # stay in the log above; the request id ties the two together.
            text = (
                f"Bad Gateway: no valid answer from the local service\nrequest id: {request_id}\n"
            )
            page = error_page(502, "Bad Gateway", text.encode("utf-8", "replace"))
            self.http.respond(call, page)
        self.http.finish(call)
