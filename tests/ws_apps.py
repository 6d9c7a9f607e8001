"""ASGI apps with WebSocket endpoints for the end-to-end tests (raw ASGI and FastAPI)."""

from __future__ import annotations

import json
import threading
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute

#: What the apps saw when a client went: (test key, code, reason), in order.
DISCONNECTS: list[tuple[str, int, str]] = []
#: Bodies POSTed to /result (the browser page reports what its WebSocket received).
RESULTS: list[bytes] = []
_lock = threading.Lock()

PUSH_COUNT = 64
PUSH_SIZE = 256 * 1024  # 16 MiB pushed at a client that does not read

BROWSER_PAGE = b"""<!doctype html>
<html><head><title>ws test</title></head><body><pre id="out">pending</pre>
<script>
const out = document.getElementById("out");
const got = [];
const ws = new WebSocket(`ws://${location.host}/ws/echo?key=browser`, ["chat"]);
ws.binaryType = "arraybuffer";
ws.onopen = () => { ws.send("hello from the browser"); ws.send(new Uint8Array([1, 2, 3])); };
ws.onmessage = (ev) => {
  got.push(typeof ev.data === "string" ? ev.data : Array.from(new Uint8Array(ev.data)).join(","));
  if (got.length === 2) ws.close(4000, "done");
};
ws.onclose = (ev) => {
  const result = JSON.stringify({protocol: ws.protocol, got: got, code: ev.code, reason: ev.reason});
  out.textContent = result;
  fetch("/result", {method: "POST", body: result});
};
ws.onerror = () => { fetch("/result", {method: "POST", body: '"error"'}); };
</script></body></html>
"""


def _record(key: str, code: int, reason: str) -> None:
    with _lock:
        DISCONNECTS.append((key, code, reason))


def disconnects(key: str) -> list[tuple[int, str]]:
    with _lock:
        return [(c, r) for k, c, r in DISCONNECTS if k == key]


async def ws_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/ws/echo (echoes; "close <code> <reason>" makes the app close), /ws/info (the scope
    as JSON), /ws/push (PUSH_COUNT messages of PUSH_SIZE bytes at once), /ws/deny (an HTTP
    403 through websocket.http.response), /ws/raise (the app fails before accepting), /ws/hold (never answers the upgrade); any
    HTTP request gets the browser test's page (a POST to /result is recorded)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "POST" and scope["path"] == "/result":
            with _lock:
                RESULTS.append(body)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": BROWSER_PAGE})
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    key = scope["query_string"].decode().partition("key=")[2] or path
    first = await receive()
    assert first["type"] == "websocket.connect"
    if path == "/ws/deny":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"not you"})
        return
    if path == "/ws/raise":
        raise RuntimeError("the app fails before accepting")
    if path == "/ws/hold":  # never answers the upgrade: records how the client's wait ended
        _record(key, 0, "held")
        message = await receive()
        _record(key, message.get("code", 0), message["type"])
        return
    offered = scope["subprotocols"]
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": offered[0] if offered else None,
            "headers": [(b"x-app", b"accepted")],
        }
    )
    if path == "/ws/info":
        info = {
            k: scope[k]
            for k in ("path", "query_string", "scheme", "subprotocols", "client", "server")
        }
        info["query_string"] = scope["query_string"].decode()
        info["headers"] = {k.decode(): v.decode() for k, v in scope["headers"]}
        info["extensions"] = sorted(scope.get("extensions") or {})
        await send({"type": "websocket.send", "text": json.dumps(info)})
    elif path == "/ws/push":
        for i in range(PUSH_COUNT):
            await send({"type": "websocket.send", "bytes": bytes([i % 256]) * PUSH_SIZE})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(key, message["code"], message.get("reason") or "")
            return
        text = message.get("text")
        if text is not None and text.startswith("close "):
            _, code, reason = text.split(" ", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            continue
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


fastapi_app = FastAPI()


@fastapi_app.websocket("/chat/{room}")
async def chat(websocket: WebSocket, room: str) -> None:
    await websocket.accept(subprotocol="v2.chat")
    await websocket.send_json({"room": room, "q": websocket.query_params.get("q")})
    try:
        while True:
            data = await websocket.receive_text()
            await websocket.send_text(f"{room}: {data}")
    except WebSocketDisconnect as exc:
        _record(f"fastapi-{room}", exc.code, exc.reason or "")


class Counter(WebSocketEndpoint):
    """Starlette's class-based endpoint: bytes in, their length back as text."""

    encoding = "bytes"

    async def on_connect(self, websocket: WebSocket) -> None:
        if websocket.query_params.get("token") != "ok":
            await websocket.send_denial_response(
                PlainTextResponse("bad token", status_code=401, headers={"x-why": "token"})
            )
            return
        await websocket.accept()

    async def on_receive(self, websocket: WebSocket, data: bytes) -> None:
        await websocket.send_text(str(len(data)))

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        _record("starlette-counter", close_code, "")


starlette_app = Starlette(routes=[WebSocketRoute("/count", Counter)])
