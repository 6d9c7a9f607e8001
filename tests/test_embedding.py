"""Embedding: a receiver started inside a running app, as users do with FastAPI under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import pytest
import trio
import uvicorn
from fastapi import FastAPI

import anpx_asyncio
import anpx_trio
from anpx_core.receiver import ReceiverSettings
from anpx_host.config import GatewayConfig, ReceiverConfig

from .apps import app
from .deploy import DRIVERS, Runner, start_gateway, start_receiver, wait_until


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


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_gateway_embeds_from_a_gateway_config(driver: str) -> None:
    # the seed's config section works as an embedder's argument, as ReceiverConfig does
    mod = anpx_trio if driver == "trio" else anpx_asyncio
    config = GatewayConfig(port=0, wss_port=0, admin_port=0, timeout=7.0, max_connections=3)
    server = mod.GatewayServer(config)
    assert (server.core.settings.timeout, server.core.settings.max_connections) == (7.0, 3)
    assert server.admin is None  # admin_port = 0: no admin listener, as on the command line
    gateway = Runner(driver, server)
    url = f"ws://127.0.0.1:{server.ports.tunnel}/"
    receiver = start_receiver(driver, ReceiverSettings(gateway_urls=[url]), app)
    try:
        wait_until(lambda: len(server.core.receivers) == 1)
        r = httpx.get(f"http://127.0.0.1:{server.ports.http}/echo", timeout=10)
        assert r.status_code == 200
    finally:
        receiver.stop()
        gateway.stop()
