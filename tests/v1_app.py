"""The app behind both sides of the live interop tests (tests/test_interop_v1.py).

Plain ASGI and anyio only, so the v1 reference's receiver (in its own environment) imports it as
``v1_app:app`` and ours runs it in-process under trio or asyncio alike.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs

import anyio

PATTERN = bytes(range(256))
_state = {"in_flight": 0, "max": 0}


def pattern(n: int) -> bytes:
    """``n`` bytes cycling through every byte value."""
    whole, rest = divmod(n, 256)
    return PATTERN * whole + PATTERN[:rest]


async def _body(receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json(obj: object) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    return json.dumps(obj).encode(), [(b"content-type", b"application/json")]


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    query = scope.get("query_string", b"").decode("latin-1")
    body = await _body(receive)
    status = 200
    if path == "/echo":
        payload, headers = _json(
            {"method": method, "path": path, "query": parse_qs(query), "length": len(body)}
        )
    elif path == "/json" and method == "POST":
        payload, headers = _json({"got": json.loads(body)})
    elif path == "/upload" and method == "POST":
        digest = hashlib.sha256(body).hexdigest()
        payload, headers = _json({"length": len(body), "sha256": digest})
    elif path == "/download":
        n = int(parse_qs(query).get("n", ["0"])[0])
        payload, headers = pattern(n), [(b"content-type", b"application/octet-stream")]
    elif path == "/cookies":
        payload = b"two cookies"
        headers = [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/")]
    elif path == "/concurrent":
        _state["in_flight"] += 1
        _state["max"] = max(_state["max"], _state["in_flight"])
        try:
            await anyio.sleep(0.02)  # the app's own work: lets concurrent requests overlap
        finally:
            _state["in_flight"] -= 1
        payload, headers = _json({"max_in_flight": _state["max"]})
    else:
        status, payload, headers = 404, b"no such path", [(b"content-type", b"text/plain")]
    await _send(send, status, payload, headers)
