"""The ASGI backend of the HTTP stream kind: requests served by the in-process app.

The driver runs the app for each ``(call_id, scope)`` it pops; the app's ``receive`` and
``send`` come here (``asgi_receive`` / ``asgi_send`` / ``asgi_writable``) and its end is
reported with ``app_finished``. A call stays in flight until the app has returned, even
when its stream ended first (the app learns at its next receive or send).
"""

from __future__ import annotations

import logging
from typing import Any

from ..asgi import AsgiError, AsgiHttpCall, ClientDisconnected, build_scope
from .context import ReceiverContext
from .http import HttpCall, HttpStreams

log = logging.getLogger("anpx.receiver")

Message = dict[str, Any]
DISCONNECT: Message = {"type": "http.disconnect"}


class AsgiCalls:
    def __init__(self, ctx: ReceiverContext, http: HttpStreams) -> None:
        self.ctx = ctx
        self.http = http
        self.lifespan_state: dict[str, Any] | None = None  # copied into each scope

    # --- HttpBackend ------------------------------------------------------------------------

    def start(
        self,
        call: HttpCall,
        server: tuple[str, int | None] | None,
        scheme: str,
        client: tuple[str, int] | None,
    ) -> None:
        settings = self.ctx.settings
        scope = build_scope(
            call.head,
            client=client,
            server=server,
            scheme=scheme,
            root_path=settings.root_path,
            state=self.lifespan_state,
        )
        # v1: the tunnel is paused at max_buffered_body (see holding_body), but what one
        # read already brought still lands here; only a broken peer gets past this cap.
        limit = settings.max_buffered_body
        session = call.link.session
        if session is not None and not session.flow:
            limit += 2 * settings.ws.max_message_size
        call.asgi = AsgiHttpCall(scope, limit)
        self.ctx.start_app_call(call.cid, scope)

    def body(self, call: HttpCall, data: bytes) -> None:
        assert call.asgi is not None
        try:
            call.asgi.body_received(data)
        except AsgiError:
            self.http.cancel(call, "request body over the receiver's buffer")
            return
        self.ctx.wake(call.cid)

    def end(self, call: HttpCall) -> None:
        assert call.asgi is not None
        call.asgi.body_ended()
        self.ctx.wake(call.cid)

    def writable(self, call: HttpCall) -> None:
        self.ctx.wake(call.cid)

    def gone(self, call: HttpCall) -> bool:
        if call.asgi is None:  # refused before the app was called
            return False
        call.asgi.disconnected()
        self.ctx.wake(call.cid)  # the app learns at its next receive/send
        return True

    def buffered(self, call: HttpCall) -> int:
        return 0 if call.asgi is None else call.asgi.buffered

    def stop(self) -> None:
        pass

    # --- the app's side -----------------------------------------------------------------

    def _call(self, call_id: int) -> HttpCall | None:
        call = self.http.calls.get(call_id)
        return call if call is not None and call.asgi is not None else None

    def receive(self, call_id: int) -> Message | None:
        call = self._call(call_id)
        if call is None:
            return DISCONNECT
        try:
            return self._receive(call)
        except Exception as exc:  # the crash barrier: this stream only
            self.http.contain(call, exc, "receive")
            return DISCONNECT

    def _receive(self, call: HttpCall) -> Message | None:
        assert call.asgi is not None
        before = call.asgi.consumed
        message = call.asgi.receive()
        taken = call.asgi.consumed - before
        if taken and not call.done and call.link.session is not None:
            call.link.session.consumed(call.rid, taken)
            call.link.session.flush_credits()
            self.ctx.wake(call.link.cid)
        return message

    def send(self, call_id: int, message: Message) -> None:
        call = self.http.calls.get(call_id)
        if call is None or call.asgi is None:
            raise ClientDisconnected("the request is over")
        assert call.asgi is not None
        parts = call.asgi.send(message)  # AsgiError / ClientDisconnected: the app's to handle
        try:
            self.http.respond(call, parts)
        except Exception as exc:  # the crash barrier: this stream only
            self.http.contain(call, exc, "send")
            raise ClientDisconnected("the stream was reset after an internal error") from None

    def writable_now(self, call_id: int) -> bool:
        call = self.http.calls.get(call_id)
        if call is None or call.asgi is None or call.done:
            return True
        ep = call.link.ep
        if ep is None or ep.session is None:
            return True
        try:
            return ep.may_produce(call_id, call.rid)  # False: woken when it may
        except Exception as exc:  # the crash barrier: this stream only
            self.http.contain(call, exc, "send")
            return True

    def finished(self, call_id: int, exc: BaseException | None) -> None:
        call = self.http.calls.pop(call_id, None)
        if call is None or call.asgi is None:
            return
        if exc is None:
            pass
        elif isinstance(exc, ClientDisconnected) and call.gone_reason:
            # the stream ended first (client gone, gateway timeout, reset): the app only learnt
            # it at its next send/receive, which is the ASGI way, not an app failure
            log.debug(
                "app stopped on %s %s: %s", call.head.method, call.head.target, call.gone_reason
            )
        else:
            log.error("app failed on %s %s", call.head.method, call.head.target, exc_info=exc)
        try:
            self.http.respond(call, call.asgi.app_returned(exc))
            if not call.done:
                self.http.cancel(call, "app returned without completing the response")
        except Exception as err:  # the crash barrier: this stream only
            self.http.contain(call, err, "the end of the app call")
        call.link.streams.pop(call.rid, None)
