"""Small ASGI helpers: JSON answers, bounded bodies, strict query numbers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["BadRequest", "query", "query_int", "read_body", "send_json", "send_status"]

MAX_DIGITS = 19


class BadRequest(Exception):
    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def send_json(
    send: Any,
    status: int,
    body: Any,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def send_status(
    send: Any, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_json(send, status, {"error": reason}, headers)


async def read_body(receive: Any, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client went away")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BadRequest(f"body larger than {limit} bytes", 413)
        if not message.get("more_body", False):
            return bytes(body)


async def read_json(receive: Any, limit: int) -> dict[str, Any]:
    body = await read_body(receive, limit)
    try:
        value = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body: expected JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body: expected a JSON object")
    return value


def query(scope: dict[str, Any]) -> dict[str, str]:
    try:
        text = scope.get("query_string", b"").decode("ascii")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("bad query string") from None
    found: dict[str, str] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def parse_int(text: str, name: str, lo: int, hi: int) -> int:
    """ASCII digits only (no sign, no spaces, no underscores), within ``lo..hi``."""
    if not (0 < len(text) <= MAX_DIGITS) or not all("0" <= c <= "9" for c in text):
        raise BadRequest(f"{name}: expected a whole number")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(f"{name}: expected {lo} to {hi}")
    return value


def query_int(params: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = params.get(name)
    return default if text is None else parse_int(text, name, lo, hi)


def field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    if name not in body or body[name] is None:
        if default is ...:
            raise BadRequest(f"{name}: required")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name}: expected {'text' if kind is str else kind.__name__}")
    return value
