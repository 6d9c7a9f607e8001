"""Embedding: a receiver started inside a running app, as users do with FastAPI under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import trio
import uvicorn
from fastapi import FastAPI

import anpx_asyncio
import anpx_trio
from anpx_host.config import ReceiverConfig

from .deploy import start_gateway, wait_until


def test_fastapi_under_uvicorn_embeds_an_asyncio_receiver():
    gateway = start_gateway("trio")
    tunnel_url = f"ws://127.0.0.1:{gateway.obj.ports.tunnel}"
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        receiver = anpx_asyncio.ReceiverClient(
            ReceiverConfig(gateway_url=tunnel_url), app, run_lifespan=False
        )
        task = asyncio.create_task(receiver.run())
        events.append("started")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        events.append("receiver stopped")

    api = FastAPI(lifespan=lifespan)

    @api.get("/items/{item_id}")
    async def item(item_id: int, q: str = ""):
        return {"item_id": item_id, "q": q}

    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        r = httpx.get(f"http://127.0.0.1:{gateway.obj.ports.http}/items/7?q=x")
        assert r.status_code == 200 and r.json() == {"item_id": 7, "q": "x"}
    finally:
        server.should_exit = True
        thread.join(10)
        gateway.stop()
    assert events == ["started", "receiver stopped"]  # cancelling the task stopped it cleanly


def test_trio_program_embeds_a_receiver_in_its_nursery():
    gateway = start_gateway("asyncio")
    tunnel_url = f"ws://127.0.0.1:{gateway.obj.ports.tunnel}"
    api = FastAPI()

    @api.get("/hello")
    async def hello():
        return {"hello": "trio"}

    async def main() -> dict:
        async with trio.open_nursery() as nursery:
            receiver = anpx_trio.ReceiverClient(ReceiverConfig(gateway_url=tunnel_url), api)
            await nursery.start(receiver.run)
            with trio.fail_after(10):
                await receiver.ready.wait()
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{gateway.obj.ports.http}/hello")
            nursery.cancel_scope.cancel()  # stopping the program stops the receiver
        return r.json()

    try:
        assert trio.run(main) == {"hello": "trio"}
    finally:
        gateway.stop()
