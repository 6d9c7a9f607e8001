"""The ASGI app every benchmark scenario calls, served directly by uvicorn or behind anpx.

Pure ASGI 3 (no framework) so that the app costs the same few microseconds on both paths
and the difference measured is the path itself. Runs on asyncio and trio (anyio for sleeps).

* ``GET /small``                   13-byte text body
* ``POST /upload``                 a sink: reads the body part by part, answers its length
* ``GET /download?size=N``         N bytes (default 1 MiB) sent in 64 KiB parts from one
                                   shared buffer, so memory stays constant whatever N
* ``GET /delay?ms=N``              waits N ms (default 1000) then answers like ``/small``
* ``GET /sse?n=N&ms=M``            ``text/event-stream``: the first event at once, then
                                   N-1 more (default 3) every M ms (default 10)
* WebSocket ``/ws``                echoes every message (bench/ws_echo.py)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SMALL_BODY = b"Hello, world!"
PART = 64 * 1024
_PART_BYTES = b"x" * PART
_TEXT = [(b"content-type", b"text/plain")]


def _query_int(scope: Scope, name: str, default: int) -> int:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return int(values[0]) if values else default


async def _answer(send: Send, body: bytes, status: int = 200) -> None:
    headers = [*_TEXT, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _upload(receive: Receive, send: Send) -> None:
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await _answer(send, str(total).encode())


async def _download(scope: Scope, send: Send) -> None:
    size = _query_int(scope, "size", 1024 * 1024)
    headers = [(b"content-type", b"application/octet-stream")]
    headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    view = memoryview(_PART_BYTES)
    left = size
    while left > PART:
        await send({"type": "http.response.body", "body": _PART_BYTES, "more_body": True})
        left -= PART
    await send({"type": "http.response.body", "body": bytes(view[:left])})


async def _sse(scope: Scope, send: Send) -> None:
    n, ms = _query_int(scope, "n", 3), _query_int(scope, "ms", 10)
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(n):
        if i:
            await anyio.sleep(ms / 1000)
        event = f"id: {i}\ndata: event {i}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _ws_echo(receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _ws_echo(receive, send)
        return
    path = scope["path"]
    if path == "/small":
        await _answer(send, SMALL_BODY)
    elif path == "/upload":
        await _upload(receive, send)
    elif path == "/download":
        await _download(scope, send)
    elif path == "/delay":
        await anyio.sleep(_query_int(scope, "ms", 1000) / 1000)
        await _answer(send, SMALL_BODY)
    elif path == "/sse":
        await _sse(scope, send)
    else:
        await _answer(send, b"not found\n", 404)
