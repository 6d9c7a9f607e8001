"""A loopback HTTP/1.1 listener for the command app (``--mcp-port``), on anyio and h11.

AgentX served MCP on a port of its own; ``--mcp-port N`` does the same here: the same app
(same token, same sessions) on ``127.0.0.1:N``, for MCP clients on this machine. One
request per connection (``Connection: close``); a bounded number of connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import h11

__all__ = ["LocalListener"]

log = logging.getLogger("anpx.command")
MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024


class LocalListener:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        max_connections: int = 64,
        header_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.header_timeout = header_timeout
        self._slots = anyio.Semaphore(max_connections)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise RuntimeError(
                f"mcp_port: cannot listen on {self.host}:{self.port}: {reason}"
            ) from None
        log.info("command mode also listens on http://%s:%d/", self.host, self.port)
        task_status.started()
        async with listener:
            await listener.serve(self._connection)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        async with stream, self._slots:
            with contextlib.suppress(
                anyio.BrokenResourceError, anyio.ClosedResourceError, h11.ProtocolError
            ):
                await self._serve(stream)

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        request = None
        with anyio.move_on_after(self.header_timeout):
            request = await _next_event(conn, stream)
        if not isinstance(request, h11.Request):
            return
        peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
        target = request.target
        path, _, query = target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers],
            "client": (peer[0], peer[1]) if isinstance(peer, tuple) else None,
            "server": (self.host, self.port),
        }
        body_done = False
        started = False

        async def receive() -> dict[str, Any]:
            nonlocal body_done
            if not body_done:
                event = await _next_event(conn, stream)
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data), "more_body": True}
                body_done = True
                if isinstance(event, h11.EndOfMessage):
                    return {"type": "http.request", "body": b"", "more_body": False}
                return {"type": "http.disconnect"}
            # After the body: only the client closing can come.
            while await stream.receive(READ_SIZE):
                pass
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                await stream.send(
                    conn.send(h11.Response(status_code=message["status"], headers=headers))
                )
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    await stream.send(conn.send(h11.Data(data=message["body"])))
                if not message.get("more_body", False):
                    await stream.send(conn.send(h11.EndOfMessage()))

        try:
            await self.app(scope, _receive_safely(receive), send)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("command app failed on the local listener")
            if not started:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b""})


def _receive_safely(
    receive: Callable[[], Awaitable[dict[str, Any]]],
) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def wrapped() -> dict[str, Any]:
        try:
            message: dict[str, Any] = await receive()
            return message
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return {"type": "http.disconnect"}

    return wrapped


async def _next_event(conn: h11.Connection, stream: anyio.abc.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)
            continue
        return event
