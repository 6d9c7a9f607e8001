"""ASGI apps the end-to-end tests serve through the tunnel (run under trio and asyncio)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import anyio


async def _read_body(receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise anyio.get_cancelled_exc_class()()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/echo" or path.startswith("/echo/"):
        body = await _read_body(receive)
        info = {
            "method": scope["method"],
            "path": path,
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "client": scope["client"],
            "scheme": scope["scheme"],
            "body_len": len(body),
            "state": dict(scope.get("state") or {}),
        }
        await _respond(send, 200, json.dumps(info).encode(), b"application/json")
    elif path == "/upload":
        # stream the request body through without holding it: report its size and a checksum
        total, checksum = 0, 0
        while True:
            message = await receive()
            data = message.get("body", b"")
            total += len(data)
            checksum = (checksum * 31 + sum(data[::4096])) % (1 << 61)
            if not message.get("more_body"):
                break
        await _respond(send, 200, json.dumps({"bytes": total}).encode(), b"application/json")
    elif path == "/download":
        size = int(query.get("n", "0"))
        chunk = bytes(range(256)) * 256  # 64 KiB
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(size).encode()),
                ],
            }
        )
        sent = 0
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            sent += len(part)
            await send({"type": "http.response.body", "body": part, "more_body": sent < size})
        if size == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/stream":
        count = int(query.get("n", "5"))
        delay = float(query.get("delay", "0"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await anyio.sleep(float(query.get("first_delay", "0")))
        for i in range(count):
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: event {i}\n\n".encode(),
                    "more_body": True,
                }
            )
            if delay:
                await anyio.sleep(delay)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        await anyio.sleep(float(query.get("s", "1")))
        await _respond(send, 200, b"slow done")
    elif path == "/error":
        raise RuntimeError("boom (deliberate test failure)")
    elif path == "/cookies":
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", b"/echo"),
                    (b"set-cookie", b"a=1; Path=/"),
                    (b"set-cookie", b"b=2; Path=/"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
    else:
        await _respond(send, 404, b"not found")
