"""Starlette and FastAPI WebSocket endpoints driven through the receiver's ASGI unit, the
app hand-stepped (tests/ws_pair.py), behind the gateway unit and a wsproto client."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from wsproto.events import AcceptConnection, CloseConnection, Message

from tests.ws_pair import RID, Pair

SEEN: list[Any] = []


async def starlette_echo(ws: StarletteWebSocket) -> None:
    await ws.accept(subprotocol="v2.chat" if "v2.chat" in ws.scope["subprotocols"] else None)
    SEEN.append(("query", ws.query_params.get("room"), ws.url.scheme, ws.headers.get("cookie")))
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                SEEN.append(("disconnect", message["code"], message.get("reason")))
                return
            if message.get("text") == "bye":
                await ws.close(code=4321, reason="see you")
                continue
            if message.get("text") is not None:
                await ws.send_text(message["text"].upper())
            else:
                await ws.send_bytes(message["bytes"][::-1])
    except Exception as exc:  # pragma: no cover - shown in the assertion
        SEEN.append(("error", repr(exc)))
        raise


async def starlette_refuse(ws: StarletteWebSocket) -> None:
    await ws.close(code=1008)


starlette_app = Starlette(
    routes=[WebSocketRoute("/ws", starlette_echo), WebSocketRoute("/closed", starlette_refuse)]
)

fastapi_app = FastAPI()


@fastapi_app.websocket("/items/{item_id}")
async def fastapi_items(websocket: WebSocket, item_id: int, q: str | None = None) -> None:
    await websocket.accept()
    await websocket.send_json({"item_id": item_id, "q": q})
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"echo": data})
    except WebSocketDisconnect as exc:
        SEEN.append(("disconnect", exc.code))


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


def test_starlette_echo_subprotocol_binary_and_close_both_ways() -> None:
    pair = Pair(app=starlette_app)
    pair.connect("/ws?room=7", ["v1.chat", "v2.chat"], [(b"cookie", b"k=v")])
    accept = pair.client_events[0]
    assert isinstance(accept, AcceptConnection) and accept.subprotocol == "v2.chat"
    assert SEEN == [("query", "7", "wss", "k=v")]
    pair.send(Message(data="hello"))
    pair.send(Message(data=b"\x01\x02\x03"))
    assert pair.messages() == ["HELLO", b"\x03\x02\x01"]
    pair.send(Message(data="bye"))
    close = pair.client_close()
    assert close is not None and (close.code, close.reason) == (4321, "see you")
    assert SEEN[-1][:2] == ("disconnect", 4321)
    assert pair.runner is not None and pair.runner.done and pair.runner.exc is None
    assert not pair.gs.has_stream(RID) and not pair.rs.has_stream(RID)


def test_starlette_client_close_reaches_the_endpoint() -> None:
    pair = Pair(app=starlette_app)
    pair.connect("/ws")
    pair.send(CloseConnection(code=4005, reason="leaving"))
    assert SEEN[-1] == ("disconnect", 4005, "leaving")
    close = pair.client_close()
    assert close is not None and close.code == 4005


def test_starlette_close_before_accept_is_403_and_unknown_route_too() -> None:
    for path in ("/closed", "/nowhere"):
        pair = Pair(app=starlette_app)
        pair.connect(path)
        assert pair.http_answer.startswith(b"HTTP/1.1 403 "), pair.http_answer


def test_fastapi_path_and_query_parameters_and_json() -> None:
    pair = Pair(app=fastapi_app)
    pair.connect("/items/42?q=find%20me")
    assert isinstance(pair.client_events[0], AcceptConnection), pair.http_answer
    assert pair.messages() == ['{"item_id":42,"q":"find me"}']
    pair.send(Message(data='{"a": [1, 2]}'))
    assert pair.messages()[-1] == '{"echo":{"a":[1,2]}}'
    pair.client_eof()
    assert SEEN == [("disconnect", 1006)]
    assert pair.runner is not None and pair.runner.done and pair.runner.exc is None


def test_fastapi_validation_error_denies_the_upgrade() -> None:
    pair = Pair(app=fastapi_app)
    pair.connect("/items/not-a-number")
    # FastAPI closes with 1008 before accepting: a 403 for the client
    assert pair.http_answer.startswith(b"HTTP/1.1 403 "), pair.http_answer
