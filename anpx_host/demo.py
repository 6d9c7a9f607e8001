"""The built-in demo app that ``both`` serves when no app is given: pure ASGI 3.

* ``GET /``        a page saying the tunnel works (HTML for browsers, text for curl)
* ``/echo``        the request as JSON: method, path, query, headers, body (any method)
* ``GET /stream``  a short server-sent events stream (``?n=`` events, default 5, at most 100)
* ``GET /health``  the app's own health answer: the gateway's is on its admin listener,
  so an app's ``/health`` is never shadowed
* ``GET /ws``      a WebSocket echo console (a page); ``/ws/echo`` is its WebSocket, which
  echoes every text and binary message (see docs/websocket.md)

It never sleeps or reads a clock: every await is an ASGI ``receive``/``send``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from anpx_core.strict import StrictError, parse_uint

__all__ = ["ECHO_MAX_BODY", "STREAM_DEFAULT", "STREAM_MAX", "app"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ECHO_MAX_BODY = 1024 * 1024
STREAM_DEFAULT = 5
STREAM_MAX = 100


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    if scope["type"] != "http":
        raise RuntimeError(f"the demo app serves HTTP and WebSocket, not {scope['type']!r}")
    path, method = scope["path"], scope["method"]
    routes: dict[str, tuple[tuple[str, ...], Callable[..., Awaitable[None]]]] = {
        "/": (("GET", "HEAD"), _index),
        "/echo": ((), _echo),
        "/stream": (("GET",), _stream),
        "/health": (("GET", "HEAD"), _health),
        "/ws": (("GET", "HEAD"), _ws_page),
    }
    route = routes.get(path)
    if route is None:
        await _respond(send, 404, "text/plain; charset=utf-8", f"not found: {path}\n".encode())
        return
    methods, handler = route
    if methods and method not in methods:
        await _respond(
            send,
            405,
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            [(b"allow", ", ".join(methods).encode())],
        )
        return
    await handler(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]


def _header(scope: Scope, name: str) -> str | None:
    return next((v for k, v in _headers(scope) if k == name), None)


async def _respond(
    send: Send,
    status: int,
    content_type: str,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "unknown"
    # the tunnel carries the client's address, not its port (0 here): show what is known
    return f"{client[0]}:{client[1]}" if client[1] else str(client[0])


async def _index(scope: Scope, receive: Receive, send: Send) -> None:
    facts = [
        ("request id", _header(scope, "x-request-id") or "-"),
        ("client", _client(scope)),
        ("forwarded for", _header(scope, "x-forwarded-for") or "-"),
        ("host", _header(scope, "host") or "-"),
    ]
    if "text/html" in (_header(scope, "accept") or ""):
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>anpx works</title></head>"
            "<body><h1>The anpx tunnel works</h1>"
            "<p>This page came from the demo app behind the receiver, through the gateway.</p>"
            f"<table>{rows}</table>"
            "<p>Try <a href='/echo?hello=world'>/echo</a>, <a href='/stream'>/stream</a> and "
            "the <a href='/ws'>WebSocket echo console</a>.</p>"
            "</body></html>\n"
        )
        await _respond(send, 200, "text/html; charset=utf-8", page.encode())
        return
    lines = ["The anpx tunnel works: this came from the demo app behind the receiver."]
    lines += [f"{k}: {v}" for k, v in facts]
    lines.append("Try /echo, /stream and the WebSocket echo console at /ws (in a browser).")
    await _respond(send, 200, "text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode())


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client left or it exceeds ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = await _read_body(receive, ECHO_MAX_BODY)
    if body is None:
        await _respond(
            send,
            413,
            "text/plain; charset=utf-8",
            f"echo takes at most {ECHO_MAX_BODY} bytes\n".encode(),
        )
        return
    query = scope["query_string"].decode("latin-1")
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode(), "base64"
    client = scope.get("client")
    echo = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "query_string": query,
        "query": parse_qs(query, keep_blank_values=True),
        "headers": [[k, v] for k, v in _headers(scope)],
        "body": text,
        "body_encoding": encoding,
        "body_length": len(body),
        "client": list(client) if client else None,
        "scheme": scope.get("scheme", "http"),
        "http_version": scope.get("http_version", "1.1"),
        "root_path": scope.get("root_path", ""),
    }
    data = json.dumps(echo, indent=2, ensure_ascii=False).encode() + b"\n"
    await _respond(send, 200, "application/json", data)


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    values = parse_qs(scope["query_string"].decode("latin-1")).get("n", [str(STREAM_DEFAULT)])
    try:
        count = parse_uint(values[-1], STREAM_MAX, "n")
    except StrictError:
        count = 0
    if not 1 <= count <= STREAM_MAX:
        message = f"n must be an integer from 1 to {STREAM_MAX}\n".encode()
        await _respond(send, 400, "text/plain; charset=utf-8", message)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
            ],
        }
    )
    for i in range(1, count + 1):
        event = f"id: {i}\nevent: tick\ndata: {json.dumps({'n': i, 'of': count})}\n\n"
        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"event: done\ndata: {}\n\n"})


async def _health(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps({"status": "ok", "served_by": "anpx demo app"}).encode() + b"\n"
    await _respond(send, 200, "application/json", body)


WS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>anpx WebSocket echo</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}
#log{border:1px solid #ccc;height:16em;overflow:auto;padding:.5em;white-space:pre-wrap}
.sys{color:#777}.out{color:#036}.in{color:#063}</style></head>
<body><h1>WebSocket echo console</h1>
<p>This page opens a WebSocket to <code>/ws/echo</code> through the tunnel; the demo app
echoes every message back. <a href="/">Back</a></p>
<div id="log"></div>
<form id="form"><input id="text" size="40" value="hello through the tunnel" autofocus>
<button>Send</button> <button type="button" id="close">Close</button></form>
<script>
const log = document.getElementById("log");
function line(cls, text) {
  const div = document.createElement("div");
  div.className = cls; div.textContent = text;
  log.appendChild(div); log.scrollTop = log.scrollHeight;
}
const scheme = location.protocol === "https:" ? "wss" : "ws";
const ws = new WebSocket(`${scheme}://${location.host}/ws/echo`);
ws.onopen = () => line("sys", "connected");
ws.onmessage = (ev) => line("in", "< " + ev.data);
ws.onclose = (ev) => line("sys", `closed: ${ev.code} ${ev.reason}`);
ws.onerror = () => line("sys", "error (see the browser console)");
document.getElementById("form").onsubmit = (ev) => {
  ev.preventDefault();
  const text = document.getElementById("text").value;
  if (ws.readyState === WebSocket.OPEN) { ws.send(text); line("out", "> " + text); }
};
document.getElementById("close").onclick = () => ws.close(1000, "bye from the page");
</script></body></html>
"""


async def _ws_page(scope: Scope, receive: Receive, send: Send) -> None:
    await _respond(send, 200, "text/html; charset=utf-8", WS_PAGE.encode())


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """``/ws/echo``: accept and echo every message until the client closes."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws/echo":
        await send({"type": "websocket.close", "code": 1000})  # answered 403
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "connected to the anpx demo echo"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
